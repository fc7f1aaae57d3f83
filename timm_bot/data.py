"""Datasets: the embedded digits, and class folders or tars read by timm's readers plus the checks timm lacks."""
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
from timm.data.readers.img_extensions import get_img_extensions
from timm.data.readers.reader_image_in_tar import ReaderImageInTar
from torch.utils.data import Dataset, default_collate

__all__ = ['DIGITS', 'BadImageError', 'create_image_dataset', 'collate_skip_bad', 'check_same_classes']

DIGITS = 'digits'  # scikit-learn's 8x8 digits upscaled (bilinear) to 32x32 RGB, split 1438 train / 359 val
_SPLITS = (('train', 'training'), ('val', 'valid', 'validation', 'eval', 'evaluation'), ('test',))


class BadImageError(ValueError):
    """An undecodable image file; ``str(e)``: one line naming the file and the fix (of a worker's traceback, too)."""

    def __init__(self, message: str):
        last = message.rstrip().splitlines()[-1] if message.strip() else message
        super().__init__(last.split('BadImageError: ', 1)[-1])


class CheckedImageDataset(ImageDataset):
    """timm's ``ImageDataset`` raising :class:`BadImageError` (None if ``skip_bad_images``), never the next image."""

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None, skip_bad_images: bool = False):
        super().__init__(str(root), reader='', transform=transform)
        tar = isinstance(self.reader, ReaderImageInTar)
        class_to_idx = self.reader.class_name_to_idx if tar else self.reader.class_to_idx
        self.classes = sorted(class_to_idx, key=class_to_idx.get)
        self.targets = [int(t) for t in self.reader.targets] if tar else [t for _, t in self.reader.samples]
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
        if ImageFile.LOAD_TRUNCATED_IMAGES:
            raise RuntimeError('PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True, so truncated images would be padded '
                               'silently: set it back to False and use skip_bad_images to skip broken files.')
        if self._pid != os.getpid():
            self._reset_tar_handles()
        fileobj, target = self.reader[index]
        try:
            with fileobj:
                img = Image.open(fileobj).convert(self.input_img_mode)  # decodes here, not inside a transform
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
            name = self.filename(index)
            if self.skip_bad_images:
                logging.getLogger(__name__).warning(f'skipping bad image {name!r} (sample {index}): {e}')
                return None
            unknown = isinstance(e, UnidentifiedImageError)
            why = 'not an image file PIL can read' if unknown else f'{type(e).__name__}: {e}'
            raise BadImageError(f"Bad image file '{name}' (sample {index} of {self.root}): {why}. Fix: remove or "
                                'replace it, or set `skip_bad_images: true` to skip and count bad images.') from e
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


def _resolve_split(path: Path, split: str) -> Path:
    """``path/{split}`` or ``path/{split}.tar`` (or a synonym); ``path`` itself when it holds no split at all."""
    name = split.split('[')[0]
    names = (name, *(n for n in next((group for group in _SPLITS if name in group), ()) if n != name))
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
                         skip_bad_images: bool = False) -> CheckedImageDataset | DigitsDataset:
    """``(image, label)`` dataset: ``'digits'``, a folder with ``{split}/`` or ``{split}.tar``, class folders, a tar."""
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
