"""wds/ sources: WebDataset shards found as timm finds them, streamed in a (seed, epoch) order that resumes exactly,
with disjoint ranks and loader workers, and every validation sample read once over the ranks."""
import io
import json
import random
import tarfile
from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader
from torchvision.transforms import ToTensor

pytest.importorskip('sklearn')
pytest.importorskip('webdataset')

from helpers_data import write_wds_shards  # noqa: E402

from timm_bot.data import BadImageError, collate_skip_bad, create_image_dataset  # noqa: E402
from timm_bot.sampler import sample_seed  # noqa: E402
from timm_bot.wds import apportion, resolve_shards, round_robin, split_chunks  # noqa: E402

BATCH = 4


@pytest.fixture(scope='module')
def shards(tmp_path_factory):
    """``train-00000{0,1}.tar``: 50 digits (25 a shard, ids 0..49); ``val-00000{0,1,2}.tar``: 30 digits."""
    root = tmp_path_factory.mktemp('wds')
    write_wds_shards(root, 'train', shards=2, limit_per_class=5)
    write_wds_shards(root, 'val', shards=3, limit_per_class=3)
    return root


def _augment(img):
    """A random augmentation drawing from both RNGs the paper's transforms use: its draws identify the seeding."""
    return torch.cat([ToTensor()(img).mean().view(1), torch.rand(1), torch.tensor([random.random()])])


def _epoch(ds, workers, epoch=1, start=0, rank=0, world_size=1, stop=None, persistent=False):
    """``[(sample ids, augmentation draws), ...]`` of the loader's batches, as train.py would read them."""
    ds.configure(BATCH, seed=3, rank=rank, world_size=world_size, training=True)
    ds.set_epoch(epoch, start)
    batches = []
    loader = DataLoader(ds, batch_size=BATCH, num_workers=workers, collate_fn=collate_skip_bad,
                        persistent_workers=persistent)
    for images, ids, _ in loader:
        batches.append((ids.tolist(), images[:, 1:].tolist()))
        if len(batches) == stop:
            break  # an interruption: the rest of the epoch is never read
    return batches


@pytest.fixture(scope='module')
def train_set(shards):
    return create_image_dataset(f'wds/{shards}', 'train', transform=_augment, target_key='id')  # label = sample id


def test_scanned_counts_classes_and_samples(shards):
    ds = create_image_dataset(f'wds/{shards}', 'training')  # a synonym finds train-*.tar
    assert ds.shard_lengths == [25, 25] and ds.num_samples == 50 and ds.classes == [str(i) for i in range(10)]
    ds.configure(BATCH)
    (img, label), = [s for s in ds if s[1] == 3][:1]
    assert img.mode == 'RGB' and img.size == (32, 32)
    val = create_image_dataset(f'wds/{shards}', 'val', target_key='name', class_map=str(_class_map(shards)))
    assert val.classes == [str(i) for i in reversed(range(10))] and len(val) == 30
    plain = [label for _, label in create_image_dataset(f'wds/{shards}', 'val').configure(BATCH)]  # .cls labels
    assert Counter(plain) == {label: 3 for label in range(10)}
    assert [label for _, label in val.configure(BATCH)] == [9 - c for c in plain]  # names looked up in the map


def _class_map(root):
    path = root / 'classes.txt'
    path.write_text(''.join(f'{i}\n' for i in reversed(range(10))))  # the json names '0'..'9', reversed
    return path


def test_resolve_shards(shards, tmp_path):
    train = [str(shards / 'train-000000.tar'), str(shards / 'train-000001.tar')]
    assert resolve_shards(str(shards), 'train') == (train, None)
    assert resolve_shards(str(shards), 'train-{000000..000001}.tar')[0] == train  # timm's split pattern
    assert resolve_shards(f'{shards}/{{split}}-{{000000..000001}}.tar', 'train')[0] == train
    assert len(resolve_shards(str(shards), 'validation')[0]) == 3
    (tmp_path / 'train').mkdir()
    (tmp_path / 'train' / 'a.tar').write_bytes((shards / 'train-000000.tar').read_bytes())
    (tmp_path / '_info.json').write_text(json.dumps({'splits': {'validation': {
        'filenames': ['v-0.tar'], 'shard_lengths': [7], 'num_samples': 7, 'name': 'validation'}}}))
    assert resolve_shards(str(tmp_path), 'val') == ([f'{tmp_path}/v-0.tar'], [7])  # timm's _info.json wins
    (tmp_path / '_info.json').unlink()
    assert resolve_shards(str(tmp_path), 'train')[0] == [str(tmp_path / 'train' / 'a.tar')]  # a split folder
    with pytest.raises(FileNotFoundError, match=r'no "test" split .*found train, val'):
        resolve_shards(str(shards), 'test')
    with pytest.raises(FileNotFoundError, match='no such folder'):
        create_image_dataset(f'wds/{tmp_path}/nowhere', 'train')
    with pytest.raises(FileNotFoundError, match='1 of 2 shards do not exist'):
        create_image_dataset(f'wds/{shards}', 'train-{000001..000002}.tar')
    with pytest.raises(ValueError, match="remote shards .*_info.json.*class_map"):
        create_image_dataset('wds/pipe:cat /data/train-{0..1}.tar', 'train')


def test_wrong_keys_list_the_members(shards):
    with pytest.raises(ValueError, match=r'no webp member \(input_key\); its members: png, cls, json'):
        create_image_dataset(f'wds/{shards}', 'train', input_key='webp')
    with pytest.raises(ValueError, match=r"no field 'label' \(target_key\) .*its fields: id, name"):
        create_image_dataset(f'wds/{shards}', 'train', target_key='label')
    with pytest.raises(ValueError, match="the label '0' is a class name: give class_map"):
        create_image_dataset(f'wds/{shards}', 'train', target_key='name')


def test_chunks_quotas_and_loader_order():
    chunks = [(s, 0, 1) for s in range(2)]
    parts = [split_chunks(split_chunks(chunks, 2, r), 2, w) for r in range(2) for w in range(2)]
    assert parts == [[(0, 0, 2)], [(0, 1, 2)], [(1, 0, 2)], [(1, 1, 2)]]  # 2 shards, 4 readers: halves
    assert apportion(12, [25, 25]) == [6, 6] and apportion(5, [3, 1, 0]) == [4, 1, 0]
    assert apportion(7, [5, 5, 5]) == [3, 2, 2]  # ties: the lower index first
    assert round_robin([3, 1, 2]) == [0, 1, 2, 0, 2, 0]


def test_interrupted_epoch_resumes_exactly(train_set):
    full = _epoch(train_set, workers=2)
    ids = [i for batch, _ in full for i in batch]
    assert len(full) == 12 and len(set(ids)) == 48 and set(ids) <= set(range(50))  # 50 // 4 batches, no repeat
    assert all(len({i % 2 for i in batch}) == 1 for batch, _ in full)  # a batch comes from one worker's shard
    for j, (_, augs) in enumerate(full):  # sample i of batch j: seeded by (seed, epoch, its position j * 4 + i)
        seeds = [sample_seed(3, 1, j * BATCH + i) for i in range(BATCH)]
        expected = [[torch.rand(1, generator=torch.Generator().manual_seed(s)).item(), random.Random(s).random()]
                    for s in seeds]
        torch.testing.assert_close(torch.tensor(augs), torch.tensor(expected, dtype=torch.float32))
    assert _epoch(train_set, workers=2, stop=5) == full[:5]
    for start in (5, 8):  # worker 1 serves batch 5 first: a resumed loader's worker 0 takes its place
        assert _epoch(train_set, workers=2, start=start) == full[start:]
    assert len(train_set) == 4 * BATCH  # len(DataLoader): the batches left after start_batch 8
    other = _epoch(train_set, workers=2, epoch=2)
    assert [b for b, _ in other] != [b for b, _ in full]  # a new epoch, a new shard order and shuffle
    same_ids = {i: aug for batch, augs in full for i, aug in zip(batch, augs)}
    assert all(same_ids[i] != aug for batch, augs in other for i, aug in zip(batch, augs) if i in same_ids)


def test_persistent_workers_follow_set_epoch(train_set):
    train_set.configure(BATCH, seed=3, training=True)
    loader = DataLoader(train_set, batch_size=BATCH, num_workers=2, collate_fn=collate_skip_bad,
                        persistent_workers=True)
    seen = []
    for epoch, start in ((1, 0), (2, 3)):
        train_set.set_epoch(epoch, start)
        seen.append([(ids.tolist(), images[:, 1:].tolist()) for images, ids, _ in loader])
    assert seen == [_epoch(train_set, workers=2, epoch=1), _epoch(train_set, workers=2, epoch=2, start=3)]


def test_ranks_are_disjoint_and_equal_length(train_set):
    ranks = [_epoch(train_set, workers=2, rank=r, world_size=2) for r in range(2)]
    ids = [[i for batch, _ in batches for i in batch] for batches in ranks]
    assert len(ranks[0]) == len(ranks[1]) == 6  # 50 // (4 x 2): DDP ranks step together
    assert len(set(ids[0])) == len(set(ids[1])) == 24 and not set(ids[0]) & set(ids[1])
    resumed = _epoch(train_set, workers=2, rank=1, world_size=2, start=3)
    assert resumed == ranks[1][3:]


@pytest.mark.parametrize('world_size,workers', [(1, 2), (2, 2), (2, 0)])
def test_evaluation_reads_every_sample_once(shards, world_size, workers):
    val = create_image_dataset(f'wds/{shards}', 'val', transform=ToTensor(), target_key='id')  # 30 in 3 shards
    seen, counts = [], []
    for rank in range(world_size):
        val.configure(BATCH, rank=rank, world_size=world_size)
        loader = DataLoader(val, batch_size=BATCH, num_workers=workers, collate_fn=collate_skip_bad)
        ids = [i for _, batch, _ in loader for i in batch.tolist()]
        assert len(ids) == len(val)
        seen += ids
        counts.append(len(ids))
    assert sorted(seen) == list(range(30)) and sum(counts) == 30


def test_bad_image_named_or_skipped(tmp_path, shards):
    with tarfile.open(shards / 'train-000000.tar') as src, tarfile.open(tmp_path / 'train-0.tar', 'w') as dst:
        for info in src:
            data = src.extractfile(info).read()
            if info.name == '000004.png':
                data = data[:len(data) // 2]  # truncated
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    ds = create_image_dataset(f'wds/{tmp_path}', 'train', transform=ToTensor(), target_key='id').configure(BATCH)
    with pytest.raises(BadImageError) as e:
        for _ in DataLoader(ds, batch_size=BATCH, num_workers=1, collate_fn=collate_skip_bad):
            pass
    assert str(e.value).startswith("Bad image file '000004.png' (in ") and '\n' not in str(e.value)
    ds.skip_bad_images = True
    batches = list(DataLoader(ds, batch_size=BATCH, num_workers=1, collate_fn=collate_skip_bad))
    assert sum(n for _, _, n in batches) == 1 and sum(len(ids) for _, ids, _ in batches) == 24
