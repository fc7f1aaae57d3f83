"""Datasets: the embedded digits, class folders or tars read by timm's readers plus the checks timm lacks, and
``hfds/`` (Hugging Face datasets) and ``wds/`` (WebDataset shards) sources by name, as ``timm.data.create_dataset``."""
import functools
import logging
import os
import posixpath
import tarfile
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError
from timm.data import ImageDataset
from timm.data.readers.class_map import load_class_map
from timm.data.readers.img_extensions import get_img_extensions
from timm.data.readers.reader import Reader
from timm.data.readers.reader_image_folder import ReaderImageFolder
from timm.data.readers.reader_image_in_tar import ReaderImageInTar
from torch.utils.data import Dataset, default_collate

__all__ = ['DIGITS', 'BadImageError', 'CheckedImageDataset', 'LabelMap', 'create_image_dataset', 'collate_skip_bad',
           'check_same_classes', 'class_names', 'decode_image', 'split_synonyms']

DIGITS = 'digits'  # scikit-learn's 8x8 digits upscaled (bilinear) to 32x32 RGB, split 1438 train / 359 val
_SPLITS = (('train', 'training'), ('val', 'valid', 'validation', 'eval', 'evaluation'), ('test',))


class BadImageError(ValueError):
    """An undecodable image file; ``str(e)``: one line naming the file and the fix (of a worker's traceback, too)."""

    def __init__(self, message: str):
        last = message.rstrip().splitlines()[-1] if message.strip() else message
        super().__init__(last.split('BadImageError: ', 1)[-1])


def class_names(class_to_idx: dict[Any, int]) -> list[str]:
    """Class names in label order; a one-line ValueError when the labels are not exactly 0..N-1."""
    names = sorted(class_to_idx, key=class_to_idx.get)
    if sorted(class_to_idx.values()) != list(range(len(names))):
        raise ValueError(f'the class map must give the labels 0..{len(names) - 1} once each, got '
                         f'{sorted(set(class_to_idx.values()))[:10]}')
    return [str(n) for n in names]


class LabelMap:
    """Raw labels of hfds/ and wds/ sources to labels 0..N-1: ints (named by ``source_names``, e.g. a ClassLabel's),
    or names. ``class_map`` (timm's: a .txt, line i naming class i): names are looked up in it, unnamed ints keep
    their value and take its names. Without it, ints are the labels, named ``source_names`` or '0'..'N-1'."""

    def __init__(self, class_map: str | None = None, source_names: list[str] | None = None):
        self.lookup = {str(k): v for k, v in load_class_map(class_map).items()} if class_map else None
        self.source_names, self.class_map = source_names, class_map
        self.classes = class_names(self.lookup) if self.lookup else [str(n) for n in source_names or []] or None

    def __call__(self, raw: Any, where: str) -> int:
        """The label of ``raw``; a one-line ValueError naming ``where`` when it has none."""
        if isinstance(raw, str):
            if self.lookup is None:
                raise ValueError(f'{where}: the label {raw!r} is a class name: give class_map (a .txt of the class '
                                 'names, one per line) to number the classes')
            name = raw
        else:
            label = int(raw)
            known = self.source_names or self.classes
            if label < 0 or (known is not None and label >= len(known)):
                valid = f'0..{len(known) - 1}' if known else '>= 0'
                raise ValueError(f'{where}: label {label} is not a class ({valid}); unlabelled rows (-1, e.g. of a Hub '
                                 'test split) cannot be trained or evaluated on')
            if self.lookup is None or self.source_names is None:
                return label
            name = str(self.source_names[label])
        if name not in self.lookup:
            raise ValueError(f'{where}: class {name!r} is not in class_map {self.class_map}')
        return self.lookup[name]

    def names(self, labels: Iterable[int]) -> list[str]:
        """The class names: the class map's or source's, else '0'..'N-1' up to the largest of ``labels``."""
        return self.classes or [str(i) for i in range(max(labels, default=-1) + 1)]


def decode_image(fileobj: Any, mode: str, skip_bad_images: bool, name: Callable[[], str], where: str) -> Any:
    """``fileobj`` decoded now (not inside a transform); :class:`BadImageError` naming it, or None if skipped."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError('PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True, so truncated images would be padded '
                           'silently: set it back to False and use skip_bad_images to skip broken files.')
    try:
        with fileobj:
            return Image.open(fileobj).convert(mode)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        if skip_bad_images:
            logging.getLogger(__name__).warning(f'skipping bad image {name()!r} ({where}): {e}')
            return None
        why = 'not an image file PIL can read' if isinstance(e, UnidentifiedImageError) else f'{type(e).__name__}: {e}'
        raise BadImageError(f"Bad image file '{name()}' ({where}): {why}. Fix: remove or replace it, or set "
                            '`skip_bad_images: true` to skip and count bad images.') from e


class CheckedImageDataset(ImageDataset):
    """timm's ``ImageDataset`` raising :class:`BadImageError` (None if ``skip_bad_images``), never the next image.

    ``reader``: a timm reader yielding ``(file object, label)`` with ``class_to_idx`` and ``targets`` (the Hugging Face
    datasets one); default: timm's folder or tar reader of ``root``, with timm's ``class_map`` (a .txt of names)."""

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None, skip_bad_images: bool = False,
                 reader: Reader | None = None, class_map: str | None = None):
        super().__init__(str(root), reader=reader or '', transform=transform, class_map=class_map)
        if isinstance(self.reader, ReaderImageInTar):
            class_to_idx, self.targets = self.reader.class_name_to_idx, [int(t) for t in self.reader.targets]
        elif isinstance(self.reader, ReaderImageFolder):
            class_to_idx, self.targets = self.reader.class_to_idx, [t for _, t in self.reader.samples]
        else:
            class_to_idx, self.targets = self.reader.class_to_idx, list(self.reader.targets)
        self.classes = class_names(class_to_idx)
        self.root, self.skip_bad_images, self.num_classes = str(root), skip_bad_images, len(self.classes)
        self._reset_tar_handles()

    def _reset_tar_handles(self) -> None:
        """Drop open tar handles, re-opened lazily by this process: a worker must not share the parent's offset."""
        self._pid = os.getpid()
        if isinstance(self.reader, ReaderImageInTar):
            states = [self.reader.tar_state] if self.reader.root_is_tar else list(self.reader.tar_state.values())
            for state in states:  # the list grows with the states of tars inside tars
                state.reset()
                states.extend(state.children.values())

    def __getstate__(self) -> dict[str, Any]:
        self._reset_tar_handles()
        return self.__dict__.copy()

    def __getitem__(self, index: int) -> tuple[Any, int] | None:
        if self._pid != os.getpid():
            self._reset_tar_handles()
        fileobj, target = self.reader[index]
        img = decode_image(fileobj, self.input_img_mode, self.skip_bad_images, where=f'sample {index} of {self.root}',
                           name=lambda: self.filename(index) or f'row {index}')  # Hub rows may have no file name
        if img is None:
            return None
        return (self.transform(img) if self.transform is not None else img), int(target)


class DigitsDataset(Dataset):
    """scikit-learn's digits as 32x32 RGB PIL images: a stratified split with a fixed seed, 1438 train / 359 val."""

    def __init__(self, split: str, transform: Callable | None = None):
        kind = next((s[0] for s in _SPLITS[:2] if split.split('[')[0] in s), None)
        if kind is None:
            raise ValueError(f'unknown split {split!r} for the digits dataset: use "train" or "val"')
        images, labels, splits = _load_digits()
        self.indices = splits[kind]  # rows of sklearn.datasets.load_digits()
        self.images, self.targets = images[self.indices], labels[self.indices].tolist()
        self.classes, self.num_classes = [str(i) for i in range(10)], 10
        self.transform, self.root, self.skip_bad_images = transform, DIGITS, False

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = Image.fromarray(self.images[index])
        return (self.transform(img) if self.transform else img), self.targets[index]


@functools.lru_cache(maxsize=1)
def _load_digits() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError('the "digits" dataset needs scikit-learn: pip install timm-bot[demo]') from e
    bunch = load_digits()
    raw = np.clip(np.rint(bunch.images * (255 / 16)), 0, 255).astype(np.uint8)
    images = np.stack([np.asarray(Image.fromarray(x).resize((32, 32), Image.BILINEAR).convert('RGB')) for x in raw])
    labels = bunch.target.astype(np.int64)
    rng = np.random.RandomState(0)  # per class: a fixed permutation, its first 20% to val
    perms = [np.flatnonzero(labels == c)[rng.permutation(np.count_nonzero(labels == c))] for c in range(10)]
    val = np.sort(np.concatenate([p[:int(round(0.2 * len(p)))] for p in perms]))
    return images, labels, {'train': np.setdiff1d(np.arange(len(labels)), val), 'val': val}


def split_synonyms(split: str) -> tuple[str, ...]:
    """``split`` (without a ``[...]`` slice) then its synonyms, as timm searches them: val, valid, validation, ..."""
    name = split.split('[')[0]
    return name, *(n for n in next((group for group in _SPLITS if name in group), ()) if n != name)


def _resolve_split(path: Path, split: str) -> Path:
    """``path/{split}`` or ``path/{split}.tar`` (or a synonym); ``path`` itself when it holds no split at all."""
    name, names = split.split('[')[0], split_synonyms(split)
    for n in names:
        if (path / n).is_dir() or (path / f'{n}.tar').is_file():
            return path / n if (path / n).is_dir() else path / f'{n}.tar'
    present = sorted(p.name for p in path.iterdir() if p.name.removesuffix('.tar') in sum(_SPLITS, ()))
    if present:
        raise FileNotFoundError(f'no "{name}" split in {path} (looked for {", ".join(names)} as folder or .tar; '
                                f'found {", ".join(present)})')
    logging.getLogger(__name__).warning(f'{path} has no "{name}" split: reading its class folders for every split')
    return path


def _check_layout(path: Path) -> None:
    """Refuse what timm's readers silently misread: no images, images outside class folders, empty class folders."""
    if path.is_dir():
        walk = [(Path(d).relative_to(path), names) for d, _, names in os.walk(path, followlinks=True)]
        dirs = {d.as_posix() for d, _ in walk} - {'.'}
        files = [(d / f).as_posix() for d, names in walk for f in names]
    else:
        with tarfile.open(path, mode='r|') as tf:  # streaming header scan, as timm does
            members = [(posixpath.normpath(ti.name).lstrip('/'), ti) for ti in tf]
        dirs = {n for n, ti in members if ti.isdir()} - {'', '.'}
        files = [n for n, ti in members if ti.isfile()]
        if any(f.endswith('.tar') for f in files):
            return  # a tar of tars: timm takes labels from the inner tar names
    exts = get_img_extensions(as_set=True)
    images = [f for f in files if posixpath.splitext(f)[1].lower() in exts]
    if not images:
        raise ValueError(f'no images found in {path}: timm reads {", ".join(sorted(exts))} files in <class>/ folders')
    loose = sorted(f for f in images if '/' not in f)
    if loose:
        raise ValueError(f'{len(loose)} image(s) in {path} are not inside a class folder (e.g. {loose[0]!r}): move '
                         'them into <class>/ folders, or point the source at the folder holding the class folders')
    dirs |= {str(p) for f in files for p in PurePosixPath(f).parents}  # '.' and hidden folders are skipped below
    full = {str(p) for f in images for p in PurePosixPath(f).parents}
    empty = sorted(d for d in dirs - full if not d.startswith('.') and '/.' not in d)
    if empty:
        raise ValueError(f'empty class folder(s) in {path}: {", ".join(map(repr, empty[:10]))} hold no images; timm '
                         'would drop them and shift every later label. Add images, or delete the folder in every split')


def create_image_dataset(source: str | os.PathLike, split: str, transform: Callable | None = None,
                         skip_bad_images: bool = False, input_key: str | None = None, target_key: str | None = None,
                         class_map: str | None = None) -> CheckedImageDataset | DigitsDataset | Any:
    """``(image, label)`` dataset with ``.classes``: ``'digits'``, a folder with ``{split}/`` or ``{split}.tar``, class
    folders, a tar, ``hfds/ID_OR_PATH`` (map-style) or ``wds/ROOT`` (a streamed :class:`timm_bot.wds.WdsImageDataset`).

    ``input_key`` / ``target_key`` (hfds/ and wds/ only): the image and label columns or sample members, as timm's
    ``--input-key`` / ``--target-key``; ``class_map``: a .txt of class names, one per line (timm's ``--class-map``)."""
    keys = {'input_key': input_key, 'target_key': target_key, 'class_map': class_map}
    if isinstance(source, str) and source.partition('/')[0].lower() in ('hfds', 'wds'):
        prefix, _, name = source.partition('/')
        if prefix.lower() == 'hfds':
            from timm_bot.hfds import create_hfds_dataset
            return create_hfds_dataset(name, split, transform, skip_bad_images, **keys)
        from timm_bot.wds import create_wds_dataset
        return create_wds_dataset(name, split, transform, skip_bad_images, **keys)
    if input_key or target_key:
        raise ValueError(f'input_key / target_key name the columns of hfds/ and wds/ sources; {str(source)!r} has '
                         'none: drop them')
    if isinstance(source, str) and source == DIGITS:
        if class_map:
            raise ValueError('the digits dataset has fixed classes 0-9: drop class_map')
        return DigitsDataset(split, transform)
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f'data source {str(source)!r} does not exist (expected "digits", a folder with '
                                f'{split}/ or {split}.tar, a folder of class folders, a .tar of class folders, '
                                'hfds/ID_OR_PATH or wds/SHARDS)')
    if path.is_dir():
        path = _resolve_split(path, split)
    elif path.suffix.lower() != '.tar':
        raise ValueError(f'data source {str(path)!r} is a file but not a .tar of class folders')
    _check_layout(path)
    return CheckedImageDataset(path, transform=transform, skip_bad_images=skip_bad_images, class_map=class_map)


def collate_skip_bad(batch: list[tuple[Any, int] | None]) -> tuple[torch.Tensor | None, torch.Tensor | None, int]:
    """``collate_fn`` dropping ``None`` samples: ``(images, targets, num_skipped)``, or ``(None, None, n)``."""
    kept = [b for b in batch if b is not None]
    if not kept or (len(kept) == 1 < len(batch)):  # none left, or one of several: BatchNorm cannot train on one
        return None, None, len(batch)
    return *default_collate(kept), len(batch) - len(kept)


def check_same_classes(expected: Iterable[Any], found: Iterable[Any], where: str) -> None:
    """Raise a one-line ValueError naming the classes ``where`` lacks or adds, or a different order."""
    expected, found = [str(c) for c in expected], [str(c) for c in found]
    if expected != found:
        missing, extra = [c for c in expected if c not in found], [c for c in found if c not in expected]
        detail = ', '.join(f'{kind} {names[:8]}' for kind, names in (('missing', missing), ('extra', extra)) if names)
        raise ValueError(f'{where} has other classes than expected: {detail or "same names, other order"}')
