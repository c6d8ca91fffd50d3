"""The order of training examples and their randomness as pure functions of (seed, epoch): resumable mid-epoch.

A resumed run must draw the same batches as an uninterrupted one. A DataLoader's shuffling and
its workers' seeds are drawn from the global RNG whenever an iterator is made, so they change
when a run restarts in the middle of an epoch. Here the permutation of epoch e comes from
(seed, e) and every example carries its own seed made from (seed, e, index); the dataset draws
the example's frames with it, in whatever worker process it lands. The loader then has no state
but (epoch, examples already used), which `skip_to` restores.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

ExampleKey = tuple[int, int]
"""(example index, seed of its random draws): what the sampler hands to the dataset."""


def derive_seed(*keys: int) -> int:
    """A 63-bit seed mixed from integer keys (NumPy SeedSequence: well spread, stable across platforms)."""
    state = np.random.SeedSequence([int(k) & 0xFFFFFFFFFFFFFFFF for k in keys]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ExampleSampler(Sampler[ExampleKey]):
    """Shuffled example keys for one rank; epoch e's order depends on (seed, e) only.

    With several processes (DDP) each rank takes every world_size-th example of the epoch's
    permutation, padded by wrapping around so all ranks see the same number (as
    torch's DistributedSampler does).
    """

    def __init__(self, n_examples: int, seed: int, shuffle: bool = True) -> None:
        self.n = n_examples
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self._skip = 0  # examples of the current epoch already used (resume); consumed by the next __iter__

    def __len__(self) -> int:
        _, world = _rank_and_world()
        return math.ceil(self.n / world)

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def skip_to(self, epoch: int, used: int) -> None:
        """Make the next iteration start in `epoch` after the first `used` examples of this rank."""
        self.epoch, self._skip = epoch, used

    def order(self, epoch: int) -> list[int]:
        """This rank's example indices for `epoch`."""
        rank, world = _rank_and_world()
        if self.shuffle:
            g = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = math.ceil(self.n / world) * world
        order = (order * math.ceil(total / max(len(order), 1)))[:total]
        return order[rank::world]

    def __iter__(self) -> Iterator[ExampleKey]:
        skip, self._skip = self._skip, 0
        epoch = self.epoch
        keys = [(i, derive_seed(self.seed, epoch, i)) for i in self.order(epoch)[skip:]]
        return iter(keys)
