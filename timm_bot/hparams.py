"""Training hyper-parameters: one typed dataclass from YAML files and ``--key value`` overrides (``--help`` too);
mistakes raise :class:`HparamsError`, one line (train.py exits 2 before writing anything)."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import operator
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ['TrainHparams', 'HparamsError', 'build_parser', 'load_hparams', 'check_resume_changes', 'resume_target']


class HparamsError(ValueError):
    """A bad hparams file, key or value; ``str()`` is one line naming the key and what is valid."""


_BOUNDS = {'ge': (operator.ge, '>='), 'gt': (operator.gt, '>'), 'le': (operator.le, '<='), 'lt': (operator.lt, '<')}


def _h(default: Any, help: str, **valid: Any) -> Any:
    """A field with its ``--help`` line and its valid values: bounds ``ge``/``gt``/``le``/``lt`` or ``choices``."""
    factory = {'default_factory': lambda: list(default)} if isinstance(default, list) else {'default': default}
    return field(metadata={'help': help, **valid}, **factory)


@dataclass
class TrainHparams:
    """Every switch of the paper's recipes; defaults are its ResNet-50-D recipe (sections 2-5)."""
    model: str = _h('resnet50d_bot', 'any timm model name, hf-hub:ORG/NAME or local-dir:PATH')
    pretrained: bool = _h(False, 'start from the pretrained weights of `model` (fine-tuning)')
    weight_init: str = _h('xavier', "'xavier' (section 2) or 'timm' (the model's own init); ignored when pretrained",
                          choices=('xavier', 'timm'))
    zero_init_last: bool = _h(True, 'zero-gamma: last BN of every residual branch starts at 0 (section 3.1)')
    drop_rate: float = _h(0.0, 'dropout before the classifier', ge=0, lt=1)
    data_dir: str = _h('digits', "'digits' (embedded), a folder with train/ and val/ (or .tar) splits, a .tar, "
                       'hfds/ID_OR_PATH (a Hugging Face dataset) or wds/SHARDS (WebDataset .tar shards)')
    train_split: str = _h('train', 'training split name')
    val_split: str = _h('val', 'validation split name')
    input_key: str | None = _h(None, "hfds/, wds/: the image column or member(s); null: 'image' or the only Image "
                               "column, or 'jpg;png;webp'")
    target_key: str | None = _h(None, "hfds/, wds/: the label column or .json field; null: 'label' or the only "
                                'ClassLabel column, or the .cls member')
    class_map: str | None = _h(None, 'a .txt of class names, line i naming class i (as timm --class-map)')
    skip_bad_images: bool = _h(False, 'skip and count unreadable images instead of stopping')
    workers: int = _h(2, 'data loader worker processes', ge=0)
    pin_memory: bool | None = _h(None, 'pin host memory; null: on CUDA (a non_blocking copy from pageable memory '
                                 'is synchronous)')
    img_size: int = _h(224, 'training crop / eval size (section 2: 224; Inception-V3: 299)', ge=1)
    crop_pct: float = _h(0.875, 'eval center-crop fraction (section 2: 224/256)', gt=0, le=1)
    interpolation: str = _h('bilinear', 'resize interpolation', choices=('bilinear', 'bicubic', 'nearest', 'random'))
    scale: list[float] = _h([0.08, 1.0], 'random-resized-crop area range (section 2)', gt=0, le=1, size=2)
    ratio: list[float] = _h([3 / 4, 4 / 3], 'random-resized-crop aspect-ratio range (section 2)', gt=0, size=2)
    hflip: float = _h(0.5, 'horizontal flip probability (section 2)', ge=0, le=1)
    color_jitter: float = _h(0.4, 'brightness/saturation scaling in [1-x, 1+x] (section 2)', ge=0, lt=1)
    hue_jitter: bool = _h(True, 'also scale the hue by [1-x, 1+x] (section 2)')
    pca_lighting: float = _h(0.1, 'PCA lighting noise std (section 2)', ge=0)
    device_augment: bool = _h(True, 'section 2 steps 4-6 batched on the training device: loader workers ship uint8 '
                              'crops (false: all steps per image in the workers)')
    mean: list[float] | None = _h(None, "normalization mean; null = the model's (paper's for *_bot models)", size=3)
    std: list[float] | None = _h(None, "normalization std; null = the model's (paper's for *_bot models)", gt=0,
                                 size=3)
    epochs: int = _h(120, 'training epochs (section 2: 120; mixup 200)', ge=1)
    batch_size: int = _h(256, 'batch size per process', ge=1)
    grad_accum_steps: int = _h(1, 'batches accumulated per optimizer update', ge=1)
    opt: str = _h('nag', "optimizer: 'nag' (section 2) or any timm optimizer name")
    lr: float | None = _h(None, 'learning rate; null: linear scaling lr_base x global batch / lr_base_size (3.1)', gt=0)
    lr_base: float = _h(0.1, 'lr for a global batch of lr_base_size (section 3.1)', gt=0)
    lr_base_size: int = _h(256, 'reference batch of the linear scaling rule (section 3.1)', ge=1)
    momentum: float = _h(0.9, 'optimizer momentum', ge=0, lt=1)
    weight_decay: float = _h(1e-4, 'weight decay (section 2: 1e-4)', ge=0)
    no_bias_decay: bool = _h(True, 'no weight decay on biases and BN gamma/beta (section 3.1)')
    sched: str = _h('cosine', "'cosine' (section 5.1) or 'step' (section 2)", choices=('cosine', 'step'))
    warmup_epochs: float = _h(5.0, 'linear warmup, per iteration (section 3.1); must be < epochs', ge=0)
    decay_milestones: list[int] = _h([30, 60, 90], "'step': epochs where the lr is multiplied by decay_rate")
    decay_rate: float = _h(0.1, "'step': lr decay factor", gt=0, le=1)
    smoothing: float = _h(0.1, 'label smoothing epsilon (section 5.2); 0 disables', ge=0, lt=1)
    smoothing_mode: str = _h('paper', "'paper' (eps/(K-1) per wrong class, 5.2) or 'uniform' (eps/K, timm/torch)",
                             choices=('paper', 'uniform'))
    mixup: float = _h(0.0, 'mixup Beta(alpha, alpha) alpha (section 5.4: 0.2); 0 disables', ge=0)
    teacher: str | None = _h(None, 'distillation teacher (5.3): timm name, hf-hub:/local-dir:, a checkpoint or a run '
                                   'folder (its model_best.pth.tar)')
    temperature: float = _h(20.0, 'distillation temperature T (section 5.3)', gt=0)
    teacher_ema: bool = _h(False, "distill from the EMA weights of a train.py teacher (checkpoint or run folder)")
    amp: bool = _h(False, 'mixed precision (section 3.2)')
    amp_dtype: str = _h('float16', "'float16' (with loss scaling) or 'bfloat16'", choices=('float16', 'bfloat16'))
    channels_last: bool = _h(False, 'channels-last memory format')
    torchcompile: bool = _h(False, 'torch.compile the model')
    model_ema: bool = _h(False, "keep an EMA of the weights (timm's ModelEmaV3; not in the paper)")
    model_ema_decay: float = _h(0.9998, 'EMA decay per update', gt=0, lt=1)
    seed: int = _h(42, 'random seed (data order, augmentation, mixup, init)')
    deterministic: bool = _h(False, 'torch.use_deterministic_algorithms')
    device: str = _h('auto', "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    output: str = _h('output/train', 'parent folder of the run folders')
    experiment: str = _h('', "run folder name (default: date-model); an existing one gets a '-1', '-2' suffix, "
                             'except with resume: auto')
    resume: str | None = _h(None, "continue a run: its folder or checkpoint (restores its hparams); 'auto': continue "
                            'OUTPUT/EXPERIMENT if it has a checkpoint, else start it there (restartable jobs)')
    checkpoint_interval: int = _h(0, 'also save last.pth.tar every N updates (0: at epoch ends only)', ge=0)
    log_interval: int = _h(50, 'a progress line every N batches when stderr is not a terminal', ge=0)
    dist_timeout: float = _h(300.0, 'seconds before a DDP collective waiting for a dead rank fails', gt=0)
    plots: bool = _h(True, 'write lr.png and curves.png')
    log_tensorboard: bool = _h(False, 'write TensorBoard event files into the run folder (rank 0)')
    log_wandb: bool = _h(False, 'log to Weights & Biases (rank 0; offline into the run folder when not logged in)')
    wandb_project: str | None = _h(None, "W&B project; null: W&B's default (WANDB_PROJECT)")
    wandb_name: str | None = _h(None, 'W&B run name; null: the run folder name')
    export_dir: str | None = _h(None, 'export model_best as a Hub model folder here at the end')
    push_to_hub: str | None = _h(None, 'push the export to this Hub repo (USER/NAME) at the end')
    export_ema: bool = _h(False, "export the EMA weights (needs model_ema); model_best is then the EMA's best epoch")

    def validate(self) -> TrainHparams:
        """Refuse impossible values, naming the key, its value and what is valid."""
        def check(key: str, ok: bool, valid: str) -> None:
            if not ok:
                raise HparamsError(f'hparams: {key}={getattr(self, key)!r} is invalid: expected {valid}.')
        import timm.optim
        _choice('opt', self.opt, ['nag'] + sorted(set(timm.optim.list_optimizers()) - {'nag'}))
        for f in dataclasses.fields(self):
            value, valid = getattr(self, f.name), f.metadata
            if 'choices' in valid:
                _choice(f.name, value, valid['choices'])
            values, size = value if isinstance(value, list) else [] if value is None else [value], valid.get('size')
            check(f.name, value is None or size in (None, len(values)), f'{size} values')
            bounds = [(op, valid[op]) for op in _BOUNDS if op in valid]
            check(f.name, all(_BOUNDS[op][0](v, b) for op, b in bounds for v in values),
                  'a number ' + ' and '.join(f'{_BOUNDS[op][1]} {b}' for op, b in bounds))
        for key in ('scale', 'ratio'):
            check(key, getattr(self, key)[0] <= getattr(self, key)[1], '[min, max] with min <= max')
        check('warmup_epochs', self.warmup_epochs < self.epochs,
              f'>= 0 and shorter than epochs={self.epochs} (lower warmup_epochs or raise epochs)')
        check('decay_milestones', self.decay_milestones == sorted(self.decay_milestones), 'increasing epochs')
        check('decay_milestones', self.sched != 'step' or all(0 < d < self.epochs for d in self.decay_milestones),
              f'epochs in 1..{self.epochs - 1} (epochs={self.epochs}: a later decay never happens; lower them, or '
              'raise epochs)')
        check('export_ema', self.model_ema or not self.export_ema, 'false unless model_ema is true')
        check('resume', self.resume != 'auto' or bool(self.experiment),
              "a run folder or checkpoint, or 'auto' with experiment: NAME (the run's folder at every restart)")
        check('teacher_ema', self.teacher is not None or not self.teacher_ema, 'false unless a teacher is set')
        if self.data_dir != 'digits' and self.data_dir.partition('/')[0].lower() not in ('hfds', 'wds'):
            check('data_dir', Path(self.data_dir).exists(),
                  "an existing folder or .tar, or 'digits' (embedded); give it with --data_dir PATH")
        return self


# Keys a resumed run may change: they do not alter the run's trajectory (epochs rebuilds the schedule).
RESUME_MUTABLE = {'resume', 'epochs', 'workers', 'pin_memory', 'device', 'log_interval', 'checkpoint_interval', 'plots',
                  'export_dir', 'push_to_hub', 'export_ema', 'dist_timeout', 'data_dir', 'skip_bad_images',
                  'deterministic', 'torchcompile', 'channels_last', 'amp', 'amp_dtype', 'input_key', 'target_key',
                  'class_map', 'log_tensorboard', 'log_wandb', 'wandb_project', 'wandb_name'}


def _choice(key: str, value: str, choices: typing.Sequence[str]) -> None:
    if value not in choices:
        near = difflib.get_close_matches(str(value), choices, n=3)
        hint = f" Did you mean {' or '.join(repr(n) for n in near)}?" if near else ''
        shown = ', '.join(choices[:12]) + (f', ... ({len(choices)} in all)' if len(choices) > 12 else '')
        raise HparamsError(f'hparams: {key}={value!r} is not one of {shown}.{hint}')


_FIELDS = {f.name: f for f in dataclasses.fields(TrainHparams)}
_TYPES = typing.get_type_hints(TrainHparams)


def _coerce(key: str, value: Any, expected: Any = None) -> Any:
    """``value`` checked against the field's type: ints pass as floats, '1e-3' as a float, None for ``X | None``."""
    expected = expected or _TYPES[key]
    args, name = typing.get_args(expected), getattr(expected, '__name__', '')
    if type(None) in args:
        return None if value is None else _coerce(key, value, args[0])
    if typing.get_origin(expected) is list:
        if isinstance(value, (list, tuple)):
            return [_coerce(key, v, args[0]) for v in value]
        name = f'a list of {args[0].__name__}, e.g. {[30, 60] if args[0] is int else [0.5, 1.0]}'
    elif expected is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        with contextlib.suppress(ValueError):
            return float(value)  # ints, and '1e-3' (PyYAML reads YAML 1.2 floats like that as strings)
    elif isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
        return value
    raise HparamsError(f'hparams: {key}={value!r} has the wrong type ({type(value).__name__}): expected {name}.')


def _yaml_value(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text != '' else ''
    except yaml.YAMLError:
        return text


def _unknown_key(key: str, prefix: str = '') -> HparamsError:
    near = difflib.get_close_matches(key, list(_FIELDS), n=1, cutoff=0.5)
    hint = f"did you mean '{prefix}{near[0]}'?" if near else 'train.py --help lists every key.'
    return HparamsError(f"hparams: unknown key '{key}': {hint}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        if 'unrecognized arguments:' in message:
            raise _unknown_key(message.split(':', 1)[1].split()[0].lstrip('-').split('=')[0].replace('-', '_'), '--')
        raise HparamsError(f'hparams: {message}')

    def parse_known_args(self, args: typing.Sequence[str] | None = None, namespace: Any = None) -> Any:
        """``--help`` after (or before) ``--hparams FILES`` shows the files' values as the defaults."""
        args = sys.argv[1:] if args is None else list(args)
        if {'-h', '--help'} & {str(a) for a in args}:
            pre = argparse.ArgumentParser(add_help=False)
            pre.add_argument('--hparams', nargs='+', default=[])
            for path in pre.parse_known_args([str(a) for a in args])[0].hparams:
                for key, value in _read_yaml(Path(path)).items():
                    if key not in _FIELDS:
                        raise _unknown_key(key)
                    _set_help(self, key, _coerce(key, value), Path(path).name)
        return super().parse_known_args(args, namespace)


def _set_help(parser: argparse.ArgumentParser, name: str, default: Any, source: str = '') -> None:
    """The ``--help`` line of key ``name``: its meaning and its default (from file ``source``, if given)."""
    action = next(a for a in parser._actions if a.dest == name)
    action.help = f'{_FIELDS[name].metadata["help"]} (default: {default}{f" from {source}" if source else ""})'


def build_parser(description: str = '') -> argparse.ArgumentParser:
    """``--hparams`` and one ``--key`` (also ``--key-with-dashes``) per :class:`TrainHparams` field;
    ``--hparams FILES --help`` shows the files' values as the defaults."""
    parser = _Parser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                     allow_abbrev=False, usage='train.py [--hparams FILE.yaml ...] [--resume RUN] [--KEY VALUE ...]')
    parser.add_argument('--hparams', nargs='+', metavar='FILE.yaml',
                        help='YAML file(s) of hparams (recipes in hparams/); a later file overrides an earlier one')
    keys = parser.add_argument_group('hparams (YAML keys; a command-line value overrides the file)')
    for name, f in _FIELDS.items():
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        flags = [f'--{name}'] + ([f'--{name.replace("_", "-")}'] if '_' in name else [])
        is_bool = _TYPES[name] is bool
        keys.add_argument(*flags, dest=name, metavar='true|false' if is_bool else 'VALUE', default=argparse.SUPPRESS,
                          type=_yaml_value, nargs='?' if is_bool else None, const=True if is_bool else None)
        _set_help(parser, name, default)
    return parser


def load_hparams(paths: str | Path | list | None = None, overrides: dict[str, Any] | None = None,
                 base: dict[str, Any] | None = None) -> TrainHparams:
    """``base`` (a resumed run's hparams) < YAML file(s) ``paths`` in order < ``overrides``; all checked."""
    values = {k: v for k, v in (base or {}).items() if k in _FIELDS}
    for path in [paths] if isinstance(paths, (str, Path)) else paths or []:
        values.update(_read_yaml(Path(path)))
    values.update(overrides or {})
    for key in values:
        if key not in _FIELDS:
            raise _unknown_key(key)
    return TrainHparams(**{k: _coerce(k, v) for k, v in values.items()}).validate()


def _read_yaml(path: Path) -> dict[str, Any]:
    if path.is_dir():
        found = ', '.join(sorted(p.name for p in path.glob('*.yaml'))[:6])
        raise HparamsError(f'hparams: {path} is a folder: give one YAML file from it ({found or "none found"})')
    if not path.is_file():
        raise HparamsError(f'hparams: file not found: {path} (the recipes are in hparams/).')
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise HparamsError(f'hparams: {path} is not valid YAML: {str(e).splitlines()[0]}') from None
    if not isinstance(loaded, dict):
        raise HparamsError(f'hparams: {path} must be a mapping of key: value lines.')
    return loaded


def check_resume_changes(saved: dict[str, Any], hp: TrainHparams, resolved_lr: float) -> None:
    """A resumed run may change only :data:`RESUME_MUTABLE` keys; anything else would silently change the run."""
    new = dict(dataclasses.asdict(hp), lr=resolved_lr)
    changed = [k for k in new if k in saved and k not in RESUME_MUTABLE and new[k] != saved[k]]
    if changed:
        diffs = ', '.join(f'{k} {saved[k]!r} -> {new[k]!r}' for k in changed[:4])
        raise HparamsError(f'hparams: --resume cannot change {diffs}: only {", ".join(sorted(RESUME_MUTABLE))} may '
                           'change when resuming; start a new run (without --resume) to change the others.')


def resume_target(paths: str | Path | list | None, overrides: dict[str, Any]) -> Path | None:
    """The checkpoint a command continues: ``resume: PATH`` (a run folder: its last.pth.tar); ``resume: auto``:
    OUTPUT/EXPERIMENT/last.pth.tar if it exists (a restarted job), else None (the run starts in that folder)."""
    values = {'output': _FIELDS['output'].default, 'experiment': '', 'resume': None}
    for path in [paths] if isinstance(paths, (str, Path)) else paths or []:
        values.update(_read_yaml(Path(path)))
    values.update(overrides)
    if values['resume'] is None:
        return None
    if values['resume'] == 'auto':
        if not values['experiment']:
            raise HparamsError("hparams: resume='auto' needs experiment: NAME (the run's folder, the same at every "
                               'restart)')
        path = Path(str(values['output'])) / str(values['experiment']) / 'last.pth.tar'
        return path if path.is_file() else None
    path = Path(str(values['resume']))
    return path / 'last.pth.tar' if path.is_dir() else path
