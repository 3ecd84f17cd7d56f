"""A seeded, shardable sampler that can start part-way through an epoch (for exact resume)."""

from __future__ import annotations

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    """Seeded permutation per epoch, sharded over ``world`` ranks, optionally skipping a prefix.

    ``len()`` is always the full epoch (Lightning counts batches against it); after
    ``skip(n_samples)`` the next iteration starts that many samples in, so a resumed run sees
    exactly the samples an uninterrupted run would have seen next. ``per_epoch`` caps the samples a
    rank sees per epoch: the tail that would only fill a partial accumulation window is dropped, as the
    reference Trainer does (it takes floor(micro-batches / accumulation) optimizer steps per epoch).
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world: int = 1, per_epoch: int | None = None):
        self.size, self.seed, self.rank, self.world = size, seed, rank, world
        self.per_epoch = per_epoch
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at every epoch start
        self.epoch = epoch

    def skip(self, n_samples: int) -> None:
        self._skip = n_samples

    def __len__(self) -> int:
        full = -(-self.size // self.world)
        return full if self.per_epoch is None else min(full, self.per_epoch)

    def __iter__(self):
        order = torch.randperm(
            self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch)
        ).tolist()
        full = -(-self.size // self.world)
        order += order[: full * self.world - self.size]  # pad so every rank gets the same count
        mine = order[self.rank :: self.world][: len(self)]
        start, self._skip = self._skip, 0
        return iter(mine[start:])
