"""Datasets: the embedded digits demo set, and class-folder images or tars read by timm's own readers.

``create_image_dataset(source, split)`` reads ``'digits'``, a directory holding ``{split}/`` or ``{split}.tar`` (timm's
split synonyms honoured), a directory of class folders, or a ``.tar`` of class folders. Labels are exactly those of
``timm.data.create_dataset``. On top of timm it refuses layouts timm silently misreads (an empty class folder shifts
every later label; images outside class folders; no images), never substitutes another sample for an unreadable one
(``BadImageError`` naming the file, or ``None`` with ``skip_bad_images``), and re-opens tars in each worker process.
"""
from __future__ import annotations

import functools
import logging
import os
import posixpath
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError
from timm.data import ImageDataset
from timm.data.readers.img_extensions import get_img_extensions
from timm.data.readers.reader_image_in_tar import ReaderImageInTar
from torch.utils.data import Dataset, default_collate

__all__ = ['DIGITS', 'BadImageError', 'create_image_dataset', 'collate_skip_bad']

_logger = logging.getLogger(__name__)

DIGITS = 'digits'  # scikit-learn's 8x8 digits upscaled (bilinear) to 32x32 RGB, split 1438 train / 359 val
_SPLITS = (('train', 'training'), ('val', 'valid', 'validation', 'eval', 'evaluation'), ('test',))
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
_FIX = ('Fix: remove or replace the file, or set `skip_bad_images: true` to skip unreadable images '
        '(dropped from their batch and counted).')


class BadImageError(ValueError):
    """An image file that cannot be decoded; ``str(e)`` is one line naming the file and the fix."""

    def __init__(self, message: str):
        # a DataLoader worker's error arrives with the worker's traceback as message: keep its last line
        last = message.rstrip().splitlines()[-1] if message.strip() else message
        super().__init__(last.split('BadImageError: ', 1)[-1])


class CheckedImageDataset(ImageDataset):
    """timm's ``ImageDataset`` over a class-folder tree or tar that reports unreadable images instead of replacing
    them with the next sample. Attributes: ``classes`` (index = label), ``num_classes``, ``targets``."""

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None, skip_bad_images: bool = False):
        super().__init__(str(root), reader='', transform=transform)
        reader = self.reader
        tar = isinstance(reader, ReaderImageInTar)
        class_to_idx = reader.class_name_to_idx if tar else reader.class_to_idx
        self.classes = sorted(class_to_idx, key=class_to_idx.get)
        self.num_classes = len(self.classes)
        self.targets = [int(t) for t in reader.targets] if tar else [t for _, t in reader.samples]
        self.root, self.skip_bad_images, self._pid = str(root), skip_bad_images, os.getpid()

    def _reset_tar_handles(self) -> None:
        """Drop open tar handles (re-opened lazily): a forked worker must not share the parent's file offset."""
        if isinstance(self.reader, ReaderImageInTar):
            states = [self.reader.tar_state] if self.reader.root_is_tar else list(self.reader.tar_state.values())
            while states:
                state = states.pop()
                state.tf = None
                states.extend(state.children.values())

    def __getstate__(self) -> dict[str, Any]:
        self._reset_tar_handles()
        return self.__dict__.copy()

    def __getitem__(self, index: int) -> tuple[Any, int] | None:
        if ImageFile.LOAD_TRUNCATED_IMAGES:
            raise RuntimeError('PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True, so truncated images would be padded '
                               'silently: set it back to False and use skip_bad_images to skip broken files.')
        if self._pid != os.getpid():
            self._reset_tar_handles()
            self._pid = os.getpid()
        fileobj, target = self.reader[index]
        try:
            with fileobj:
                img = Image.open(fileobj)
                img.load()  # decode here, not later inside a transform
                img = img.convert(self.input_img_mode)
        except _DECODE_ERRORS as e:
            name = self.filename(index)
            if self.skip_bad_images:
                _logger.warning(f'skipping bad image {name!r} (sample {index}): {e}')
                return None
            unknown = isinstance(e, UnidentifiedImageError)
            why = 'not an image file PIL can read' if unknown else f'{type(e).__name__}: {e}'
            raise BadImageError(f"Bad image file '{name}' (sample {index} of {self.root}): {why}. {_FIX}") from e
        if self.transform is not None:
            img = self.transform(img)
        return img, int(target)


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
        raise ImportError('the embedded "digits" dataset needs scikit-learn: pip install timm-bot[demo] '
                          '(or point the data source at a folder or .tar of class-folder images)') from e
    bunch = load_digits()
    raw = np.clip(np.rint(bunch.images * (255 / 16)), 0, 255).astype(np.uint8)
    images = np.stack([np.asarray(Image.fromarray(x).resize((32, 32), Image.Resampling.BILINEAR).convert('RGB'))
                       for x in raw])
    labels = bunch.target.astype(np.int64)
    rng = np.random.RandomState(0)
    train, val = [], []
    for c in range(10):  # per class: a fixed permutation, 20% to val
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_val = int(round(0.2 * len(idx)))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return images, labels, {'train': np.sort(np.concatenate(train)), 'val': np.sort(np.concatenate(val))}


def _resolve_split(path: Path, split: str) -> Path:
    """``path/{split}`` or ``path/{split}.tar`` (or a synonym); ``path`` itself when it holds no split at all."""
    name = split.split('[')[0]
    names = next((group for group in _SPLITS if name in group), (name,))
    names = (name, *(n for n in names if n != name))
    for n in names:
        if (path / n).is_dir() or (path / f'{n}.tar').is_file():
            return path / n if (path / n).is_dir() else path / f'{n}.tar'
    present = sorted(p.name for p in path.iterdir() if p.name.removesuffix('.tar') in sum(_SPLITS, ()))
    if present:
        raise FileNotFoundError(f'no "{name}" split in {path} (looked for {", ".join(names)} as folder or .tar; '
                                f'found {", ".join(present)})')
    _logger.warning(f'{path} has no "{name}" split folder or tar: reading its class folders for every split')
    return path


def _members(path: Path) -> tuple[set[str], list[str]]:
    """(folders, files) of a directory tree or a tar, as relative posix paths."""
    dirs, files = set(), []
    if path.is_dir():
        for d, _, names in os.walk(path, followlinks=True):
            rel = Path(d).relative_to(path).as_posix()
            dirs.add(rel)
            files += [posixpath.join(rel, f) if rel != '.' else f for f in names]
        dirs.discard('.')
    else:
        with tarfile.open(path, mode='r|') as tf:  # streaming header scan, as timm does
            for ti in tf:
                name = posixpath.normpath(ti.name).lstrip('/')
                if name in ('', '.'):
                    continue
                if ti.isdir():
                    dirs.add(name)
                elif ti.isfile():
                    files.append(name)
    return dirs, files


def _check_layout(path: Path) -> None:
    """Refuse what timm's readers silently misread: no images, images outside class folders, empty class folders."""
    dirs, files = _members(path)
    if path.is_file() and any(f.endswith('.tar') for f in files):
        return  # a tar of tars: timm takes labels from the inner tar names
    exts = get_img_extensions(as_set=True)
    images = [f for f in files if posixpath.splitext(f)[1].lower() in exts]
    if not images:
        raise ValueError(f'no images found in {path}: timm reads {", ".join(sorted(exts))} files inside one folder '
                         'per class (<class>/<image>.jpg)')
    loose = sorted(f for f in images if '/' not in f)
    if loose:
        raise ValueError(f'{len(loose)} image(s) in {path} are not inside a class folder (e.g. {loose[0]!r}): move '
                         'them into <class>/ folders, or point the source at the folder holding the class folders')

    def ancestors(f: str) -> list[str]:
        parts = f.split('/')[:-1]
        return ['/'.join(parts[:i]) for i in range(1, len(parts) + 1)]

    dirs |= {a for f in files for a in ancestors(f)}
    full = {a for f in images for a in ancestors(f)}
    empty = sorted(d for d in dirs - full if not any(p.startswith('.') for p in d.split('/')))
    if empty:
        raise ValueError(f'empty class folder(s) in {path}: {", ".join(map(repr, empty[:10]))} hold no images; timm '
                         'would drop them and shift every later label. Add images, or delete the folder in every split')


def create_image_dataset(source: str | os.PathLike, split: str, transform: Callable | None = None,
                         skip_bad_images: bool = False) -> CheckedImageDataset | DigitsDataset:
    """The dataset of one ``split`` of ``source`` (see the module docstring); items are ``(image, label)``, or None
    for an unreadable image with ``skip_bad_images``. Has ``classes``, ``num_classes`` and ``targets``.

    Raises FileNotFoundError (no such path or split), ValueError (bad layout), ImportError ('digits' without sklearn).
    """
    if isinstance(source, str) and source == DIGITS:
        return DigitsDataset(split, transform)
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f'data source {str(source)!r} does not exist (expected "digits", a folder with '
                                f'{split}/ or {split}.tar, a folder of class folders, or a .tar of class folders)')
    if path.is_dir():
        path = _resolve_split(path, split)
    elif path.suffix.lower() != '.tar':
        raise ValueError(f'data source {str(path)!r} is a file but not a .tar of class folders')
    _check_layout(path)
    return CheckedImageDataset(path, transform=transform, skip_bad_images=skip_bad_images)


def collate_skip_bad(batch: list[tuple[Any, int] | None]) -> tuple[torch.Tensor | None, torch.Tensor | None, int]:
    """``collate_fn`` dropping ``None`` samples: ``(images, targets, num_skipped)``, (None, None, n) if none is left.

    A batch that skipping left with a single sample is dropped too (and counted): BatchNorm cannot train on one.
    """
    kept = [b for b in batch if b is not None]
    if not kept or (len(kept) == 1 < len(batch)):
        return None, None, len(batch)
    images, targets = default_collate(kept)
    return images, targets, len(batch) - len(kept)


def check_same_classes(expected: list[str], found: list[str], where: str) -> None:
    """Raise a one-line ValueError naming the classes ``where`` lacks or adds, or a different order."""
    expected, found = [str(c) for c in expected], [str(c) for c in found]
    if expected != found:
        missing, extra = [c for c in expected if c not in found], [c for c in found if c not in expected]
        detail = (f'missing {missing[:8]}' if missing else '') + (', ' if missing and extra else '') + \
            (f'extra {extra[:8]}' if extra else '')
        raise ValueError(f'{where} has other classes than expected: {detail or "same names, other order"}')
