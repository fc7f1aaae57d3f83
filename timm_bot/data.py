""" Datasets for timm-bot: the embedded digits demo set, class-folder images and tars read by timm's readers.

Three kinds of ``source`` are understood by :func:`create_image_dataset`:

* ``'digits'`` (:data:`DIGITS`): scikit-learn's 8x8 handwritten digits (1797 images, classes ``'0'`` .. ``'9'``),
  upscaled to 32x32 RGB and split 80/20 into ``train`` / ``val`` (stratified, fixed seed). Needs no download, only
  the optional ``demo`` extra (``pip install timm-bot[demo]``).
* a directory: the split is looked up inside it, as timm's ``train.py`` does, but also as a tar file::

      root/train/<class>/<image>.jpg   or   root/train.tar  (members  <class>/<image>.jpg  or  ./<class>/...)
      root/val/<class>/<image>.jpg     or   root/val.tar

  timm's split synonyms are honoured (``training`` for ``train``; ``validation``, ``valid``, ``eval``,
  ``evaluation`` for ``val``). A directory holding no split at all is read as class folders itself, for every split.
* a ``.tar`` file of class folders: read directly; ``split`` is then ignored (the tar *is* the split).

Folders and tars are read by timm's own readers (``ReaderImageFolder`` / ``ReaderImageInTar`` via
``timm.data.readers.create_reader``), so class order and labels are exactly those of ``timm.data.create_dataset``.
On top of timm, this module

* refuses layouts that timm silently misreads: an empty class folder (timm drops it, so the class count shrinks and
  every later label shifts), images outside any class folder, no images at all;
* never substitutes another sample for an unreadable one (timm's ``ImageDataset`` logs a warning and returns the
  *next* image instead): a truncated or non-image file raises :class:`BadImageError` naming the file, or, with
  ``skip_bad_images=True``, the sample comes back as ``None`` and :func:`collate_skip_bad` drops and counts it;
* re-opens tar files in each DataLoader worker process instead of sharing one file offset across forked workers.

Follows timm's ``timm/data/dataset.py``.
"""
import functools
import io
import logging
import os
import posixpath
import re
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils.data as data
from PIL import Image, ImageFile
from timm.data import ImageDataset
from timm.data.readers.img_extensions import get_img_extensions
from timm.data.readers.reader_image_folder import ReaderImageFolder
from timm.data.readers.reader_image_in_tar import ReaderImageInTar
from torch.utils.data import default_collate

__all__ = ['DIGITS', 'BadImageError', 'create_image_dataset', 'collate_skip_bad', 'write_image_folder']

_logger = logging.getLogger(__name__)

DIGITS = 'digits'
"""Name of the embedded demo dataset (scikit-learn's 8x8 handwritten digits upscaled to 32x32 RGB)."""

DIGITS_SIZE = 32
DIGITS_VAL_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
# 8x8 -> 32x32 upscaling. A/B (resnet18d_tiny_bot, 8 epochs, SGD + one-cycle, random 4px-shift crops, val top-1,
# seeds 0-2, same seeds per mode): nearest 97.8%, bilinear 98.3%, bicubic 98.7% (nearest, seeds 3-7: 98.4%).
# Nearest is the weakest; bilinear vs bicubic differ by ~1 val image (359), i.e. seed noise, so bilinear stays: it is
# what every digits result in this repository was produced with, has no overshoot, and its smooth strokes survive
# JPEG re-encoding (write_image_folder) better than nearest's hard 4x4 blocks.
DIGITS_RESAMPLE = Image.Resampling.BILINEAR

_TRAIN_SPLITS = ('train', 'training')
_EVAL_SPLITS = ('val', 'valid', 'validation', 'eval', 'evaluation')
_KNOWN_SPLITS = _TRAIN_SPLITS + _EVAL_SPLITS + ('test',)
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
_FORMAT_EXT = {'JPEG': '.jpg', 'JPG': '.jpg', 'PNG': '.png'}
_LAYOUT_HELP = (
    'Expected one of: a directory with a "{split}" subfolder of class folders (root/{split}/<class>/<image>.jpg), '
    'a "{split}.tar" inside the directory (members <class>/<image>.jpg), a directory of class folders, '
    'a .tar file of class folders, or "digits" for the embedded demo dataset.'
)


class BadImageError(ValueError):
    """An image file that cannot be decoded (truncated JPEG, not an image at all, ...).

    Attributes:
        path: the file name as the dataset reports it (``dataset.filename(index)``: relative to the class-folder root
            or the tar member name), or None when the message does not name one.
        index: the sample index, or None when unknown.

    The constructor also accepts a ready-made message alone (that is how torch's DataLoader re-raises an exception
    from a worker process, and how pickle rebuilds it); ``path`` is then recovered from the message.
    """

    _PATH_RE = re.compile(r"Bad image file '(.+?)'")

    def __init__(
            self,
            path_or_message: str,
            reason: str | None = None,
            root: str | os.PathLike | None = None,
            index: int | None = None,
    ):
        if reason is None:
            msg = path_or_message
            # torch's DataLoader re-raises a worker's exception with the worker's whole traceback as the message
            # ("Caught BadImageError in DataLoader worker process 0.\nOriginal Traceback ...\n...BadImageError: MSG"):
            # keep the original one-line message.
            last = msg.rstrip().splitlines()[-1] if '\n' in msg.rstrip() else ''
            if 'BadImageError: ' in last:
                msg = last.split('BadImageError: ', 1)[1]
            match = self._PATH_RE.search(msg)
            self.path = match.group(1) if match else None
        else:
            self.path = str(path_or_message)
            where = f' (sample {index}' + (f' of {root})' if root else ')') if index is not None else ''
            msg = (
                f"Bad image file '{self.path}'{where}: {reason}. "
                'Fix: remove or replace the file, or set `skip_bad_images: true` in the hparams to skip '
                'unreadable images (they are then dropped from their batch and counted).'
            )
        self.index = index
        super().__init__(msg)


def _decode_reason(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    if 'truncated' in text.lower():
        return f'truncated or incomplete image data ({text})'
    if 'cannot identify image file' in text:
        return 'not an image file PIL can read (wrong content for its extension, or corrupt header)'
    return f'cannot decode image ({type(err).__name__}: {text})'


def _check_truncated_images_flag() -> None:
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            'PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True, so truncated images would be silently padded with grey '
            'instead of being reported. Set it back to False (something in this process enabled it) and use '
            '`skip_bad_images: true` to skip broken files instead.')


class CheckedImageDataset(ImageDataset):
    """timm ``ImageDataset`` over a class-folder directory or a tar, reporting bad images instead of hiding them.

    timm's ``ImageDataset.__getitem__`` replaces an unreadable sample by the next one (with a log warning); here a
    sample is decoded fully (``Image.load()`` + ``convert``) and, if it cannot be, ``__getitem__`` raises
    :class:`BadImageError` (or returns ``None`` with ``skip_bad_images=True``). Build it with
    :func:`create_image_dataset`, which validates the layout first.

    Attributes:
        classes: class names, index = label (timm's natural sort of the folder names).
        num_classes: ``len(classes)``.
        skip_bad_images: return None for unreadable samples instead of raising.
    """

    def __init__(
            self,
            root: str | os.PathLike,
            transform: Callable | None = None,
            skip_bad_images: bool = False,
            input_img_mode: str = 'RGB',
    ):
        super().__init__(str(root), reader='', input_img_mode=input_img_mode, transform=transform)
        reader = self.reader
        if isinstance(reader, ReaderImageInTar):
            class_to_idx = reader.class_name_to_idx
        elif isinstance(reader, ReaderImageFolder):
            class_to_idx = reader.class_to_idx
        else:  # pragma: no cover - create_reader('') only builds the two above
            raise TypeError(f'Unsupported timm reader {type(reader).__name__} for {root}.')
        self.root = str(root)
        self.classes: list[str] = [c for c, _ in sorted(class_to_idx.items(), key=lambda kv: kv[1])]
        self.num_classes = len(self.classes)
        self.skip_bad_images = skip_bad_images
        self._pid = os.getpid()

    def _reset_tar_handles(self) -> None:
        """Forget open tar handles (they are re-opened lazily): after a fork, or before pickling."""
        reader = self.reader
        if not isinstance(reader, ReaderImageInTar):
            return
        states = [reader.tar_state] if reader.root_is_tar else list(reader.tar_state.values())
        while states:
            state = states.pop()
            state.tf = None  # dropped, not shared: the next read opens this process's own handle (own file offset)
            states.extend(state.children.values())

    def __getstate__(self) -> dict[str, Any]:
        self._reset_tar_handles()
        return self.__dict__.copy()

    def _target(self, index: int) -> int:
        """Label of sample ``index`` without reading the image."""
        reader = self.reader
        if isinstance(reader, ReaderImageInTar):
            return int(reader.targets[index])
        return int(reader.samples[index][1])

    def __getitem__(self, index: int) -> tuple[Any, int] | None:
        _check_truncated_images_flag()
        if self._pid != os.getpid():  # forked DataLoader worker: do not share the parent's tar file offset
            self._reset_tar_handles()
            self._pid = os.getpid()
        fileobj, target, *_ = self.reader[index]
        try:
            with fileobj:
                img = Image.open(fileobj)
                img.load()  # decode now, inside the try: a truncated file fails here, not later in a transform
                if self.input_img_mode:
                    img = img.convert(self.input_img_mode)
        except _DECODE_ERRORS as e:
            if self.skip_bad_images:
                _logger.warning(f'Skipping bad image {self.filename(index)!r} (sample {index}): {e}')
                return None
            raise BadImageError(self.filename(index), _decode_reason(e), root=self.root, index=index) from e

        if self.transform is not None:
            img = self.transform(img)
        if target is None:
            target = -1
        elif self.target_transform is not None:
            target = self.target_transform(target)
        return img, int(target)


class DigitsDataset(data.Dataset):
    """scikit-learn's 8x8 handwritten digits as 32x32 RGB PIL images, one deterministic split.

    Pixel values 0..16 are scaled to 0..255 (white strokes on black), upscaled 8x8 -> 32x32 with bilinear
    interpolation (:data:`DIGITS_RESAMPLE`) and replicated to 3 channels. The split is stratified: per class, a fixed
    permutation (``numpy.random.RandomState(DIGITS_SPLIT_SEED)``, stable across numpy versions) sends
    ``round(0.2 * n_class)`` images to ``val`` and the rest to ``train``: 1438 train / 359 val images.

    Attributes:
        classes: ``['0', ..., '9']``.
        num_classes: 10.
        indices: index of each sample in ``sklearn.datasets.load_digits()``.
        targets: label of each sample.
    """

    def __init__(self, split: str = 'train', transform: Callable | None = None, target_transform=None):
        split = split.split('[')[0]
        if split in _TRAIN_SPLITS:
            split = 'train'
        elif split in _EVAL_SPLITS:
            split = 'val'
        else:
            raise ValueError(f'Unknown split {split!r} for the digits dataset: use "train" or "val".')
        images, labels, train_idx, val_idx = _load_digits()
        self.split = split
        self.indices = train_idx if split == 'train' else val_idx
        self.images = images[self.indices]
        self.targets = labels[self.indices]
        self.classes = [str(i) for i in range(10)]
        self.num_classes = len(self.classes)
        self.transform = transform
        self.target_transform = target_transform
        self.skip_bad_images = False
        self.root = DIGITS

    def _target(self, index: int) -> int:
        return int(self.targets[index])

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = Image.fromarray(self.images[index])
        target = int(self.targets[index])
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def filename(self, index: int, basename: bool = False, absolute: bool = False) -> str:
        """Virtual file name ``<class>/<sklearn index>.png`` (there is no file; ``absolute`` is ignored)."""
        name = f'{self.targets[index]}/{self.indices[index]:04d}.png'
        return posixpath.basename(name) if basename else name

    def filenames(self, basename: bool = False, absolute: bool = False) -> list[str]:
        return [self.filename(i, basename, absolute) for i in range(len(self))]


@functools.lru_cache(maxsize=1)
def _load_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(images uint8 [N, 32, 32, 3], labels int64 [N], train indices, val indices), computed once per process."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError(
            'The embedded "digits" dataset needs scikit-learn, an optional dependency: '
            'pip install timm-bot[demo]   (or: pip install scikit-learn). '
            'Alternatively point the data source at a folder or .tar of class-folder images.') from e
    bunch = load_digits()
    raw = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)  # [N, 8, 8], 0..16 -> 0..255
    labels = bunch.target.astype(np.int64)
    images = np.empty((len(raw), DIGITS_SIZE, DIGITS_SIZE, 3), dtype=np.uint8)
    for i, x in enumerate(raw):
        up = Image.fromarray(x).resize((DIGITS_SIZE, DIGITS_SIZE), DIGITS_RESAMPLE)
        images[i] = np.asarray(up.convert('RGB'))
    rng = np.random.RandomState(DIGITS_SPLIT_SEED)
    train_idx, val_idx = [], []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_val = int(round(DIGITS_VAL_FRACTION * len(idx)))
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    train_idx = np.sort(np.concatenate(train_idx))
    val_idx = np.sort(np.concatenate(val_idx))
    for a in (images, labels, train_idx, val_idx):
        a.flags.writeable = False
    return images, labels, train_idx, val_idx


def _resolve_split(path: Path, split: str) -> Path:
    """Folder or tar holding ``split`` for a directory ``path`` (see module docstring)."""
    split_name = split.split('[')[0]
    names = [split_name]
    if split_name in _TRAIN_SPLITS:
        names += [s for s in _TRAIN_SPLITS if s != split_name]
    elif split_name in _EVAL_SPLITS:
        names += [s for s in _EVAL_SPLITS if s != split_name]
    for name in names:
        if (path / name).is_dir():
            return path / name
        if (path / f'{name}.tar').is_file():
            return path / f'{name}.tar'
    present = sorted(
        p.name + ('/' if p.is_dir() else '') for p in path.iterdir()
        if (p.is_dir() and p.name in _KNOWN_SPLITS) or (p.is_file() and p.suffix == '.tar' and p.stem in _KNOWN_SPLITS)
    )
    if present:
        raise FileNotFoundError(
            f'No "{split_name}" split in {path}: looked for ' + ', '.join(f'{n}/ and {n}.tar' for n in names)
            + f', found only {", ".join(present)}. Add the split (same class folders as the others), '
            'or pass the split folder/tar itself as the data source.')
    _logger.warning(
        f'{path} has no "{split_name}" subfolder or "{split_name}.tar": reading its class folders directly, '
        'so every split of this source is the same data.')
    return path


def _hidden(rel: str) -> bool:
    return any(part.startswith('.') for part in Path(rel).parts)


def _no_images_error(where: Path) -> ValueError:
    exts = ', '.join(get_img_extensions())
    return ValueError(
        f'No images found in {where} (timm reads files with extensions {exts}, grouped in one folder per class: '
        f'<class>/<image>.jpg). Check the path and that the files were extracted/copied.')


def _empty_classes_error(where: Path, empty: list[str]) -> ValueError:
    exts = ', '.join(get_img_extensions())
    shown = ', '.join(repr(e) for e in empty[:10]) + (f' and {len(empty) - 10} more' if len(empty) > 10 else '')
    return ValueError(
        f'Empty class folder(s) in {where}: {shown} (no {exts} images inside). timm would silently drop them, '
        'changing the number of classes and shifting every later label. Fix: add images to the folder, or delete it '
        'if the class is not wanted (in every split, so that train and val keep the same classes).')


def _root_images_error(where: Path, files: list[str]) -> ValueError:
    return ValueError(
        f'{len(files)} image(s) in {where} are not inside a class folder (e.g. {files[0]!r}); labels come from the '
        'folder that holds each image. Fix: move them into <class>/ subfolders, or point the source at the folder '
        'that contains the class folders.')


def _check_folder(root: Path) -> None:
    """Validate a class-folder tree the way timm's ReaderImageFolder will read it (os.walk, leaf folder = class)."""
    exts = get_img_extensions(as_set=True)
    subtree_images: dict[str, int] = {}
    root_images: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, topdown=False, followlinks=True):
        images = [f for f in filenames if os.path.splitext(f)[1].lower() in exts]
        if dirpath == str(root):
            root_images = images
        subtree_images[dirpath] = len(images) + sum(subtree_images.get(os.path.join(dirpath, d), 0) for d in dirnames)
    if not subtree_images.get(str(root), 0):
        raise _no_images_error(root)
    if root_images:
        raise _root_images_error(root, sorted(root_images))
    empty = sorted(
        rel for rel in (os.path.relpath(d, root) for d, n in subtree_images.items() if n == 0 and d != str(root))
        if not _hidden(rel)
    )
    if empty:
        raise _empty_classes_error(root, empty)


def _check_tar(path: Path) -> None:
    """Validate a tar of class folders the way timm's ReaderImageInTar will read it (leaf folder = class).

    Empty class folders are found from the tar's directory members (and folders holding only non-image files);
    a tar written without directory members cannot show an empty folder, and then only the class count tells.
    """
    exts = get_img_extensions(as_set=True)
    dirs: set[str] = set()
    image_dirs: set[str] = set()
    root_images: list[str] = []
    num_images = 0
    nested = False
    with tarfile.open(path, mode='r|') as tf:  # streaming header scan, as timm does
        for ti in tf:
            name = posixpath.normpath(ti.name)
            name = '' if name in ('.', '/') else name.lstrip('/')
            if not name:
                continue
            if ti.isdir():
                dirs.add(name)
                continue
            if not ti.isfile():
                continue
            parent = posixpath.dirname(name)
            ancestors = []
            while parent:
                ancestors.append(parent)
                parent = posixpath.dirname(parent)
            dirs.update(ancestors)
            ext = posixpath.splitext(name)[1].lower()
            if ext == '.tar':
                nested = True
                image_dirs.update(ancestors)
            elif ext in exts:
                num_images += 1
                image_dirs.update(ancestors)
                if not ancestors:
                    root_images.append(ti.name)
    if nested:
        return  # tar of tars: labels come from the inner tar names, leave the layout to timm
    if not num_images:
        raise _no_images_error(path)
    if root_images:
        raise _root_images_error(path, sorted(root_images))
    empty = sorted(d for d in dirs - image_dirs if not _hidden(d))
    if empty:
        raise _empty_classes_error(path, empty)


def create_image_dataset(
        source: str | os.PathLike,
        split: str,
        transform: Callable | None = None,
        skip_bad_images: bool = False,
) -> CheckedImageDataset | DigitsDataset:
    """Create the dataset for one split of ``source``.

    Args:
        source: ``'digits'`` for the embedded demo dataset; a directory containing ``{split}/`` (class folders) or
            ``{split}.tar``, or holding class folders itself (then every split reads the same data, with a warning);
            or a ``.tar`` file of class folders (``split`` is then ignored). The string ``'digits'`` always means the
            embedded dataset; write ``./digits`` for a folder of that name.
        split: ``'train'`` or ``'val'`` (timm's synonyms ``training``, ``validation``, ``valid``, ``eval``,
            ``evaluation`` are looked for too), or any other split folder/tar name.
        transform: applied to the RGB PIL image (e.g. from ``timm.data.create_transform``); settable later via
            ``dataset.transform`` as ``timm.data.create_loader`` does.
        skip_bad_images: return None for a sample whose file cannot be decoded (use :func:`collate_skip_bad`)
            instead of raising :class:`BadImageError`.

    Returns:
        A map-style dataset with ``classes``, ``num_classes``, ``len()``, ``[i] -> (image, label)`` (or None for a
        skipped bad image) and ``filename(i)``.

    Raises:
        FileNotFoundError: the path, or the split inside it, does not exist.
        ValueError: no images, an empty class folder, or images outside class folders.
        ImportError: ``'digits'`` without scikit-learn installed.
    """
    if isinstance(source, str) and source == DIGITS:
        return DigitsDataset(split, transform=transform)
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f'Data source {str(source)!r} does not exist. ' + _LAYOUT_HELP.format(split=split))
    if path.is_dir():
        path = _resolve_split(path, split)
    elif path.suffix.lower() == '.tar':
        _logger.info(f'Reading {path} directly: split "{split}" is ignored for a .tar source.')
    else:
        raise ValueError(f'Data source {str(path)!r} is a file but not a .tar. ' + _LAYOUT_HELP.format(split=split))
    if path.is_dir():
        _check_folder(path)
    else:
        _check_tar(path)
    return CheckedImageDataset(path, transform=transform, skip_bad_images=skip_bad_images)


def collate_skip_bad(
        batch: list[tuple[Any, int] | None]) -> tuple[torch.Tensor | None, torch.Tensor | None, int]:
    """``collate_fn`` for datasets created with ``skip_bad_images=True``.

    Drops the ``None`` samples (unreadable images), default-collates the rest and returns
    ``(images, targets, num_skipped)``; the count travels with the batch, so it works with DataLoader worker
    processes. When every sample of the batch was bad, images and targets are None (the count is still exact).
    """
    kept = [b for b in batch if b is not None]
    num_skipped = len(batch) - len(kept)
    if not kept:
        return None, None, num_skipped
    images, targets = default_collate(kept)
    return images, targets, num_skipped


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == 'JPEG':
        img.convert('RGB').save(buf, format='JPEG', quality=95)
    else:
        img.save(buf, format=fmt)
    return buf.getvalue()


def write_image_folder(
        root: str | os.PathLike,
        source: str = DIGITS,
        split: str = 'train',
        limit_per_class: int | None = None,
        as_tar: bool = False,
        fmt: str = 'JPEG',
) -> Path:
    """Write one split of ``source`` as real image files in the class-folder layout timm reads.

    Folder: ``root/{split}/<class>/<i>.jpg``; tar: ``root/{split}.tar`` with members ``<class>/`` (directory) and
    ``<class>/<i>.jpg`` (no ``./`` prefix; timm's tar reader takes the label from the member's folder either way, and
    ``filename(i)`` is then the same for the folder and the tar). ``<i>`` counts from 0 within each class, zero-padded
    to 4 digits. JPEGs are written at quality 95, so pixels differ slightly from the source; use ``fmt='PNG'`` for an
    exact copy. The tar is byte-for-byte reproducible (fixed mtime/owner, sorted members).

    Args:
        root: parent folder, created if needed.
        source: any :func:`create_image_dataset` source, by default the embedded digits.
        split: the split to read from ``source`` and the name written under ``root``.
        limit_per_class: keep only the first N images of each class (in dataset order).
        as_tar: write ``{split}.tar`` instead of a folder.
        fmt: ``'JPEG'`` (``.jpg``) or ``'PNG'`` (``.png``).

    Returns:
        The created folder or tar file.
    """
    fmt = fmt.upper()
    if fmt not in _FORMAT_EXT:
        raise ValueError(f'Unsupported image format {fmt!r}: use "JPEG" or "PNG" (the extensions timm reads).')
    fmt = 'JPEG' if fmt == 'JPG' else fmt
    if limit_per_class is not None and limit_per_class < 1:
        raise ValueError(f'limit_per_class must be a positive int or None, got {limit_per_class}.')
    ext = _FORMAT_EXT[fmt]
    ds = create_image_dataset(source, split)
    root = Path(root)
    out = root / (f'{split}.tar' if as_tar else split)
    if out.exists() and (out.is_file() or any(out.iterdir())):
        raise FileExistsError(f'{out} already exists: remove it first, or write to another root.')
    counts = [0] * ds.num_classes
    members: list[tuple[str, bytes]] = []
    for i in range(len(ds)):
        target = ds._target(i)
        if limit_per_class is not None and counts[target] >= limit_per_class:
            continue
        img, _ = ds[i]
        members.append((f'{ds.classes[target]}/{counts[target]:04d}{ext}', _encode(img, fmt)))
        counts[target] += 1

    root.mkdir(parents=True, exist_ok=True)
    if not as_tar:
        for cls in ds.classes:
            (out / cls).mkdir(parents=True, exist_ok=True)
        for name, payload in members:
            (out / name).write_bytes(payload)
        return out

    tmp = out.with_name(out.name + '.partial')
    with tarfile.open(tmp, 'w', format=tarfile.USTAR_FORMAT) as tf:
        entries = [(f'{cls}/', None) for cls in ds.classes] + members
        for name, payload in sorted(entries, key=lambda e: e[0]):
            ti = tarfile.TarInfo(name.rstrip('/'))
            ti.mtime = 0
            if payload is None:
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(ti)
            else:
                ti.size, ti.mode = len(payload), 0o644
                tf.addfile(ti, io.BytesIO(payload))
    os.replace(tmp, out)
    return out
