"""Checkpoints and model sources: atomic writes, ``torch.load(weights_only=True)`` only, timm / Hub / export models."""
from __future__ import annotations

import contextlib
import difflib
import json
import logging
import os
import pickle
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn
from timm.models import clean_state_dict, get_pretrained_cfg_value

__all__ = ['UnsafeCheckpointError', 'save_checkpoint', 'link_checkpoint', 'load_checkpoint',
           'create_model_from_checkpoint', 'fsync_path', 'resolve_architecture', 'create_pretrained_model',
           'resolve_checkpoint', 'check_hub_files']
_logger = logging.getLogger(__name__)
DATA_KEYS = ('input_size', 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode')  # a checkpoint's data_config


class UnsafeCheckpointError(ValueError):
    """A file ``torch.load(weights_only=True)`` refuses: unpickling it could execute arbitrary code."""


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file or a directory entry to disk (best effort)."""
    fd = os.open(path, os.O_RDONLY)
    with contextlib.suppress(OSError):  # some file systems refuse to fsync a directory
        os.fsync(fd)
    os.close(fd)


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Temp file beside ``path``, fsync, weights-only check, ``os.replace``: ``path`` is never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f'.{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp'
    try:
        with open(tmp, 'xb') as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        if unsafe := torch.serialization.get_unsafe_globals_in_checkpoint(str(tmp)):
            raise TypeError(f'not saving {path}: torch.load(weights_only=True) would refuse {sorted(unsafe)}')
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)
    for stale in path.parent.glob(f'.{path.name}.*.tmp'):
        pid = stale.name[len(path.name) + 2:].split('.')[0]
        if pid.isdigit() and int(pid) != os.getpid() and not Path(f'/proc/{pid}').exists():
            stale.unlink(missing_ok=True)


def link_checkpoint(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """``path`` atomically replaced by a hard link to the saved ``source`` (a copy where links are not supported):
    the same file under a second name (``model_best.pth.tar``) without serializing it again."""
    source, path = Path(source), Path(path)
    tmp = path.parent / f'.{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp'
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint dict (CPU, ``weights_only=True``); a one-line error for anything else, never unpickling code."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f'checkpoint not found: {path}')
    if path.is_dir():
        raise ValueError(f'checkpoint {path} is a folder: give a checkpoint file (e.g. {path}/last.pth.tar)')
    with open(path, 'rb') as f:
        if not f.read(4).startswith((b'PK\x03\x04', b'\x80')):  # a zip (torch.save) or a legacy pickle
            raise ValueError(f'{path} is not a checkpoint (a text or other file; expected e.g. last.pth.tar)')
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # a refused pickle, a truncated zip, garbage bytes, ...
        if isinstance(e, pickle.UnpicklingError) and 'weights only load failed' in str(e).lower():
            raise UnsafeCheckpointError(f'refused to load {path}: it holds pickled objects beyond tensors and plain '
                                        'containers, and unpickling them could execute arbitrary code') from None
        raise ValueError(f'could not read checkpoint {path} ({type(e).__name__}; truncated or not a checkpoint '
                         'file?)') from None
    if not isinstance(ckpt, dict):
        raise ValueError(f'checkpoint {path} holds a {type(ckpt).__name__}, expected a dict')
    return ckpt


def resolve_architecture(model_name: str) -> tuple[str, dict[str, Any], str | None]:
    """``(architecture, model_args, source)`` of a timm name or an ``hf-hub:``/``local-dir:`` export (checked)."""
    if not model_name.startswith(('hf-hub:', 'local-dir:')):
        if not timm.is_model(model_name):
            near = difflib.get_close_matches(model_name, timm.list_models(), n=3)
            raise ValueError(f'model {model_name!r} is not a timm model' + (f'; did you mean {", ".join(near)}?'
                                                                             if near else ' (see timm.list_models())'))
        return model_name, {}, None
    if model_name.startswith('local-dir:'):
        config_file = Path(model_name[len('local-dir:'):]) / 'config.json'
        if not config_file.is_file():
            raise FileNotFoundError(f'model {model_name}: no config.json in that folder (is it a timm export?)')
    else:
        from huggingface_hub import hf_hub_download
        repo_id, _, revision = model_name[len('hf-hub:'):].partition('@')
        check_hub_files(repo_id, revision or None, ('config.json',), f'model {model_name}', 'model')
        config_file = Path(hf_hub_download(repo_id, 'config.json', revision=revision or None))
    config = json.loads(config_file.read_text())
    model_args = {k: v for k, v in (config.get('model_args') or {}).items() if k != 'num_classes'}  # a new head
    return config['architecture'], model_args, model_name


def check_hub_files(repo_id: str, revision: str | None, filenames: Sequence[str], what: str, key: str) -> None:
    """One line at once when none of ``filenames`` of Hub repo ``repo_id`` is cached and the Hub cannot be reached
    (huggingface_hub would retry each file for ~25 s first); ``key``: the hparam whose fix to name."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
    from huggingface_hub.errors import HfHubHTTPError
    if any(isinstance(try_to_load_from_cache(repo_id, f, revision=revision), str) for f in filenames):
        return
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, filenames[0], revision=revision))  # one request, no retries
    except HfHubHTTPError:
        return  # the Hub answered: the download itself reports anything else
    except Exception as e:  # no network, DNS, proxy, HF_HUB_OFFLINE=1
        raise ValueError(f'{what}: {repo_id} is not in the Hugging Face cache and the Hub cannot be reached '
                         f'({type(e).__name__}). Offline: download it once where there is network and set '
                         f'HF_HUB_OFFLINE=1, or use a copy as {key}: local-dir:PATH') from None


def create_pretrained_model(name: str, key: str = 'model', **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, pretrained=True)``; weights that are nowhere, or neither cached nor reachable, fail at
    once in one line naming where and the fix for hparam ``key`` (``'model'`` or ``'teacher'``)."""
    if ':' not in name and not timm.is_model_pretrained(name):
        raise ValueError(f'{key} {name!r} has no pretrained weights anywhere (timm registers none for it): train it '
                         'from scratch (pretrained: false), or pick a model of timm.list_pretrained()')
    hub_id = name[len('hf-hub:'):] if name.startswith('hf-hub:') else \
        None if ':' in name else timm.models.get_pretrained_cfg(name).hf_hub_id
    if hub_id:
        repo_id, _, revision = hub_id.partition('@')
        check_hub_files(repo_id, revision or None, ('model.safetensors', 'pytorch_model.bin'),
                        f'the pretrained weights of {key} {name}', key)
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except (OSError, RuntimeError, ValueError) as e:
        why = f'{type(e).__name__}: {str(e).strip()}'.splitlines()[0]
        raise ValueError(f'pretrained weights of {key} {name} could not be loaded from {hub_id or name} ({why}). '
                         'Offline: put them in the Hugging Face cache and set HF_HUB_OFFLINE=1, or use a copy as '
                         f'{key}: local-dir:PATH') from None


def _classes_from_head(arch: str, state_dict: dict[str, torch.Tensor], path: Path) -> int:
    """The class count of a checkpoint saved without ``num_classes`` (one's own loop): its classifier's outputs."""
    classifier = get_pretrained_cfg_value(arch, 'classifier')  # timm's name of the head, e.g. 'fc' or 'head.fc'
    name = classifier[0] if isinstance(classifier, (tuple, list)) else classifier
    weight = state_dict.get(f'{name}.weight')
    if weight is None:
        raise ValueError(f"{path} has no 'num_classes' and no classifier weights ({name}.weight) to read it from: "
                         "save the checkpoint with 'num_classes'")
    return weight.shape[0]


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A train.py run folder means its ``model_best.pth.tar``; a checkpoint file or an export folder is itself."""
    path = Path(path)
    if path.is_dir() and not (path / 'config.json').is_file():
        if not (path / 'model_best.pth.tar').is_file():
            raise FileNotFoundError(f'{path} is a folder with neither model_best.pth.tar (a train.py run) nor '
                                    'config.json (an export): give a checkpoint file')
        return path / 'model_best.pth.tar'
    return path


def create_model_from_checkpoint(path: str | os.PathLike, use_ema: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """``(eval model, checkpoint dict)`` of a train.py checkpoint, run folder (its model_best.pth.tar) or export;
    pretrained_cfg: its preprocessing."""
    path, given = resolve_checkpoint(path), Path(path)
    if path != given:
        _logger.info(f'{given} is a run folder: using its {path.name}')
    if path.is_dir() and (path / 'config.json').is_file():  # an export, read by timm's own local-dir: loader
        if use_ema:
            raise ValueError(f'{path} is an export folder: it holds one set of weights, drop --use-ema')
        arch, model_args, _ = resolve_architecture(f'local-dir:{path.resolve()}')
        model = timm.create_model(f'local-dir:{path.resolve()}', pretrained=True)
        cfg = model.pretrained_cfg  # config.json's preprocessing and label_names
        return model.eval(), dict(arch=arch, model_args=model_args, num_classes=model.num_classes, data_config={
            k: cfg[k] for k in DATA_KEYS if k in cfg}, label_names=cfg.get('label_names'))
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt.get('arch'), str) or 'state_dict' not in ckpt:
        raise ValueError(f'{path} is not a train.py checkpoint (no arch/state_dict): build the model yourself and load '
                         'the state dict into it')
    key = 'state_dict_ema' if use_ema else 'state_dict'
    if key not in ckpt:
        raise ValueError(f'{path} has no EMA weights (it was trained without model_ema): drop --use-ema')
    state_dict = clean_state_dict(ckpt[key])
    if 'num_classes' not in ckpt:
        ckpt = dict(ckpt, num_classes=_classes_from_head(ckpt['arch'], state_dict, path))
    model = timm.create_model(ckpt['arch'], **dict(ckpt.get('model_args', {}), num_classes=ckpt['num_classes']))
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        raise ValueError(f'{path}: the weights do not fit {ckpt["arch"]}: {str(e).splitlines()[1].strip()}') from None
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in ckpt.get('data_config', {}).items()}
    model.pretrained_cfg = dict(model.pretrained_cfg, **overrides)
    return model.eval(), ckpt
