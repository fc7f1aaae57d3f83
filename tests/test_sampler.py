"""Resumable data order and per-sample seeded augmentation (what makes --resume exact)."""
import random

import torch
from torch.utils.data import DataLoader

from timm_bot.sampler import ResumableSampler, SeededTransformDataset


class _Numbers(torch.utils.data.Dataset):
    def __len__(self):
        return 50

    def __getitem__(self, i):
        return torch.tensor(float(i)), i


def _noise(x):  # a "random augmentation" using both RNGs the transforms use
    return x + torch.rand(()) + random.random()


def test_epoch_permutation_shards_and_resume_point():
    full = ResumableSampler(50, batch_size=4, seed=7, rank=0, world_size=1)
    full.set_epoch(3)
    order = list(full)
    assert len(order) == 48 == len(full) and full.batches_per_epoch == 12  # last partial batch dropped
    full.set_epoch(3, start_batch=5)
    assert list(full) == order[20:]  # mid-epoch resume continues the same permutation
    full.set_epoch(4)
    assert [i for i, _ in full] != [i for i, _ in order]
    ranks = [ResumableSampler(50, batch_size=4, seed=7, rank=r, world_size=2) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(3)
    shards = [[i for i, _ in r] for r in ranks]
    assert len(shards[0]) == len(shards[1]) == 24 and not set(shards[0]) & set(shards[1])


def test_augmentation_depends_only_on_seed_epoch_index():
    dataset = SeededTransformDataset(_Numbers(), _noise)

    def run(workers: int, start_batch: int = 0) -> dict[int, float]:
        sampler = ResumableSampler(50, batch_size=5, seed=1)
        sampler.set_epoch(2, start_batch)
        loader = DataLoader(dataset, batch_size=5, sampler=sampler, num_workers=workers)
        return {int(t): float(x) for xs, ts in loader for x, t in zip(xs, ts)}

    reference = run(0)
    assert run(2) == reference  # same augmentations whatever the number of workers
    resumed = run(0, start_batch=4)
    assert resumed == {k: v for k, v in reference.items() if k in resumed} and len(resumed) == 30


def test_main_process_rng_untouched():
    dataset = SeededTransformDataset(_Numbers(), _noise)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    dataset[(3, 123)]
    assert torch.equal(torch.rand(3), expected)


def test_eval_shards_cover_every_sample_once():
    shards = []
    for rank in range(3):
        sampler = ResumableSampler(10, batch_size=4, rank=rank, world_size=3, shuffle=False, drop_last=False)
        shard = list(sampler)
        assert all(isinstance(i, int) for i in shard)  # evaluation: plain indices, nothing to seed
        shards += shard
        assert len(sampler) == len(range(rank, 10, 3))
    assert sorted(shards) == list(range(10))
