"""The endless, seeded, rank-aware training loader (the trainer's data source)."""
from __future__ import annotations

from typing import Iterator, List

import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from densecap.utils import comm

from .dataset import collate

__all__ = ["InfiniteLoader"]


class InfiniteLoader:
    """Endless batches; epoch ``e`` is shuffled with seed ``seed + e`` on every rank."""

    def __init__(self, dataset, *, batch_size: int, num_workers: int, seed: int) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.epoch = 0

    def _loader(self) -> DataLoader:
        if comm.get_world_size() > 1:
            sampler = DistributedSampler(self.dataset, shuffle=True, seed=self.seed, drop_last=True)
            sampler.set_epoch(self.epoch)
        else:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            sampler = RandomSampler(self.dataset, generator=g)
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate,
            drop_last=True,
            persistent_workers=False,
        )

    def __iter__(self) -> Iterator[List[dict]]:
        while True:
            for batch in self._loader():
                yield batch
            self.epoch += 1
