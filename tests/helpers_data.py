"""Test-only data helpers: real image files written from the embedded digits as class folders or tars (timm's layout),
a Hugging Face dataset (save_to_disk and parquet) and WebDataset shards."""
import io
import json
import os
import tarfile
from pathlib import Path

from timm_bot.data import DIGITS, create_image_dataset

_EXT = {'JPEG': '.jpg', 'PNG': '.png'}


def write_image_folder(root: str | os.PathLike, source: str = DIGITS, split: str = 'train',
                       limit_per_class: int | None = None, as_tar: bool = False, fmt: str = 'JPEG') -> Path:
    """Write ``split`` of ``source`` as ``root/{split}/<class>/<i:04d>.jpg`` (or ``root/{split}.tar`` with a directory
    member per class and the same member names, byte-reproducible). JPEG at quality 95; ``fmt='PNG'`` is exact.
    ``limit_per_class`` keeps the first N images of each class. Returns the folder or tar written."""
    classes, samples = digits_samples(source, split, limit_per_class, fmt)
    counts, members = [0] * len(classes), []
    for payload, target in samples:
        members.append((f'{classes[target]}/{counts[target]:04d}{_EXT[fmt]}', payload))
        counts[target] += 1
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if not as_tar:
        for cls in classes:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
        for name, payload in members:
            (root / split / name).write_bytes(payload)
        return root / split
    out = root / f'{split}.tar'
    with tarfile.open(out, 'w', format=tarfile.USTAR_FORMAT) as tf:
        for name, payload in sorted([(cls, None) for cls in classes] + members):
            ti = tarfile.TarInfo(name)
            if payload is None:
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            else:
                ti.size, ti.mode = len(payload), 0o644
            tf.addfile(ti, None if payload is None else io.BytesIO(payload))
    return out


def digits_samples(source: str = DIGITS, split: str = 'train', limit_per_class: int | None = None,
                   fmt: str = 'PNG') -> tuple[list[str], list[tuple[bytes, int]]]:
    """``(class names, [(encoded image, label), ...])`` of ``split`` in dataset order, the first N of each class."""
    ds = create_image_dataset(source, split)
    counts, samples = [0] * ds.num_classes, []
    for i, target in enumerate(ds.targets):
        if limit_per_class is None or counts[target] < limit_per_class:
            buf = io.BytesIO()
            ds[i][0].save(buf, format=fmt, **({'quality': 95} if fmt == 'JPEG' else {}))
            samples.append((buf.getvalue(), target))
            counts[target] += 1
    return ds.classes, samples


def write_hf_dataset(root: str | os.PathLike, splits: tuple[str, ...] = ('train', 'validation'),
                     limit_per_class: int = 3, class_prefix: str = 'digit_') -> tuple[Path, Path]:
    """The digits as a Hugging Face image-classification dataset (``image``: Image, ``label``: ClassLabel named
    ``digit_0``..), written twice: ``root/saved`` by ``DatasetDict.save_to_disk`` and ``root/parquet/data/
    {split}-00000-of-00001.parquet`` as the Hub stores it. Returns both folders."""
    import datasets
    root = Path(root)
    features = datasets.Features({'image': datasets.Image(), 'label': datasets.ClassLabel(
        names=[f'{class_prefix}{i}' for i in range(10)])})
    parts = {}
    for split in splits:
        _, samples = digits_samples(split='val' if split != 'train' else 'train', limit_per_class=limit_per_class)
        parts[split] = datasets.Dataset.from_dict(
            {'image': [{'bytes': b, 'path': None} for b, _ in samples], 'label': [t for _, t in samples]},
            features=features)
    dataset = datasets.DatasetDict(parts)
    dataset.save_to_disk(str(root / 'saved'))
    (root / 'parquet' / 'data').mkdir(parents=True, exist_ok=True)
    for split, part in dataset.items():
        part.to_parquet(str(root / 'parquet' / 'data' / f'{split}-00000-of-00001.parquet'))
    return root / 'saved', root / 'parquet'


def write_wds_shards(root: str | os.PathLike, split: str = 'train', shards: int = 2, limit_per_class: int = 5,
                     source: str = DIGITS, fmt: str = 'PNG') -> list[Path]:
    """``root/{split}-{k:06d}.tar``: the split's digits as WebDataset samples dealt in turn to ``shards`` shards;
    sample ``i`` has key ``{i:06d}`` and members ``.png`` (or ``.jpg``), ``.cls`` (the label) and ``.json``
    (``{"id": i, "name": class name}``), byte-reproducible. Returns the shard paths."""
    classes, samples = digits_samples(source, 'val' if split != 'train' else 'train', limit_per_class, fmt)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paths = [root / f'{split}-{k:06d}.tar' for k in range(shards)]
    for k, path in enumerate(paths):
        with tarfile.open(path, 'w', format=tarfile.USTAR_FORMAT) as tf:
            for i in range(k, len(samples), shards):
                image, label = samples[i]
                meta = json.dumps({'id': i, 'name': classes[label]}).encode()
                for ext, payload in ((_EXT[fmt][1:], image), ('cls', str(label).encode()), ('json', meta)):
                    ti = tarfile.TarInfo(f'{i:06d}.{ext}')
                    ti.size, ti.mode = len(payload), 0o644
                    tf.addfile(ti, io.BytesIO(payload))
    return paths
