"""hfds/ sources: a Hugging Face image-classification dataset (save_to_disk folder or Hub-style parquet) read as a
map-style dataset with its ClassLabel names, settable keys, one-line errors, and the folders' exact resume."""
import sys

import pytest
import torch
from torch.utils.data import DataLoader
from torchvision.transforms import ToTensor

pytest.importorskip('sklearn')
datasets = pytest.importorskip('datasets')

from helpers_data import digits_samples, write_hf_dataset  # noqa: E402

from timm_bot.data import DIGITS, BadImageError, collate_skip_bad, create_image_dataset  # noqa: E402
from timm_bot.sampler import ResumableSampler, SeededTransformDataset  # noqa: E402


@pytest.fixture(scope='module')
def hf_root(tmp_path_factory):
    """``saved/`` and ``parquet/``: 30 train and 30 validation digits; the datasets cache in a temporary folder."""
    root = tmp_path_factory.mktemp('hfds')
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, 'HF_DATASETS_CACHE', root / 'cache')  # load_dataset converts parquet there
        yield write_hf_dataset(root)


@pytest.mark.parametrize('layout', ['saved', 'parquet'])
def test_reads_splits_classes_and_pixels(hf_root, layout):
    folder = dict(zip(('saved', 'parquet'), hf_root))[layout]
    train, val = (create_image_dataset(f'hfds/{folder}', split) for split in ('train', 'val'))  # val: validation
    assert len(train) == len(val) == 30 and train.classes == val.classes == [f'digit_{i}' for i in range(10)]
    digits = create_image_dataset(DIGITS, 'val', transform=ToTensor())
    counts, rows = [0] * 10, []  # the rows the helper wrote: the first 3 digits of each class
    for i, t in enumerate(digits.targets):
        if counts[t] < 3:
            rows.append(i)
            counts[t] += 1
    assert val.targets == [digits.targets[i] for i in rows] and train.num_classes == 10
    for k in (0, 17, 29):
        img, target = val[k]
        assert img.mode == 'RGB' and target == digits.targets[rows[k]]
        torch.testing.assert_close(ToTensor()(img), digits[rows[k]][0], rtol=0, atol=0)  # PNG: the same pixels


def test_same_samples_either_layout_and_exact_resume(hf_root):
    saved, parquet = (create_image_dataset(f'hfds/{f}', 'train', transform=ToTensor()) for f in hf_root)
    assert all(torch.equal(saved[i][0], parquet[i][0]) for i in range(0, 30, 7))

    def epoch(start_batch: int, rank: int = 0) -> list[tuple[list, torch.Tensor]]:
        sampler = ResumableSampler(30, batch_size=4, seed=5, rank=rank, world_size=2)
        sampler.set_epoch(1, start_batch)
        plain = create_image_dataset(f'hfds/{hf_root[0]}', 'train')  # train.py's: SeededTransformDataset transforms
        loader = DataLoader(SeededTransformDataset(plain, _jitter), batch_size=4, sampler=sampler, num_workers=2,
                            collate_fn=collate_skip_bad)
        return [(targets.tolist(), images) for images, targets, _ in loader]

    full = epoch(0)
    resumed = epoch(2)
    assert len(full) == 3 and len(resumed) == 1  # 30 // (4 x 2) batches a rank
    assert resumed[0][0] == full[2][0] and torch.equal(resumed[0][1], full[2][1])  # same images, same augmentation


def test_ddp_ranks_read_disjoint_samples_and_every_val_image_once(hf_root):
    val = create_image_dataset(f'hfds/{hf_root[1]}', 'validation', transform=ToTensor())
    train = create_image_dataset(f'hfds/{hf_root[1]}', 'train')
    shards = []
    for rank in range(2):  # what train.py gives each rank: ResumableSampler over the map-style dataset
        sampler = ResumableSampler(len(train), batch_size=4, seed=5, rank=rank, world_size=2)
        shards.append({i for i, _ in sampler})
        eval_sampler = ResumableSampler(len(val), batch_size=4, rank=rank, world_size=2, shuffle=False, drop_last=False)
        images = torch.cat([x for x, _, _ in DataLoader(val, batch_size=4, sampler=eval_sampler, num_workers=2,
                                                           collate_fn=collate_skip_bad)])
        assert torch.equal(images, torch.stack([val[i][0] for i in range(rank, 30, 2)]))  # 15 each, all 30 once
    assert len(shards[0]) == len(shards[1]) == 12 and not shards[0] & shards[1]


def _jitter(img):
    return ToTensor()(img) + torch.rand(())


def test_wrong_keys_and_splits_are_one_line(hf_root):
    saved = hf_root[0]
    with pytest.raises(ValueError, match=r"no column 'labels' \(target_key\); its columns: image \(Image\), label "
                                         r'\(ClassLabel\)$'):
        create_image_dataset(f'hfds/{saved}', 'train', target_key='labels')
    with pytest.raises(ValueError, match="input_key 'label' is not an Image column"):
        create_image_dataset(f'hfds/{saved}', 'train', input_key='label')
    with pytest.raises(ValueError, match=r'no "test" split .*found train, validation'):
        create_image_dataset(f'hfds/{hf_root[1]}', 'test')
    with pytest.raises(FileNotFoundError, match='no such folder'):
        create_image_dataset(f'hfds/{saved}/nowhere', 'train')


def test_other_columns_names_and_class_map(tmp_path):
    _, samples = digits_samples(DIGITS, 'train', limit_per_class=1)
    images = [{'bytes': b, 'path': None} for b, _ in samples]
    names = [f'n{t}' for _, t in samples]
    features = datasets.Features({'img': datasets.Image(), 'fine_label': datasets.ClassLabel(names=names),
                                  'name': datasets.Value('string'), 'number': datasets.Value('int64')})
    datasets.Dataset.from_dict({'img': images, 'fine_label': list(range(10)), 'name': names[::-1],
                                'number': [t for _, t in samples]}, features=features).save_to_disk(tmp_path / 'd')
    ds = create_image_dataset(f'hfds/{tmp_path}/d', 'train')  # the only Image and ClassLabel columns
    assert ds.classes == names and ds.targets == list(range(10))
    numbers = create_image_dataset(f'hfds/{tmp_path}/d', 'train', target_key='number')
    assert numbers.classes == [str(i) for i in range(10)] and numbers.targets == [t for _, t in samples]
    with pytest.raises(ValueError, match=r"the label 'n\d' is a class name: give class_map"):
        create_image_dataset(f'hfds/{tmp_path}/d', 'train', target_key='name')
    (tmp_path / 'classes.txt').write_text(''.join(f'n{i}\n' for i in reversed(range(10))))
    mapped = create_image_dataset(f'hfds/{tmp_path}/d', 'train', target_key='name',
                                  class_map=str(tmp_path / 'classes.txt'))
    assert mapped.classes == [f'n{i}' for i in reversed(range(10))]
    assert mapped.targets == [9 - int(n[1:]) for n in names[::-1]]  # each row's name, looked up in the map
    datasets.Dataset.from_dict({'img': images, 'fine_label': [-1] * 10}, features=datasets.Features(
        {'img': datasets.Image(), 'fine_label': datasets.ClassLabel(names=names)})).save_to_disk(tmp_path / 'test')
    with pytest.raises(ValueError, match=r"\('fine_label'\): label -1 is not a class \(0..9\); unlabelled rows"):
        create_image_dataset(f'hfds/{tmp_path}/test', 'test')  # a Hub test split: no labels to train on


def test_bad_image_named_or_skipped(tmp_path):
    features = datasets.Features({'image': datasets.Image(), 'label': datasets.ClassLabel(names=['a', 'b'])})
    good = digits_samples(DIGITS, 'val', limit_per_class=1)[1][0][0]
    rows = {'image': [{'bytes': good, 'path': None}, {'bytes': good[:40], 'path': 'cat.png'}], 'label': [0, 1]}
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(tmp_path / 'bad')
    ds = create_image_dataset(f'hfds/{tmp_path}/bad', 'train')
    assert ds[0][0].size == (32, 32)
    with pytest.raises(BadImageError, match=r"'cat.png' \(sample 1 of hfds/.*skip_bad_images"):
        ds[1]
    assert create_image_dataset(f'hfds/{tmp_path}/bad', 'train', skip_bad_images=True)[1] is None


def test_hub_id_fails_in_one_line_offline(monkeypatch, caplog):
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub.constants, 'ENDPOINT', 'http://127.0.0.1:9')  # nothing listens: refused
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', False)
    with pytest.raises(ValueError) as e:
        create_image_dataset('hfds/someone/some-dataset', 'train')
    assert '\n' not in str(e.value) and 'HF_HUB_OFFLINE=1' in str(e.value) and 'hf download' in str(e.value)
    assert 'Retrying' not in caplog.text  # one request, not huggingface_hub's back-off
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(datasets.config, 'HF_HUB_OFFLINE', True)
    with pytest.raises(ValueError, match=r'hfds/someone/some-dataset could not be read .*hf download') as e:
        create_image_dataset('hfds/someone/some-dataset', 'train')
    assert '\n' not in str(e.value)


@pytest.mark.parametrize('source,extra', [('hfds/x', 'datasets'), ('wds/x', 'webdataset')])
def test_missing_library_names_the_extra(monkeypatch, source, extra):
    monkeypatch.setitem(sys.modules, extra, None)  # what `import` sees when the package is not installed
    with pytest.raises(ImportError, match=rf"pip install 'timm-bot\[{extra}\]'"):
        create_image_dataset(source, 'train')
