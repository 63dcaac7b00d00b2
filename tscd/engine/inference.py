"""Segmentation inference as papers report it (spec §10): multi-scale + flip logits, dense CRF.

The published protocol (AFA's ``test_msc_flip``, inherited by TSCD): resize the image so its
long side is 512; for each scale s of [1.0, 0.5, 0.75] run the image and its horizontal flip,
average the two logit maps (un-flipping the second) and resize to the scale-1 logit size;
take the element-wise max over scales; upsample to the label size (bilinear); softmax; dense
CRF; argmax. :class:`EvalProtocol` holds those choices and :meth:`EvalProtocol.predict` runs
them on a batch, returning every intermediate prediction that one evaluation reports, from
the same forward passes. Images of a batch share one size (VOC-like data: batch size 1).
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize
from .eval_args import CRF_CHOICES


def resize_long_side(images: torch.Tensor, long_side: int | None) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 3, ⌊H·r⌋, ⌊W·r⌋) with r = long_side / max(H, W), bilinear.

    ``None`` or 0 keeps the images as they are.
    """
    if not long_side:
        return images
    h, w = images.shape[-2:]
    ratio = long_side / max(h, w)
    size = (int(h * ratio), int(w * ratio))
    if size == (h, w):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)


def crf_backend(choice: str, device: torch.device | str) -> str | None:
    """The ``tscd.ops.dense_crf`` backend of a ``--crf`` choice; None for ``"none"``.

    ``exact`` is the tiled exact sum: triton on CUDA, the C++ path on CPU.
    """
    if choice not in CRF_CHOICES:
        raise ValueError(f"crf must be one of {CRF_CHOICES}, got {choice!r}")
    if choice == "none":
        return None
    if choice == "exact":
        return "triton" if torch.device(device).type == "cuda" else "cpp"
    return choice


def dense_crf_probs(rgb: torch.Tensor, probs: torch.Tensor, choice: str) -> torch.Tensor:
    """Dense CRF of spec §10 on probabilities (B, K, H, W) with images (B, 3, H, W) in 0–255."""
    from ..ops.dense_crf import dense_crf

    return dense_crf(rgb, probs, backend=crf_backend(choice, probs.device))


@dataclasses.dataclass
class Forward:
    """Network outputs of one batch under a protocol (spec §10).

    cls (B, K−1) image logits, seg (B, K, h, w) segmentation logits and attn_pred (B, N, N)
    of the scale-1, un-flipped input; msf (B, K, h, w): max over scales of the flip-averaged
    logits (``seg`` itself when the protocol is single-scale without flip); grid: the (h₄, w₄)
    attention grid of ``attn_pred``.
    """

    cls: torch.Tensor
    seg: torch.Tensor
    attn_pred: torch.Tensor
    msf: torch.Tensor
    grid: tuple[int, int]


@torch.no_grad()
def multi_scale_forward(model, images: torch.Tensor, scales: Sequence[float] = (1.0, 0.5, 0.75),
                        flip: bool = True) -> Forward:
    """Run ``model`` (TSCD: ``model(x) -> (cls, seg, attn_logits, attn_pred)``) at every scale.

    images: (B, 3, H, W) normalised, already resized to the protocol's long side. The image
    and its flip go through the network together (batch 2B). Scale s resizes the input by
    ``scale_factor=s`` (bilinear); its flip-averaged logits are resized (bilinear) to the
    scale-1 logit size before the max.
    """
    if 1.0 not in scales:
        raise ValueError(f"scales must contain 1.0 (the reference size of the logits), got {list(scales)}")
    b = images.shape[0]

    def run(x):
        x = torch.cat([x, x.flip(-1)]) if flip else x
        cls, seg, _, attn_pred = model(x)
        seg = seg.float()
        averaged = (seg[:b] + seg[b:].flip(-1)) / 2 if flip else seg
        return cls[:b], seg[:b], attn_pred[:b], averaged

    cls, seg, attn_pred, msf = run(images)
    stride = model.output_stride
    grid = (-(-images.shape[-2] // stride), -(-images.shape[-1] // stride))
    for s in scales:
        if s == 1.0:
            continue
        x = F.interpolate(images, scale_factor=s, mode="bilinear", align_corners=False)
        logits = F.interpolate(run(x)[3], size=msf.shape[-2:], mode="bilinear", align_corners=False)
        msf = torch.maximum(msf, logits)
    return Forward(cls, seg, attn_pred, msf, grid)


@dataclasses.dataclass(frozen=True)
class EvalProtocol:
    """How segmentation predictions are made: scales, flip, CRF, long side of the input.

    The default is the training-time check: one forward pass at the image's own size.
    ``tscd eval`` builds it from the config's ``eval`` section (:meth:`from_config`).
    """

    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    crf: str = "none"
    resize_long: int | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self):
        if 1.0 not in self.scales or any(s <= 0 for s in self.scales):
            raise ValueError(f"scales must be positive and contain 1.0, got {list(self.scales)}")
        crf_backend(self.crf, "cpu")  # validates the choice
        if self.resize_long is not None and self.resize_long < 0:
            raise ValueError(f"resize_long must be positive (or 0/None: keep the size), got {self.resize_long}")

    @classmethod
    def from_config(cls, cfg) -> "EvalProtocol":
        e = cfg.eval
        return cls(tuple(float(s) for s in e.scales), bool(e.flip), str(e.crf), e.resize_long or None,
                   tuple(cfg.data.mean), tuple(cfg.data.std))

    @property
    def multi_scale(self) -> bool:
        return self.flip or len(self.scales) > 1

    def kinds(self) -> tuple[str, ...]:
        """Names of the segmentation predictions :meth:`predict` returns."""
        kinds = ("seg",)
        if self.multi_scale:
            kinds += ("seg_msf",)
        if self.crf != "none":
            kinds += ("seg_msf_crf" if self.multi_scale else "seg_crf",)
        return kinds

    @torch.no_grad()
    def predict(self, model, images: torch.Tensor, size: tuple[int, int]) -> tuple[Forward, dict]:
        """(Forward, {kind: labels (B, *size) int64}) for normalised images (B, 3, H, W).

        The last kind is the protocol's final prediction (with CRF when one is asked for).
        """
        fwd = multi_scale_forward(model, resize_long_side(images, self.resize_long), self.scales, self.flip)
        up = lambda x: F.interpolate(x, size=size, mode="bilinear", align_corners=False)  # noqa: E731
        out = {"seg": up(fwd.seg).argmax(1)}
        final = up(fwd.msf)
        if self.multi_scale:
            out["seg_msf"] = final.argmax(1)
        if self.crf != "none":
            rgb = (denormalize(images.float(), self.mean, self.std) * 255).round()
            if rgb.shape[-2:] != tuple(size):
                rgb = F.interpolate(rgb, size=size, mode="bilinear", align_corners=False)
            out[self.kinds()[-1]] = dense_crf_probs(rgb, final.softmax(1), self.crf).argmax(1)
        return fwd, out


# ---- torchrun: the split is sharded, the counts all-reduced -------------------------------------
def dist_info() -> tuple[int, int]:
    """(rank, world size) of an initialised process group under torchrun, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """Join the torchrun process group (WORLD_SIZE > 1) if not yet done.

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


def progress_bar(total: int, enabled: bool = True, desc: str = "eval"):
    """A tqdm bar counting images (its rate reads images/s); silent when not ``enabled``."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc=desc, disable=not enabled, dynamic_ncols=True)


def reduce_counts(mats, f1, seen: int) -> int:
    """All-reduce the evaluator's confusion matrices and F1 counts in place; the total image count."""
    extra = torch.tensor([f1.tp, f1.fp, f1.fn, seen], dtype=torch.int64)
    all_reduce_counts([m.mat for m in mats] + [extra])
    f1.tp, f1.fp, f1.fn = (int(v) for v in extra[:3])
    return int(extra[3])
