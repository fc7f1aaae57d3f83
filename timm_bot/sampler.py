"""Reproducible, resumable data order and augmentation, so a run killed mid-epoch resumes bit-exactly.

Not from the paper: this is what makes ``train.py --resume`` exact. Two pieces:

* :class:`ResumableSampler` -- like torch's ``DistributedSampler`` (a permutation seeded by ``(seed, epoch)``,
  sharded by rank), but it can start at any batch of an epoch and yields ``(index, sample_seed)`` pairs.
* :class:`SeededTransformDataset` -- applies the training transform to sample ``index`` under RNGs seeded by its
  ``sample_seed``. Each image's augmentation is a function of ``(seed, epoch, index)`` only: the same with 0 or 8
  loader workers, and the same whether or not the run was interrupted, so no worker RNG state needs saving.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

__all__ = ['ResumableSampler', 'SeededTransformDataset', 'sample_seed']


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample's augmentation in one epoch."""
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2 ** 63)


class ResumableSampler(Sampler):
    """Shuffled, rank-sharded sample order that can start mid-epoch.

    Args:
        num_samples: dataset length.
        batch_size: per-rank batch size (with ``drop_last`` only whole global batches are used).
        seed: run seed; epoch ``e`` uses the permutation of ``torch.Generator().manual_seed(seed + e)``.
        rank, world_size: shard ``rank`` of ``world_size`` (every rank sees as many batches).
        shuffle: False for validation order. Then plain indices are yielded: evaluation transforms draw no random
            numbers, so there is nothing to seed.
        drop_last: drop the last incomplete global batch (training). Without it (evaluation) every sample is seen
            exactly once: unlike ``DistributedSampler`` no shard is padded with repeats, so metrics summed over
            ranks are exact.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, drop_last: bool = True) -> None:
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world_size, self.shuffle, self.drop_last = rank, world_size, shuffle, drop_last
        self.epoch, self.start_batch = 0, 0
        if self.batches_per_epoch == 0:
            raise ValueError(f'{num_samples} samples make no batch of {batch_size} x {world_size} ranks: '
                             'lower batch_size or use more data.')

    @property
    def samples_per_rank(self) -> int:
        if self.drop_last:
            return (self.num_samples // (self.batch_size * self.world_size)) * self.batch_size
        return len(range(self.rank, self.num_samples, self.world_size))

    @property
    def batches_per_epoch(self) -> int:
        return -(-self.samples_per_rank // self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's permutation and the batch to start from (0, or where a checkpoint stopped)."""
        self.epoch, self.start_batch = epoch, start_batch

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        if self.drop_last:
            order = order[:self.samples_per_rank * self.world_size]
        return order[self.rank::self.world_size]  # without drop_last, shards differ by <= 1 and nothing repeats

    def __iter__(self) -> Iterator[tuple[int, int] | int]:
        mine = self._indices()[self.start_batch * self.batch_size:]
        if not self.shuffle:
            yield from mine
            return
        for index in mine:
            yield index, sample_seed(self.seed, self.epoch, index)

    def __len__(self) -> int:
        return max(0, self.samples_per_rank - self.start_batch * self.batch_size)


class SeededTransformDataset(Dataset):
    """Applies ``transform`` to ``dataset[index]`` with torch and python RNGs seeded by the sample's seed.

    The caller's RNG states are restored afterwards, so with ``num_workers=0`` the main process's random stream
    (mixup's lambda and pairing) is unaffected. A ``None`` sample (a skipped bad image) stays ``None``.
    """

    def __init__(self, dataset: Dataset, transform: Callable | None = None) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int] | int) -> Any:
        index, seed = item if isinstance(item, tuple) else (item, None)
        sample = self.dataset[index]
        if sample is None or self.transform is None:
            return sample
        img, target = sample
        if seed is None:
            return self.transform(img), target
        torch_state, python_state = torch.get_rng_state(), random.getstate()
        try:
            # Not torch.manual_seed: it also queues lazy seeding of every accelerator backend, ~1 ms per call
            # (benchmarks/README.md, pipeline profile); the transforms only draw from the CPU generator.
            torch.default_generator.manual_seed(seed)
            random.seed(seed)
            return self.transform(img), target
        finally:
            torch.set_rng_state(torch_state)
            random.setstate(python_state)
