"""timm_bot.data: the embedded digits, folder/tar datasets through timm's readers, bad-image handling."""
import io
import pickle
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from torch.utils.data import DataLoader
from torchvision.transforms import ToTensor

pytest.importorskip('sklearn')

from timm_bot import data as D  # noqa: E402
from timm_bot.data import (  # noqa: E402
    DIGITS,
    BadImageError,
    collate_skip_bad,
    create_image_dataset,
    write_image_folder,
)

CIFAR10_CLASSES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']


def _labels_from_filenames(ds) -> list[int]:
    """Label implied by each sample's class folder (``<class>/<file>``, optionally ``./`` prefixed)."""
    return [ds.classes.index(Path(ds.filename(i)).parent.name) for i in range(len(ds))]


def _targets(ds) -> list[int]:
    return [ds._target(i) for i in range(len(ds))]


def _index_of(ds, name: str) -> int:
    return ds.filenames().index(name)


@pytest.fixture()
def bad_folder(tmp_path: Path) -> Path:
    """Class-folder tree (3 digits per class) with a truncated JPEG and a text file named .jpg in class '3'."""
    split = write_image_folder(tmp_path, split='train', limit_per_class=3)
    good = (split / '3' / '0000.jpg').read_bytes()
    (split / '3' / 'truncated.jpg').write_bytes(good[: len(good) // 2])
    (split / '3' / 'notes.jpg').write_text('this is not an image\n')
    return split


def _add_bytes(tf: tarfile.TarFile, name: str, payload: bytes, directory: bool = False) -> None:
    ti = tarfile.TarInfo(name)
    if directory:
        ti.type = tarfile.DIRTYPE
        tf.addfile(ti)
    else:
        ti.size = len(payload)
        tf.addfile(ti, io.BytesIO(payload))


# ---------------------------------------------------------------------------------------------------------- digits


def test_digits_splits():
    train = create_image_dataset(DIGITS, 'train')
    val = create_image_dataset(DIGITS, 'val')
    assert (len(train), len(val)) == (1438, 359)
    assert train.classes == val.classes == [str(i) for i in range(10)]
    assert train.num_classes == val.num_classes == 10
    # disjoint, together the whole of load_digits
    assert not set(train.indices) & set(val.indices)
    assert sorted(np.concatenate([train.indices, val.indices])) == list(range(1797))
    # stratified: every class ~20% in val
    from sklearn.datasets import load_digits
    y = load_digits().target
    assert (train.targets == y[train.indices]).all() and (val.targets == y[val.indices]).all()
    frac = np.bincount(val.targets, minlength=10) / np.bincount(y, minlength=10)
    assert np.all(np.abs(frac - 0.2) < 0.01), frac
    # images: 32x32 RGB PIL, white strokes (0..255) on black
    img, target = train[0]
    assert isinstance(img, Image.Image) and img.mode == 'RGB' and img.size == (32, 32)
    assert target == int(y[train.indices[0]])
    pixels = np.asarray(img)
    assert pixels.min() == 0 and pixels.max() > 200
    assert train.filename(0) == f'{target}/{train.indices[0]:04d}.png'
    # deterministic: recomputing from scratch gives the same split and pixels
    before = (train.indices.copy(), train.images.copy())
    D._load_digits.cache_clear()
    again = create_image_dataset(DIGITS, 'training')
    assert (again.indices == before[0]).all() and (again.images == before[1]).all()
    assert (create_image_dataset(DIGITS, 'validation').indices == val.indices).all()


def test_digits_transform_and_bad_split():
    ds = create_image_dataset(DIGITS, 'val', transform=ToTensor())
    x, y = ds[3]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
    with pytest.raises(ValueError, match='train.*val'):
        create_image_dataset(DIGITS, 'test')


def test_digits_without_sklearn(monkeypatch):
    D._load_digits.cache_clear()
    monkeypatch.setitem(sys.modules, 'sklearn.datasets', None)
    with pytest.raises(ImportError, match=r'pip install timm-bot\[demo\]'):
        create_image_dataset(DIGITS, 'train')
    monkeypatch.undo()
    D._load_digits.cache_clear()


# ---------------------------------------------------------------------------------------------- folders and tars


@pytest.mark.parametrize('fixture', ['digits_folder', 'digits_tar'])
def test_written_dataset_reads_back(fixture, request):
    root = request.getfixturevalue(fixture)
    source = create_image_dataset(DIGITS, 'train')
    for split in ('train', 'val'):
        ds = create_image_dataset(root, split)
        assert ds.classes == [str(i) for i in range(10)] and ds.num_classes == 10
        assert len(ds) == 300
        assert np.bincount(_targets(ds)).tolist() == [30] * 10
        assert _labels_from_filenames(ds) == _targets(ds)
    # the pixels are those of the first 30 digits of each class (JPEG q95: close, not exact)
    ds = create_image_dataset(root, 'train')
    i = _index_of(ds, '7/0002.jpg')
    j = [k for k in range(len(source)) if source.targets[k] == 7][2]
    img, target = ds[i]
    assert target == 7 and img.mode == 'RGB' and img.size == (32, 32)
    diff = np.abs(np.asarray(img, dtype=np.int16) - np.asarray(source[j][0], dtype=np.int16))
    assert diff.mean() < 4


def test_tar_layout_and_filenames(digits_folder, digits_tar):
    with tarfile.open(digits_tar / 'train.tar') as tf:
        names = tf.getnames()
    assert names[:3] == ['0', '0/0000.jpg', '0/0001.jpg']
    assert len(names) == 10 + 300
    folder = create_image_dataset(digits_folder, 'train')
    tar = create_image_dataset(digits_tar, 'train')
    assert folder.filenames() == tar.filenames()
    assert _targets(folder) == _targets(tar)


def test_write_png_exact_and_tar_reproducible(tmp_path):
    a = write_image_folder(tmp_path / 'a', split='val', limit_per_class=2, as_tar=True, fmt='PNG')
    b = write_image_folder(tmp_path / 'b', split='val', limit_per_class=2, as_tar=True, fmt='PNG')
    assert a.name == 'val.tar' and a.read_bytes() == b.read_bytes()
    ds = create_image_dataset(a, 'ignored')  # a .tar source is read directly
    source = create_image_dataset(DIGITS, 'val')
    first = [k for k in range(len(source)) if source.targets[k] == 0][0]
    assert ds.filename(0) == '0/0000.png'
    assert (np.asarray(ds[0][0]) == np.asarray(source[first][0])).all()
    with pytest.raises(FileExistsError, match='already exists'):
        write_image_folder(tmp_path / 'a', split='val', as_tar=True)
    with pytest.raises(ValueError, match='JPEG.*PNG'):
        write_image_folder(tmp_path / 'c', fmt='GIF')


def test_split_resolution(digits_folder, digits_tar, tmp_path):
    # root/{split}/ and root/{split}.tar; timm's synonyms; the split folder or tar passed directly
    assert len(create_image_dataset(digits_folder, 'validation')) == 300
    assert len(create_image_dataset(str(digits_tar), 'val')) == 300
    assert len(create_image_dataset(digits_folder / 'train', 'val')) == 300  # class folders: split unused
    assert len(create_image_dataset(digits_tar / 'val.tar', 'train')) == 300
    # a root with splits, but not the one asked for
    only_train = tmp_path / 'only_train'
    shutil.copytree(digits_folder / 'train', only_train / 'train')
    with pytest.raises(FileNotFoundError, match=r'No "val" split .*found only train/'):
        create_image_dataset(only_train, 'val')
    # missing path, file that is not a tar
    with pytest.raises(FileNotFoundError, match='nowhere.*does not exist'):
        create_image_dataset(tmp_path / 'nowhere', 'train')
    (tmp_path / 'x.zip').write_bytes(b'PK')
    with pytest.raises(ValueError, match='not a .tar'):
        create_image_dataset(tmp_path / 'x.zip', 'train')


def test_layout_errors(tmp_path, digits_folder):
    # empty class folder: timm would silently drop it
    root = tmp_path / 'empty_class'
    shutil.copytree(digits_folder / 'val', root)
    for f in (root / '4').iterdir():
        f.unlink()
    (root / '4' / 'README.txt').write_text('no images here')
    with pytest.raises(ValueError, match="Empty class folder.*'4'"):
        create_image_dataset(root, 'val')
    # ... also in a tar with directory members
    with tarfile.open(tmp_path / 'empty.tar', 'w') as tf:
        _add_bytes(tf, 'cat', b'', directory=True)
        _add_bytes(tf, 'cat/0.jpg', (digits_folder / 'val' / '0' / '0000.jpg').read_bytes())
        _add_bytes(tf, 'dog', b'', directory=True)
    with pytest.raises(ValueError, match="Empty class folder.*'dog'"):
        create_image_dataset(tmp_path / 'empty.tar', 'train')
    # images outside any class folder
    loose = tmp_path / 'loose'
    shutil.copytree(digits_folder / 'val', loose)
    shutil.copy(loose / '0' / '0000.jpg', loose / 'stray.jpg')
    with pytest.raises(ValueError, match="not inside a class folder.*'stray.jpg'"):
        create_image_dataset(loose, 'val')
    # no images at all
    for name in ('nothing/a', 'nothing/b'):
        (tmp_path / name).mkdir(parents=True)
    with pytest.raises(ValueError, match='No images found'):
        create_image_dataset(tmp_path / 'nothing', 'train')
    with tarfile.open(tmp_path / 'nothing.tar', 'w') as tf:
        _add_bytes(tf, 'a/readme.txt', b'hi')
    with pytest.raises(ValueError, match='No images found'):
        create_image_dataset(tmp_path / 'nothing.tar', 'train')


# -------------------------------------------------------------------------------------------------------- bad images


def test_bad_images_raise(bad_folder):
    ds = create_image_dataset(bad_folder.parent, 'train')
    assert ds.num_classes == 10 and len(ds) == 32
    truncated, text = _index_of(ds, '3/truncated.jpg'), _index_of(ds, '3/notes.jpg')
    with pytest.raises(BadImageError, match='truncated') as e:
        ds[truncated]
    assert e.value.path == '3/truncated.jpg' and e.value.index == truncated
    assert 'skip_bad_images: true' in str(e.value)
    with pytest.raises(BadImageError, match='not an image') as e:
        ds[text]
    assert e.value.path == '3/notes.jpg'
    # the neighbours are still fine: nothing is substituted
    good = _index_of(ds, '3/0000.jpg')
    assert ds[good][1] == 3
    # survives pickling (how worker-process errors travel) with its path
    again = pickle.loads(pickle.dumps(e.value))
    assert isinstance(again, BadImageError) and again.path == '3/notes.jpg'


def test_bad_image_raises_through_workers(bad_folder):
    ds = create_image_dataset(bad_folder, 'train', transform=ToTensor())
    batches = iter(DataLoader(ds, batch_size=8, num_workers=2))
    with pytest.raises(BadImageError) as e:
        for _ in batches:
            pass
    assert e.value.path in ('3/truncated.jpg', '3/notes.jpg')
    # finish the epoch so the workers exit now (an abandoned iterator waits ~10 s for them when collected)
    for _ in batches:
        pass


def test_bad_images_in_tar(tmp_path, digits_folder):
    good = (digits_folder / 'val' / '1' / '0000.jpg').read_bytes()
    with tarfile.open(tmp_path / 'bad.tar', 'w') as tf:
        _add_bytes(tf, './a/0.jpg', good)
        _add_bytes(tf, './a/1.jpg', good[: len(good) // 2])
        _add_bytes(tf, './b/0.jpg', b'not a jpeg')
    ds = create_image_dataset(tmp_path / 'bad.tar', 'train')
    assert ds.classes == ['a', 'b'] and ds.filename(1) == './a/1.jpg'
    assert ds[0][1] == 0
    with pytest.raises(BadImageError, match=r"'\./a/1\.jpg'.*truncated"):
        ds[1]
    with pytest.raises(BadImageError, match=r"'\./b/0\.jpg'.*not an image"):
        ds[2]


def test_skip_bad_images_with_workers(bad_folder):
    ds = create_image_dataset(bad_folder, 'train', transform=ToTensor(), skip_bad_images=True)
    assert ds[_index_of(ds, '3/truncated.jpg')] is None
    assert ds[_index_of(ds, '3/notes.jpg')] is None
    loader = DataLoader(ds, batch_size=5, num_workers=2, collate_fn=collate_skip_bad)
    seen, skipped = 0, 0
    for images, targets, num_skipped in loader:
        assert images.shape[1:] == (3, 32, 32) and images.shape[0] == targets.shape[0]
        seen += images.shape[0]
        skipped += num_skipped
    assert (seen, skipped) == (30, 2)


def test_collate_skip_bad():
    sample = (torch.zeros(3, 2, 2), 1)
    images, targets, num_skipped = collate_skip_bad([sample, None, sample])
    assert images.shape == (2, 3, 2, 2) and targets.tolist() == [1, 1] and num_skipped == 1
    assert collate_skip_bad([None, None]) == (None, None, 2)


def test_truncated_flag_must_be_off(bad_folder, monkeypatch):
    ds = create_image_dataset(bad_folder, 'train')
    monkeypatch.setattr(ImageFile, 'LOAD_TRUNCATED_IMAGES', True)
    with pytest.raises(RuntimeError, match='LOAD_TRUNCATED_IMAGES'):
        ds[0]


def test_tar_workers_after_main_process_read(digits_tar):
    """A tar opened in the main process must not share its file offset with forked workers."""
    ds = create_image_dataset(digits_tar, 'val', transform=ToTensor())
    expected = torch.stack([ds[i][0] for i in range(len(ds))])  # opens (and caches) the tar in this process
    loader = DataLoader(ds, batch_size=10, num_workers=2)
    got = torch.cat([images for images, _ in loader])
    assert torch.equal(got, expected)
    pickle.loads(pickle.dumps(ds))  # picklable (spawn start method) even with an open tar


# -------------------------------------------------------------------------------------------------------- real data


def test_cifar10_mini(shared_data):
    root = shared_data / 'cifar10-mini'
    if not (root / 'train.tar').is_file():
        pytest.skip(f'{root / "train.tar"} not available')
    train = create_image_dataset(root, 'train')
    val = create_image_dataset(root, 'val')
    assert train.classes == val.classes == CIFAR10_CLASSES and train.num_classes == 10
    assert (len(train), len(val)) == (2000, 500)
    assert np.bincount(_targets(train)).tolist() == [200] * 10
    assert _labels_from_filenames(train) == _targets(train)
    assert train.filename(0) == './airplane/0000.jpg'
    img, target = train[len(train) - 1]
    assert target == 9 and img.size == (32, 32) and img.mode == 'RGB'
