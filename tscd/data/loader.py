"""What the training loader takes besides a dataset: the seeded sample stream and collation."""
from __future__ import annotations

from collections.abc import Iterator

import torch


class StreamSampler(torch.utils.data.Sampler):
    """An endless, seeded stream of ``(index, aug_seed)`` keys, sharded over ranks.

    Position p of the global stream is element p % n of the permutation of epoch p // n
    (``torch.randperm`` seeded by ``(seed, epoch)``); rank r of w takes positions
    r, r + w, r + 2w, ... starting at ``start`` (a count of global positions). The stream is
    a pure function of (seed, position), so resuming at ``start = step · global batch``
    reproduces the data order and augmentation exactly.
    """

    def __init__(self, length: int, seed: int = 0, start: int = 0, rank: int = 0, world_size: int = 1):
        self.length, self.seed, self.start = int(length), int(seed), int(start)
        self.rank, self.world_size = rank, world_size

    def _perm(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        pos = self.start + self.rank
        epoch, perm = -1, None
        while True:
            e = pos // self.length
            if e != epoch:
                epoch, perm = e, self._perm(e)
            yield int(perm[pos % self.length]), pos
            pos += self.world_size

    def __len__(self) -> int:  # endless; DataLoader only needs this for progress estimates
        return 2**62


def collate(items: list[dict]) -> dict:
    """Stack tensors; keep names as a list."""
    out = {}
    for key in items[0]:
        values = [it[key] for it in items]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out
