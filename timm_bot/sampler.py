"""Reproducible, resumable data order and augmentation: what makes ``train.py --resume`` bit-exact mid-epoch."""
import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

__all__ = ['ResumableSampler', 'SeededTransformDataset', 'sample_seed', 'seeded_call', 'rng_state', 'set_rng_state']


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A sample's 63-bit augmentation seed: its augmentation depends on these three only, whatever the worker count."""
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2 ** 63)


class ResumableSampler(Sampler):
    """torch's ``DistributedSampler`` order (``randperm`` seeded by ``seed + epoch``, rank-sharded) from any batch."""

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
        if self.drop_last:  # training: whole global batches only
            return (self.num_samples // (self.batch_size * self.world_size)) * self.batch_size
        return len(range(self.rank, self.num_samples, self.world_size))  # evaluation: no repeats, exact metric sums

    @property
    def batches_per_epoch(self) -> int:
        return -(-self.samples_per_rank // self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[tuple[int, int] | int]:
        """Training: ``(index, sample_seed)`` items; evaluation (no ``shuffle``): plain indices, nothing to seed."""
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_samples, generator=g).tolist() if self.shuffle else range(self.num_samples)
        mine = order[:self.samples_per_rank * self.world_size] if self.drop_last else order
        mine = mine[self.rank::self.world_size][self.start_batch * self.batch_size:]
        return ((i, sample_seed(self.seed, self.epoch, i)) for i in mine) if self.shuffle else iter(mine)

    def __len__(self) -> int:
        return max(0, self.samples_per_rank - self.start_batch * self.batch_size)


class SeededTransformDataset(Dataset):
    """``transform(dataset[index])`` under torch and python RNGs seeded by ``seed`` of an ``(index, seed)`` item."""

    def __init__(self, dataset: Dataset, transform: Callable | None = None) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> Any:
        index, seed = item
        sample = self.dataset[index]
        if sample is None or self.transform is None:  # None: a skipped bad image
            return sample
        img, target = sample
        return seeded_call(self.transform, img, seed), target


def seeded_call(fn: Callable, arg: Any, seed: int) -> Any:
    """``fn(arg)`` under torch and python RNGs seeded by ``seed``; the caller's RNG states are restored afterwards."""
    torch_state, python_state = torch.get_rng_state(), random.getstate()  # mixup draws in the main process
    try:
        torch.default_generator.manual_seed(seed)  # not torch.manual_seed: it seeds every accelerator (~1 ms)
        random.seed(seed)
        return fn(arg)
    finally:
        torch.set_rng_state(torch_state)
        random.setstate(python_state)


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """This process's RNG states (mixup draws from the CPU ones; dropout and drop-path on an accelerator from its own
    generator), as tensors and plain containers for a checkpoint."""
    kind, keys, *rest = np.random.get_state()
    state = {'torch': torch.get_rng_state(), 'python': random.getstate(),
             'numpy': [kind, torch.from_numpy(keys.astype(np.int64)), *rest]}
    if device is not None and device.type in ('cuda', 'mps'):
        state[device.type] = torch.cuda.get_rng_state(device) if device.type == 'cuda' else torch.mps.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore :func:`rng_state`; an accelerator's generator only on the same kind of device it was saved from."""
    torch.set_rng_state(state['torch'])
    random.setstate(tuple(tuple(s) if isinstance(s, list) else s for s in state['python']))
    kind, keys, *rest = state['numpy']
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    if device is not None and device.type == 'cuda' and 'cuda' in state:
        torch.cuda.set_rng_state(state['cuda'], device)
    elif device is not None and device.type == 'mps' and 'mps' in state:
        torch.mps.set_rng_state(state['mps'])
