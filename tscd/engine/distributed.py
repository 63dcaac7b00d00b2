"""torchrun support shared by every job: joining the process group, sharding a split, summing counts."""
from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.distributed as dist


def dist_info() -> tuple[int, int]:
    """(rank, world size) of an initialised process group under torchrun, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """Join the torchrun process group (WORLD_SIZE > 1) if not yet done: nccl for CUDA, else gloo.

    Returns (rank, world, device): on CUDA each rank takes GPU ``LOCAL_RANK``.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, world = dist_info()
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    return rank, world, device


def shard(dataset, rank: int, world: int, max_images: int | None = None):
    """Images rank, rank + world, ... of the first ``max_images`` of ``dataset``."""
    n = len(dataset) if max_images is None else min(len(dataset), int(max_images))
    if world == 1 and n == len(dataset):
        return dataset
    return torch.utils.data.Subset(dataset, range(rank, n, world))


def all_reduce_counts(counts: Sequence[torch.Tensor]) -> None:
    """Sum integer count tensors (confusion matrices, F1 counts) over ranks, in place."""
    if dist_info()[1] == 1:
        return
    backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    for c in counts:
        buf = c.to(backend_device)
        dist.all_reduce(buf)
        c.copy_(buf.to(c.device))
