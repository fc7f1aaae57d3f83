"""Safe, atomic checkpoint I/O for train.py, validate.py, export and the distillation teacher (paper section 5.3).

Not a technique of the paper: the plumbing that lets its 120/200-epoch schedules (sections 2, 5.4) resume, and a
trained model be reused as a teacher (section 5.3), without a crash corrupting the only copy or a downloaded file
executing code.

* :func:`save_checkpoint` writes a temp file in the same directory, fsyncs it, checks that
  ``torch.load(weights_only=True)`` will accept it, then ``os.replace`` s it onto the destination (and fsyncs
  the directory). A crash mid-write leaves any previous file untouched.
* :func:`load_checkpoint` only ever loads with ``weights_only=True``: a pickle that would construct arbitrary
  objects (i.e. run code) raises :class:`UnsafeCheckpointError` and is never unpickled unsafely.
* :func:`create_model_from_checkpoint` rebuilds the timm model a train.py checkpoint describes.

train.py's format is a plain dict (tensors, str, int, float, bool, list, tuple, dict, None only)::

    {'arch': str, 'num_classes': int, 'state_dict': {...}, 'state_dict_ema': {...} (optional),
     'data_config': {'mean': [..], 'std': [..], 'input_size': [3, H, W], 'crop_pct': float, 'interpolation': str},
     'label_names': [str], 'args': dict, 'epoch': int, ...}

A bare state dict (every value a tensor) is accepted wherever only weights are needed (:func:`extract_state_dict`).
"""
from __future__ import annotations

import os
import pickle
import re
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn
from timm.models import clean_state_dict

from . import models as _models  # noqa: F401  (registers the '_bot' architectures)

__all__ = [
    'UnsafeCheckpointError', 'save_checkpoint', 'load_checkpoint', 'create_model_from_checkpoint',
    'extract_state_dict', 'is_bare_state_dict',
]

PathLike = str | os.PathLike
_DATA_CONFIG_KEYS = ('input_size', 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode')


class UnsafeCheckpointError(ValueError):
    """A checkpoint that ``torch.load(weights_only=True)`` refuses: unpickling it could execute arbitrary code."""


def fsync_path(path: Path) -> None:
    """Flush a file's or a directory's entry to disk (best effort: some platforms cannot open directories)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _check_loadable(tmp_path: Path, path: Path) -> None:
    """Refuse to publish a checkpoint that ``weights_only=True`` loading would reject (static scan, no unpickling)."""
    scan = getattr(torch.serialization, 'get_unsafe_globals_in_checkpoint', None)  # torch >= 2.5
    if scan is None:
        return
    unsafe = scan(str(tmp_path))
    if unsafe:
        raise TypeError(
            f'not saving checkpoint {path}: it contains objects that torch.load(weights_only=True) refuses '
            f'({", ".join(sorted(unsafe))}). Store only tensors, str, int, float, bool, None, list, tuple and dict '
            f'(e.g. vars(args) instead of an argparse.Namespace, float(x) instead of a NumPy scalar).')


def save_checkpoint(state: dict[str, Any], path: PathLike) -> None:
    """Atomically write ``state`` to ``path`` with ``torch.save``.

    The data goes to a temp file next to ``path`` (same filesystem), is flushed and fsynced, checked to be loadable
    with ``weights_only=True``, then renamed over ``path`` with ``os.replace`` and the directory fsynced. On any
    error the temp file is removed and an existing ``path`` is left as it was.

    Raises:
        TypeError: ``state`` is not a dict, or holds objects that weights-only loading would refuse.
    """
    if not isinstance(state, Mapping):
        raise TypeError(f'checkpoint state must be a dict, got {type(state).__name__}')
    path = Path(path)
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    tmp_path = directory / f'.{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp'
    # os.open with mode 0o666 lets the umask apply, unlike tempfile.mkstemp (always 0o600).
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, 'O_BINARY', 0), 0o666)
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        _check_loadable(tmp_path, path)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    fsync_path(directory)
    _remove_stale_temps(path)


def _remove_stale_temps(path: Path) -> None:
    """Delete temp files of earlier saves to ``path`` whose writer process is gone (killed mid-write)."""
    for tmp in path.parent.glob(f'.{path.name}.*.tmp'):
        pid = tmp.name[len(path.name) + 2:].split('.')[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except PermissionError:  # alive, owned by someone else
            pass


_ANSI = re.compile(r'\x1b\[[0-9;]*m')


def _refusal_reason(err: pickle.UnpicklingError) -> str:
    msg = _ANSI.sub('', str(err))
    for line in msg.splitlines():
        if 'WeightsUnpickler error:' in line:
            return line.split('WeightsUnpickler error:', 1)[1].strip()
    return msg.splitlines()[-1].strip() if msg else type(err).__name__


def _load_safetensors(path: Path, map_location: Any) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    device = str(map_location) if map_location is not None else 'cpu'
    try:
        return load_file(path, device=device)
    except SafetensorError as e:
        raise ValueError(f'could not read safetensors checkpoint {path} (truncated or corrupt?): {e}') from e


def load_checkpoint(path: PathLike, map_location: Any = 'cpu') -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)`` (``.safetensors`` files via safetensors).

    Raises:
        FileNotFoundError: no file at ``path``.
        UnsafeCheckpointError: the file holds pickled objects beyond tensors and plain containers, which weights-only
            loading refuses because constructing them could run arbitrary code. It is never unpickled unsafely.
        ValueError: the file is truncated, corrupt or not a torch checkpoint, or does not hold a dict.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f'checkpoint not found: {path}')
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint {path} is a directory; for a timm/Hugging Face model folder use "
                                f"'local-dir:{path}' as a model name")
    if path.suffix == '.safetensors':
        ckpt = _load_safetensors(path, map_location)
    else:
        try:
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
        except PermissionError:
            raise
        except pickle.UnpicklingError as e:
            if 'weights only load failed' not in str(e).lower():
                raise ValueError(f'could not read checkpoint {path} (truncated or corrupt?): {e}') from e
            raise UnsafeCheckpointError(
                f'refused to load checkpoint {path}: it contains pickled objects that torch.load(weights_only=True) '
                f'will not construct, because unpickling them could execute arbitrary code '
                f'({_refusal_reason(e)}). Only load it without weights_only if you fully trust its source.') from None
        except (RuntimeError, EOFError, KeyError, IndexError, ValueError, OSError) as e:
            raise ValueError(
                f'could not read checkpoint {path}: not a readable torch checkpoint (truncated or corrupt file?): '
                f'{type(e).__name__}: {e}') from e
    if not isinstance(ckpt, dict):
        raise ValueError(f'checkpoint {path} holds a {type(ckpt).__name__}, expected a dict')
    return ckpt


def is_bare_state_dict(ckpt: Mapping[str, Any]) -> bool:
    """True for a plain ``model.state_dict()`` (every value a tensor) rather than a train.py checkpoint."""
    return len(ckpt) > 0 and all(isinstance(v, torch.Tensor) for v in ckpt.values())


def extract_state_dict(ckpt: Mapping[str, Any], use_ema: bool = False) -> dict[str, torch.Tensor]:
    """The model weights of a train.py checkpoint (``'state_dict'`` / ``'state_dict_ema'``) or of a bare state dict,
    with DDP / torch.compile prefixes (``module.``, ``_orig_mod.``) stripped by timm's ``clean_state_dict``."""
    if is_bare_state_dict(ckpt):
        if use_ema:
            raise ValueError('use_ema=True but the checkpoint is a bare state dict without EMA weights')
        return clean_state_dict(dict(ckpt))
    key = 'state_dict_ema' if use_ema else 'state_dict'
    if ckpt.get(key) is None:
        hint = ' (it was trained without model EMA; load it with use_ema=False)' if use_ema else ''
        raise ValueError(f"checkpoint has no {key!r}{hint}; its keys are {sorted(ckpt)}")
    return clean_state_dict(dict(ckpt[key]))


def _describe_mismatch(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> str:
    """Missing / unexpected keys and shape mismatches between a model and a state dict ('' when they match)."""
    model_state = model.state_dict()
    missing = [k for k in model_state if k not in state_dict]
    unexpected = [k for k in state_dict if k not in model_state]
    shapes = [
        f'{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}'
        for k, v in model_state.items() if k in state_dict and state_dict[k].shape != v.shape
    ]
    parts = []
    for label, items in (('missing keys', missing), ('unexpected keys', unexpected), ('shape mismatches', shapes)):
        if items:
            more = f' ... ({len(items)} in all)' if len(items) > 5 else ''
            parts.append(f'{label}: {", ".join(items[:5])}{more}')
    return '; '.join(parts)


def _apply_data_config(model: nn.Module, data_config: Mapping[str, Any]) -> None:
    """Make ``timm.data.resolve_data_config(model=model)`` return the preprocessing the checkpoint was trained with."""
    overrides = {
        k: tuple(v) if isinstance(v, (list, tuple)) else v
        for k, v in data_config.items() if k in _DATA_CONFIG_KEYS and v is not None
    }
    cfg = dict(getattr(model, 'pretrained_cfg', None) or {}, **overrides)
    model.pretrained_cfg = cfg
    model.default_cfg = cfg  # timm's backwards-compatible alias


def create_model_from_checkpoint(
        path: PathLike,
        use_ema: bool = False,
        **model_kwargs: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a train.py checkpoint: ``timm.create_model(ckpt['arch'], num_classes=...)`` + weights.

    Loads ``'state_dict_ema'`` if ``use_ema`` else ``'state_dict'`` strictly (``module.`` prefix stripped). The
    model's ``pretrained_cfg`` gets the checkpoint's ``data_config`` so ``timm.data.resolve_data_config(model=m)``
    matches training.

    Returns:
        ``(model in eval mode, checkpoint dict)``.

    Raises:
        ValueError: no ``arch``/``num_classes`` (e.g. a bare state dict), no EMA weights when ``use_ema``, or weights
            that do not fit the model (message names the checkpoint's arch and num_classes and what differs).
    """
    ckpt = load_checkpoint(path)
    arch, num_classes = ckpt.get('arch'), ckpt.get('num_classes')
    if not isinstance(arch, str) or not isinstance(num_classes, int):
        kind = 'a bare state dict' if is_bare_state_dict(ckpt) else f'a dict with keys {sorted(ckpt)}'
        raise ValueError(
            f"checkpoint {path} is {kind}, not a train.py checkpoint with 'arch' (str) and 'num_classes' (int); "
            f"create the model yourself and load extract_state_dict(load_checkpoint(path)) into it")
    state_dict = extract_state_dict(ckpt, use_ema=use_ema)
    model = timm.create_model(arch, num_classes=num_classes, pretrained=False, **model_kwargs)
    mismatch = _describe_mismatch(model, state_dict)
    if mismatch:
        extra = f' and {model_kwargs}' if model_kwargs else ''
        raise ValueError(
            f'checkpoint {path} (arch={arch!r}, num_classes={num_classes}) does not fit the model created from '
            f'it{extra}: {mismatch}')
    model.load_state_dict(state_dict, strict=True)
    if isinstance(ckpt.get('data_config'), Mapping):
        _apply_data_config(model, ckpt['data_config'])
    return model.eval(), ckpt
