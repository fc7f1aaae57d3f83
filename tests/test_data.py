"""timm_bot.data: the embedded digits, folders/tars through timm's readers, the layout checks timm lacks, bad images."""
import io
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import timm.data
import torch
from PIL import ImageFile
from torch.utils.data import DataLoader
from torchvision.transforms import ToTensor

pytest.importorskip('sklearn')

from helpers_data import write_image_folder  # noqa: E402

from timm_bot.data import DIGITS, BadImageError, collate_skip_bad, create_image_dataset  # noqa: E402


def _add(tf: tarfile.TarFile, name: str, payload: bytes | None = None) -> None:
    ti = tarfile.TarInfo(name)
    if payload is None:
        ti.type = tarfile.DIRTYPE
    else:
        ti.size = len(payload)
    tf.addfile(ti, None if payload is None else io.BytesIO(payload))


@pytest.fixture()
def bad_folder(tmp_path: Path) -> Path:
    """3 digits per class, plus a truncated JPEG and a text file named .jpg in class '3' (32 files)."""
    split = write_image_folder(tmp_path, split='train', limit_per_class=3)
    good = (split / '3' / '0000.jpg').read_bytes()
    (split / '3' / 'truncated.jpg').write_bytes(good[:len(good) // 2])
    (split / '3' / 'notes.jpg').write_text('this is not an image\n')
    return split


def test_digits_splits():
    train, val = create_image_dataset(DIGITS, 'train'), create_image_dataset(DIGITS, 'validation')
    assert (len(train), len(val)) == (1438, 359)
    assert train.classes == val.classes == [str(i) for i in range(10)] and train.num_classes == 10
    assert sorted(np.concatenate([train.indices, val.indices]).tolist()) == list(range(1797))  # disjoint, all
    assert np.bincount(val.targets).tolist() == [36, 36, 35, 37, 36, 36, 36, 36, 35, 36]  # stratified 20%
    img, target = train[0]
    assert img.mode == 'RGB' and img.size == (32, 32) and target == train.targets[0]
    x, _ = create_image_dataset(DIGITS, 'val', transform=ToTensor())[0]
    assert x.shape == (3, 32, 32) and x.max() > 0.8 and x.min() == 0
    with pytest.raises(ValueError, match='train.*val'):
        create_image_dataset(DIGITS, 'test')


@pytest.mark.parametrize('fixture', ['digits_folder', 'digits_tar'])
def test_labels_are_timms(fixture, request, digits_folder):
    root = request.getfixturevalue(fixture)
    path = root / 'val' if fixture == 'digits_folder' else root / 'val.tar'
    ds = create_image_dataset(root, 'validation')  # a synonym finds val/ or val.tar
    ref = timm.data.create_dataset('', root=str(path))
    assert len(ds) == len(ref) == 300 and ds.classes == [str(i) for i in range(10)]
    assert ds.targets == [int(t) for _, t in ref]  # timm's own labels, not re-derived
    assert ds.targets == [int(Path(ds.filename(i)).parent.name) for i in range(len(ds))]
    folder = create_image_dataset(digits_folder, 'val')
    assert ds.filenames() == folder.filenames() and ds.targets == folder.targets
    img, target = ds[ds.filenames().index('7/0002.jpg')]
    assert target == 7 and img.size == (32, 32)


def test_png_tar_is_pixel_exact(tmp_path):
    tar = write_image_folder(tmp_path, split='val', limit_per_class=2, as_tar=True, fmt='PNG')
    ds, digits = create_image_dataset(tar, 'ignored'), create_image_dataset(DIGITS, 'val', transform=ToTensor())
    assert ds.filename(2) == '1/0000.png'
    torch.testing.assert_close(ToTensor()(ds[2][0]), digits[digits.targets.index(1)][0], rtol=0, atol=0)


def test_split_resolution(digits_folder, digits_tar, tmp_path):
    assert len(create_image_dataset(digits_folder / 'train', 'val')) == 300  # class folders: split unused
    only_train = tmp_path / 'only_train'
    shutil.copytree(digits_folder / 'train', only_train / 'train')
    with pytest.raises(FileNotFoundError, match=r'no "val" split .*found train'):
        create_image_dataset(only_train, 'val')
    with pytest.raises(FileNotFoundError, match='does not exist'):
        create_image_dataset(tmp_path / 'nowhere', 'train')
    (tmp_path / 'x.zip').write_bytes(b'PK')
    with pytest.raises(ValueError, match='not a .tar'):
        create_image_dataset(tmp_path / 'x.zip', 'train')


def test_layout_errors(tmp_path, digits_folder):
    root = tmp_path / 'empty_class'
    shutil.copytree(digits_folder / 'val', root)
    for f in (root / '4').iterdir():
        f.unlink()
    (root / '4' / 'README.txt').write_text('no images here')
    with pytest.raises(ValueError, match="empty class folder.*'4'"):
        create_image_dataset(root, 'val')
    jpg = (digits_folder / 'val' / '0' / '0000.jpg').read_bytes()
    with tarfile.open(tmp_path / 'empty.tar', 'w') as tf:
        _add(tf, 'cat')
        _add(tf, 'cat/0.jpg', jpg)
        _add(tf, 'dog')
    with pytest.raises(ValueError, match="empty class folder.*'dog'"):
        create_image_dataset(tmp_path / 'empty.tar', 'train')
    loose = tmp_path / 'loose'
    shutil.copytree(digits_folder / 'val', loose)
    shutil.copy(loose / '0' / '0000.jpg', loose / 'stray.jpg')
    with pytest.raises(ValueError, match="not inside a class folder.*'stray.jpg'"):
        create_image_dataset(loose, 'val')
    (tmp_path / 'nothing' / 'a').mkdir(parents=True)
    with pytest.raises(ValueError, match='no images found'):
        create_image_dataset(tmp_path / 'nothing', 'train')


def test_bad_images_are_named_not_substituted(bad_folder, tmp_path):
    ds = create_image_dataset(bad_folder, 'train')
    assert len(ds) == 32 and ds.num_classes == 10
    for name, reason in (('3/truncated.jpg', 'truncated'), ('3/notes.jpg', 'not an image')):
        with pytest.raises(BadImageError, match=f"(?i)'{name}'.*{reason}.*skip_bad_images") as e:
            ds[ds.filenames().index(name)]
        assert str(pickle.loads(pickle.dumps(e.value))) == str(e.value)  # how worker errors travel
    assert ds[ds.filenames().index('3/0000.jpg')][1] == 3
    good = (bad_folder / '1' / '0000.jpg').read_bytes()
    with tarfile.open(tmp_path / 'bad.tar', 'w') as tf:
        _add(tf, './a/0.jpg', good)
        _add(tf, './a/1.jpg', good[:len(good) // 2])
    with pytest.raises(BadImageError, match=r"(?i)'\./a/1\.jpg'.*truncated"):
        create_image_dataset(tmp_path / 'bad.tar', 'train')[1]
    ImageFile.LOAD_TRUNCATED_IMAGES = True  # would pad the truncated file with grey
    try:
        with pytest.raises(RuntimeError, match='LOAD_TRUNCATED_IMAGES'):
            ds[0]
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def test_bad_image_through_workers_and_skipped(bad_folder):
    ds = create_image_dataset(bad_folder, 'train', transform=ToTensor())
    batches = iter(DataLoader(ds, batch_size=8, num_workers=2))
    with pytest.raises(BadImageError) as e:
        for _ in batches:
            pass
    for _ in batches:  # finish the epoch: an abandoned iterator waits ~10 s for its workers
        pass
    assert str(e.value).startswith("Bad image file '3/") and '\n' not in str(e.value)  # one line, not a traceback
    ds.skip_bad_images = True
    seen = skipped = 0
    for images, targets, num_skipped in DataLoader(ds, batch_size=8, num_workers=2, collate_fn=collate_skip_bad):
        assert images.shape[1:] == (3, 32, 32) and images.shape[0] == targets.shape[0] > 1
        seen, skipped = seen + images.shape[0], skipped + num_skipped
    assert (seen, skipped) == (30, 2)


def test_collate_skip_bad():
    x = (torch.zeros(3, 2, 2), 1)
    images, targets, num_skipped = collate_skip_bad([x, None, x])
    assert images.shape == (2, 3, 2, 2) and targets.tolist() == [1, 1] and num_skipped == 1
    assert collate_skip_bad([None, None]) == (None, None, 2)
    assert collate_skip_bad([x, None, None]) == (None, None, 3)  # one survivor: BatchNorm cannot train on it
    assert collate_skip_bad([x])[0].shape == (1, 3, 2, 2)  # a last eval batch of one is kept


def test_tar_reopened_in_each_worker(digits_tar):
    ds = create_image_dataset(digits_tar, 'val', transform=ToTensor())
    expected = torch.stack([ds[i][0] for i in range(len(ds))])  # opens (and caches) the tar in this process
    got = torch.cat([images for images, _ in DataLoader(ds, batch_size=10, num_workers=2)])
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    pickle.loads(pickle.dumps(ds))  # picklable (spawn start method) with an open tar


def test_cifar10_mini(shared_data):
    root = shared_data / 'cifar10-mini'
    if not (root / 'val.tar').is_file():
        pytest.skip(f'{root / "val.tar"} not available')
    val = create_image_dataset(root, 'val')
    assert val.classes[:3] == ['airplane', 'automobile', 'bird'] and len(val) == 500
    assert val.filename(0) == './airplane/0000.jpg' and val[len(val) - 1][1] == 9
