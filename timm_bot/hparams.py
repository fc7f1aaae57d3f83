"""Training hyper-parameters: one typed schema, read from a YAML file plus ``--key value`` command-line overrides.

Key names follow timm's ``train.py`` arguments where one exists (``model``, ``lr``, ``lr_base``, ``lr_base_size``,
``epochs``, ``batch_size``, ``opt``, ``sched``, ``warmup_epochs``, ``decay_milestones``, ``smoothing``, ``mixup``,
``amp``, ``amp_dtype``, ``grad_accum_steps``, ``model_ema``, ...). Every mistake -- an unknown key (with the nearest
valid one), a wrong type, an impossible value -- raises :class:`HparamsError`, which the scripts turn into a one-line
message and exit code 2 before anything is written.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .models import PAPER_MEAN, PAPER_STD

__all__ = ['TrainHparams', 'HparamsError', 'load_hparams', 'parse_overrides']


class HparamsError(ValueError):
    """A bad hparams file or override. ``str()`` is a one-line message naming the key and what is valid."""


@dataclass
class TrainHparams:
    """Every switch of the paper's recipes. Defaults are the paper's ResNet-50-D recipe where it has one."""
    # Model (section 4). weight_init 'xavier' is section 2; zero_init_last is zero-gamma (3.1).
    model: str = 'resnet50d_bot'
    pretrained: bool = False
    weight_init: str = 'xavier'
    zero_init_last: bool = True
    drop_rate: float = 0.0
    # Data. data_dir: 'digits' (embedded, no download), an ImageFolder root with train/ and val/, or .tar files.
    data_dir: str = 'digits'
    train_split: str = 'train'
    val_split: str = 'val'
    skip_bad_images: bool = False
    workers: int = 2
    pin_memory: bool = False
    # Augmentation (section 2): random-resized crop, flip, HSV scaling, PCA lighting, paper mean/std.
    img_size: int = 224
    crop_pct: float = 0.875
    interpolation: str = 'bilinear'
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    hflip: float = 0.5
    color_jitter: float = 0.4
    hue_jitter: bool = True
    pca_lighting: float = 0.1
    mean: list[float] = field(default_factory=lambda: list(PAPER_MEAN))
    std: list[float] = field(default_factory=lambda: list(PAPER_STD))
    # Optimization (sections 2 and 3.1). lr None -> linear scaling: lr_base * global batch / lr_base_size.
    epochs: int = 120
    batch_size: int = 256
    grad_accum_steps: int = 1
    opt: str = 'nag'
    lr: float | None = None
    lr_base: float = 0.1
    lr_base_size: int = 256
    momentum: float = 0.9
    weight_decay: float = 1e-4
    no_bias_decay: bool = True
    # Schedule: per-iteration warmup (3.1), cosine (5.1) or step (section 2).
    sched: str = 'cosine'
    warmup_epochs: float = 5.0
    decay_milestones: list[int] = field(default_factory=lambda: [30, 60, 90])
    decay_rate: float = 0.1
    # Refinements (section 5): label smoothing, mixup, distillation.
    smoothing: float = 0.1
    smoothing_mode: str = 'paper'
    mixup: float = 0.0
    teacher: str | None = None
    temperature: float = 20.0
    # Efficiency (3.2) and timm extras.
    amp: bool = False
    amp_dtype: str = 'float16'
    channels_last: bool = False
    torchcompile: bool = False
    model_ema: bool = False
    model_ema_decay: float = 0.9998
    # Run control.
    seed: int = 42
    deterministic: bool = False
    device: str = 'auto'
    output: str = 'output/train'
    experiment: str = ''
    checkpoint_interval: int = 0
    log_interval: int = 50
    dist_timeout: float = 300.0
    plots: bool = True
    export_dir: str | None = None
    push_to_hub: str | None = None
    export_ema: bool = False

    def validate(self) -> TrainHparams:
        """Refuse impossible values with the key and what is valid."""
        _check(self.model, 'model', bool(self.model), 'a timm model name, e.g. resnet50d_bot')
        _choice(self, 'weight_init', ('xavier', 'timm'))
        _choice(self, 'opt', None)
        _choice(self, 'sched', ('cosine', 'step'))
        _choice(self, 'smoothing_mode', ('paper', 'uniform'))
        _choice(self, 'amp_dtype', ('float16', 'bfloat16'))
        _choice(self, 'interpolation', ('bilinear', 'bicubic', 'nearest', 'random'))
        for key in ('epochs', 'batch_size', 'grad_accum_steps', 'img_size', 'lr_base_size'):
            _check(getattr(self, key), key, getattr(self, key) >= 1, 'an integer >= 1')
        for key in ('workers', 'checkpoint_interval', 'log_interval'):
            _check(getattr(self, key), key, getattr(self, key) >= 0, 'an integer >= 0')
        if self.lr is not None:
            _check(self.lr, 'lr', self.lr > 0, 'a positive number, or null for linear scaling (section 3.1)')
        _check(self.lr_base, 'lr_base', self.lr_base > 0, 'a positive number')
        _check(self.smoothing, 'smoothing', 0 <= self.smoothing < 1, 'a number in [0, 1)')
        _check(self.mixup, 'mixup', self.mixup >= 0, 'a Beta(alpha, alpha) alpha >= 0 (0 disables mixup)')
        _check(self.temperature, 'temperature', self.temperature > 0, 'a positive number')
        _check(self.weight_decay, 'weight_decay', self.weight_decay >= 0, 'a number >= 0')
        _check(self.momentum, 'momentum', 0 <= self.momentum < 1, 'a number in [0, 1)')
        _check(self.warmup_epochs, 'warmup_epochs', 0 <= self.warmup_epochs < self.epochs, f'in [0, {self.epochs})')
        _check(self.decay_rate, 'decay_rate', 0 < self.decay_rate <= 1, 'a number in (0, 1]')
        _check(self.crop_pct, 'crop_pct', 0 < self.crop_pct <= 1, 'a number in (0, 1]')
        _check(self.hflip, 'hflip', 0 <= self.hflip <= 1, 'a probability in [0, 1]')
        _check(self.color_jitter, 'color_jitter', 0 <= self.color_jitter < 1, 'a number in [0, 1)')
        _check(self.pca_lighting, 'pca_lighting', self.pca_lighting >= 0, 'a number >= 0')
        _check(self.model_ema_decay, 'model_ema_decay', 0 < self.model_ema_decay < 1, 'a number in (0, 1)')
        _check(self.scale, 'scale', len(self.scale) == 2 and 0 < self.scale[0] <= self.scale[1] <= 1,
               '[min, max] area fractions with 0 < min <= max <= 1')
        _check(self.ratio, 'ratio', len(self.ratio) == 2 and 0 < self.ratio[0] <= self.ratio[1],
               '[min, max] aspect ratios with 0 < min <= max')
        _check(self.mean, 'mean', len(self.mean) == 3, 'three numbers (RGB)')
        _check(self.std, 'std', len(self.std) == 3 and min(self.std) > 0, 'three positive numbers (RGB)')
        _check(self.decay_milestones, 'decay_milestones', list(self.decay_milestones) == sorted(self.decay_milestones)
               and all(m > 0 for m in self.decay_milestones), 'increasing positive epochs, e.g. [30, 60, 90]')
        if self.data_dir != 'digits':
            _check(self.data_dir, 'data_dir', Path(self.data_dir).exists(),
                   "an existing folder or .tar (with train/val splits), or 'digits' for the embedded dataset")
        if self.teacher and '/' in self.teacher and ':' not in self.teacher:
            _check(self.teacher, 'teacher', Path(self.teacher).exists(),
                   'an existing train.py checkpoint file, a timm model name, or hf-hub:/local-dir: source')
        if self.export_ema:
            _check(self.export_ema, 'export_ema', self.model_ema, 'false unless model_ema is true (no EMA weights)')
        if self.push_to_hub:
            from .export import ExportError, check_repo_id
            try:
                check_repo_id(self.push_to_hub)
            except ExportError as e:
                raise HparamsError(f'hparams: push_to_hub={self.push_to_hub!r} is invalid: {e}') from None
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check(value: Any, key: str, ok: bool, valid: str) -> None:
    if not ok:
        raise HparamsError(f'hparams: {key}={value!r} is invalid: expected {valid}.')


def _choice(hp: TrainHparams, key: str, choices: tuple[str, ...] | None) -> None:
    value = getattr(hp, key)
    if key == 'opt':
        import timm.optim  # 'nag' is registered by importing timm_bot (which this module's import already did)
        choices = tuple(timm.optim.list_optimizers())
    if value not in choices:
        near = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ''
        shown = ', '.join(choices) if len(choices) <= 8 else ', '.join(choices[:8]) + ', ...'
        raise HparamsError(f'hparams: {key}={value!r} is not one of {shown}{hint}.')


_FIELDS = {f.name: f for f in dataclasses.fields(TrainHparams)}
_TYPES = typing.get_type_hints(TrainHparams)


def _coerce(key: str, value: Any) -> Any:
    """Check ``value`` against the field's type; ints are accepted where floats are expected."""
    expected = _TYPES[key]
    optional = (typing.get_origin(expected) in (typing.Union, types.UnionType)
                and type(None) in typing.get_args(expected))
    if optional:
        if value is None:
            return None
        expected = next(a for a in typing.get_args(expected) if a is not type(None))
    origin = typing.get_origin(expected)
    if origin is list:
        (item_type,) = typing.get_args(expected)
        if isinstance(value, (list, tuple)):
            return [_coerce_scalar(key, v, item_type, f'a list of {item_type.__name__}') for v in value]
        raise HparamsError(f'hparams: {key}={value!r} has the wrong type: expected a list of {item_type.__name__}, '
                           f'e.g. [{_example(item_type)}, {_example(item_type)}].')
    return _coerce_scalar(key, value, expected, expected.__name__ + (' or null' if optional else ''))


_FLOAT_RE = re.compile(r'[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?')


def _coerce_scalar(key: str, value: Any, expected: type, described: str) -> Any:
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is float and isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
        return float(value)  # '1e-3', '5e-5': YAML 1.1 (PyYAML) reads them as strings, YAML 1.2 / Python as floats
    if isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
        return value
    raise HparamsError(f'hparams: {key}={value!r} has the wrong type ({type(value).__name__}): expected {described}.')


def _example(t: type) -> str:
    return {int: '1', float: '0.5', str: 'x'}.get(t, '?')


def _unknown_key(key: str) -> HparamsError:
    near = difflib.get_close_matches(key, list(_FIELDS), n=1, cutoff=0.5)
    hint = f"did you mean '{near[0]}'?" if near else 'see TrainHparams in timm_bot/hparams.py for the valid keys.'
    return HparamsError(f"hparams: unknown key '{key}': {hint}")


def parse_overrides(argv: list[str]) -> dict[str, Any]:
    """``['--lr', '0.4', '--mixup=0.2', '--amp']`` -> ``{'lr': 0.4, 'mixup': 0.2, 'amp': True}``.

    Values are parsed as YAML (so ``null``, ``true``, ``[30, 60]`` work); dashes in keys become underscores.
    A key with no value is ``true``.
    """
    out: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith('--') or len(token) == 2:
            raise HparamsError(f"hparams: unexpected argument '{token}': overrides look like --key value.")
        key, eq, raw = token[2:].partition('=')
        key = key.replace('-', '_')
        if not eq:
            if i + 1 < len(argv) and not argv[i + 1].startswith('--'):
                raw = argv[i + 1]
                i += 1
            else:
                raw = 'true'
        try:
            value = yaml.safe_load(raw) if raw != '' else ''
        except yaml.YAMLError:
            value = raw
        out[key] = value if isinstance(value, (int, float, bool, str, list, dict, type(None))) else raw
        i += 1
    return out


def load_hparams(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainHparams:
    """Read ``path`` (YAML mapping), apply ``overrides``, check keys, types and values."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise HparamsError(f'hparams: file not found: {path} (the recipes are in hparams/).')
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise HparamsError(f'hparams: {path} is not valid YAML: {str(e).splitlines()[0]}') from None
        if loaded is not None and not isinstance(loaded, dict):
            raise HparamsError(f'hparams: {path} must be a mapping of key: value lines.')
        values.update(loaded or {})
    values.update(overrides or {})
    for key in values:
        if key not in _FIELDS:
            raise _unknown_key(key)
    hp = TrainHparams(**{k: _coerce(k, v) for k, v in values.items()})
    return hp.validate()
