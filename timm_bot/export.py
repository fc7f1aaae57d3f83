"""Export a train.py checkpoint as a timm / Hugging Face Hub model folder, and push it to the Hub.

    python -m timm_bot.export output/train/RUN/model_best.pth.tar exported/RUN [--use-ema] [--overwrite]
    python -m timm_bot.export output/train/RUN/model_best.pth.tar exported/RUN --push-to-hub USER/NAME [--private]
    python -m timm_bot.export exported/RUN --push-to-hub USER/NAME      # upload an existing export (e.g. a retry)

Not a technique of *Bag of Tricks for Image Classification with Convolutional Neural Networks* (He et al., CVPR
2019, arXiv:1812.01187): the plumbing that publishes a model trained with its recipes (sections 2-5) together with
that recipe, the accuracy it reached and the paper it comes from.

The folder holds exactly what ``timm.create_model('local-dir:FOLDER' | 'hf-hub:USER/NAME', pretrained=True)`` reads:

* ``model.safetensors`` -- the weights (the model's, or its EMA's with ``use_ema``); never a pickle file.
* ``config.json`` -- written by timm's own :func:`timm.models.save_for_hf`: ``architecture``, ``num_classes``,
  ``label_names``, ``model_args`` and a ``pretrained_cfg`` whose ``input_size`` / ``crop_pct`` / ``interpolation`` /
  ``mean`` / ``std`` are the training run's evaluation preprocessing (the checkpoint's ``data_config``).
* ``README.md`` -- the model card (the only part timm lacks, see :func:`build_model_card`): Hub front matter with a
  ``model-index`` of the measured top-1/top-5, the results (``summary.csv`` and ``validate*.json`` beside the
  checkpoint), the recipe (``args.yaml`` beside the checkpoint, else the checkpoint's ``args``), how to load the
  model (``import timm_bot`` first: it registers the architecture) and the paper's BibTeX.

Writing is atomic: everything goes to a hidden temp folder beside ``OUTPUT_DIR``, is checked (weights re-read and
compared bit for bit) and fsynced, then renamed onto ``OUTPUT_DIR``. A failure leaves no half-written export.
Overwrite policy: an existing non-empty ``OUTPUT_DIR`` is refused unless ``overwrite=True`` (``--overwrite``), and
even then only when it is itself an export (holds a ``config.json``); it is then swapped out by renames and deleted
only once the new export is in place.

Pushing (:func:`push_export_to_hub`) uploads the finished folder with ``huggingface_hub`` the way timm's
:func:`timm.models.push_to_hf_hub` does (``create_repo(exist_ok=True)`` then ``upload_folder``); timm's function
re-serializes the model (pickle too, by default) and writes its own card only when the repo has none, so it is not
used as is. The token comes from where ``huggingface_hub`` looks (``HF_TOKEN``, ``hf auth login``) or ``token=``;
it never appears in output, files or exception messages. A failed push raises :class:`HubPushError` (the CLI exits
1 with one line), leaves the export intact and says how to retry.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import re
import shlex
import shutil
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
import yaml
from timm.models import save_for_hf

from .checkpoint import UnsafeCheckpointError, create_model_from_checkpoint, fsync_path

__all__ = [
    'ExportError', 'HubPushError', 'export_checkpoint', 'push_export_to_hub', 'build_model_card', 'check_repo_id',
    'PAPER_BIBTEX', 'main',
]

_logger = logging.getLogger(__name__)

PathLike = str | os.PathLike
WEIGHTS_NAME = 'model.safetensors'
CONFIG_NAME = 'config.json'
CARD_NAME = 'README.md'
EXPORT_FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)
# Never uploaded, even if someone drops them into an export folder: pickles (arbitrary code) and hidden files.
PICKLE_PATTERNS = ['*.bin', '*.pt', '*.pth', '*.pth.tar', '*.pkl', '*.pickle', '*.ckpt', '.*', '.*/**']

PAPER_TITLE = 'Bag of Tricks for Image Classification with Convolutional Neural Networks'
PAPER_URL = 'https://arxiv.org/abs/1812.01187'
PAPER_BIBTEX = """@inproceedings{he2019bag,
  title     = {Bag of Tricks for Image Classification with Convolutional Neural Networks},
  author    = {He, Tong and Zhang, Zhi and Zhang, Hang and Zhang, Zhongyue and Xie, Junyuan and Li, Mu},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages     = {558--567},
  year      = {2019},
  eprint    = {1812.01187},
  archivePrefix = {arXiv}
}"""

# pretrained_cfg keys of the architecture's default config that describe *other* weights (e.g. the GluonCV port of
# a `.gluon_in1k` tag); they must not be carried into the config of the weights trained here.
_FOREIGN_CFG_KEYS = ('tag', 'hf_hub_id', 'hf_hub_filename', 'url', 'file', 'source', 'origin_url', 'notes',
                     'description', 'test_input_size', 'test_crop_pct', 'test_pool_size')


class ExportError(ValueError):
    """The export cannot be written: bad checkpoint, missing EMA weights, or an output folder it may not replace."""


class HubPushError(RuntimeError):
    """Uploading an export to the Hugging Face Hub failed. The exported folder is intact; the message says how to
    retry. It never contains the token."""


# ---------------------------------------------------------------------------------------------------------------------
# What the run produced: recipe, per-epoch results, validate.py results
# ---------------------------------------------------------------------------------------------------------------------

def _resolve_checkpoint(checkpoint: PathLike) -> Path:
    """A checkpoint file; a train.py run folder stands for its ``model_best.pth.tar``."""
    path = Path(checkpoint)
    if path.is_dir():
        if (path / CONFIG_NAME).is_file():
            raise ExportError(f'{path} is already an exported model folder, not a train.py checkpoint; to upload it '
                              f'run: python -m timm_bot.export {shlex.quote(str(path))} --push-to-hub USER/NAME')
        best = path / 'model_best.pth.tar'
        if not best.is_file():
            raise ExportError(f'{path} is a folder without model_best.pth.tar: give the checkpoint file to export')
        return best
    if not path.is_file():
        raise ExportError(f'checkpoint not found: {path}')
    return path


def _load_recipe(checkpoint: Path, ckpt: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The run's resolved hparams (paper sections 2-5): ``args.yaml`` beside the checkpoint, else ``ckpt['args']``."""
    args_file = checkpoint.parent / 'args.yaml'
    if args_file.is_file():
        try:
            loaded = yaml.safe_load(args_file.read_text(encoding='utf-8'))
        except yaml.YAMLError as e:
            _logger.warning(f'ignoring {args_file}: not valid YAML ({str(e).splitlines()[0]})')
        else:
            if isinstance(loaded, dict):
                return loaded, args_file.name
    args = ckpt.get('args')
    return (dict(args), "the checkpoint's `args`") if isinstance(args, Mapping) else ({}, '')


def _float_or_none(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _load_history(checkpoint: Path, ckpt: Mapping[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """Per-epoch rows (``epoch`` 0-based, ``eval_top1``, ``eval_top5``, ``eval_loss``, ``eval_ema_*``, ...):
    ``summary.csv`` beside the checkpoint (the whole run), else the checkpoint's ``history`` (up to its epoch)."""
    summary = checkpoint.parent / 'summary.csv'
    rows: list[dict[str, Any]] = []
    source = ''
    if summary.is_file():
        try:
            with summary.open(newline='', encoding='utf-8') as f:
                for raw in csv.DictReader(f):
                    row = {k: _float_or_none(v) for k, v in raw.items() if k}
                    if row.get('epoch') is None:
                        continue
                    row['epoch'] = int(row['epoch'])
                    rows.append(row)
            source = summary.name
        except (OSError, csv.Error, UnicodeDecodeError) as e:
            _logger.warning(f'ignoring {summary}: {e}')
            rows = []
    if not rows and isinstance(ckpt.get('history'), list):
        rows = [{k: (int(v) if k == 'epoch' else _float_or_none(v)) for k, v in row.items()}
                for row in ckpt['history'] if isinstance(row, Mapping) and 'epoch' in row]
        source = "the checkpoint's `history`" if rows else ''
    return rows, source


def _load_validations(checkpoint: Path) -> list[dict[str, Any]]:
    """validate.py results (``validate*.json``) beside the checkpoint, with the file name under ``'file'``."""
    results = []
    for path in sorted(checkpoint.parent.glob('validate*.json')):
        try:
            data = json.loads(path.read_text(encoding='utf-8'))
        except (OSError, ValueError) as e:
            _logger.warning(f'ignoring {path}: {e}')
            continue
        if isinstance(data, dict) and _float_or_none(data.get('top1')) is not None:
            results.append(dict(data, file=path.name))
    return results


def _weights_row(history: Sequence[Mapping[str, Any]], ckpt: Mapping[str, Any]) -> dict[str, Any] | None:
    """The history row evaluating exactly the checkpoint's weights: train.py saves after epoch ``ckpt['epoch'] - 1``
    (0-based) was evaluated. A mid-epoch checkpoint (``batch_in_epoch > 0``) has no such row."""
    epoch = ckpt.get('epoch')
    if not isinstance(epoch, int) or ckpt.get('batch_in_epoch', 0):
        return None
    return next((dict(r) for r in history if r.get('epoch') == epoch - 1), None)


# ---------------------------------------------------------------------------------------------------------------------
# The model card
# ---------------------------------------------------------------------------------------------------------------------

_ARCH_RE = re.compile(r'^resnet(?P<depth>\d+)(?P<tweak>[bcd]?)(?P<tiny>_tiny)?_bot$')
_TWEAK_NAMES = {
    '': 'original ResNet (Figure 1)', 'b': 'ResNet-B (section 4.1, Figure 2a)',
    'c': 'ResNet-C (section 4.1, Figure 2b)', 'd': 'ResNet-D (section 4.1, Figure 2c)',
}


def _describe_arch(arch: str) -> str:
    match = _ARCH_RE.match(arch)
    if not match:
        return f'`{arch}`'
    depth, tweak = int(match['depth']), match['tweak']
    name = _TWEAK_NAMES[tweak]
    if depth < 50 and tweak == '':
        name = 'ResNet with basic blocks (stride already on the 3x3 conv, i.e. ResNet-B, section 4.1)'
    tiny = '; *tiny*: 1/4 width, two blocks per stage, for 32x32 images (not from the paper)' if match['tiny'] else ''
    return f'`{arch}`: {name}{tiny}'


def _dataset_name(args: Mapping[str, Any]) -> str:
    data_dir = str(args.get('data_dir') or '')
    if not data_dir:
        return 'unknown'
    return data_dir if data_dir == 'digits' else (Path(data_dir.rstrip('/')).name or data_dir)


def _on_off(value: Any, on: str, off: str = 'off') -> str:
    return on if value else off


def _recipe_rows(args: Mapping[str, Any], arch: str) -> list[tuple[str, str, str]]:
    """(trick, paper section, setting of this run) for the card's recipe table."""
    g = args.get
    rows = [('Model tweak', '4', _describe_arch(arch))]
    if 'weight_init' in args:
        rows.append(('Xavier initialization', '2', _on_off(g('weight_init') == 'xavier', 'on', str(g('weight_init')))))
    if 'zero_init_last' in args:
        rows.append(('Zero gamma (last BN of each residual block)', '3.1', _on_off(g('zero_init_last'), 'on')))
    if 'no_bias_decay' in args:
        rows.append(('No bias decay', '3.1', _on_off(g('no_bias_decay'), f'on (weight decay {g("weight_decay")} on '
                                                                             'conv/fc weights only)',
                                                      f'off (weight decay {g("weight_decay")} on all)')))
    if 'opt' in args:
        rows.append(('Optimizer', '2', f'{g("opt")}, momentum {g("momentum")}'))
    if 'lr' in args:
        global_batch = (g('batch_size') or 0) * (g('grad_accum_steps') or 1)
        rows.append(('Learning rate (linear scaling: 0.1 x batch / 256)', '3.1',
                     f'{g("lr")} for a batch of {global_batch} per process'))
    if 'warmup_epochs' in args:
        rows.append(('Learning-rate warmup', '3.1', f'{g("warmup_epochs")} epochs, linear, per iteration'))
    if 'sched' in args:
        sched = g('sched')
        setting = 'cosine decay (section 5.1)' if sched == 'cosine' else \
            f'step decay x{g("decay_rate")} at epochs {g("decay_milestones")} (section 2)'
        rows.append(('Schedule', '2, 5.1', f'{setting}, {g("epochs")} epochs'))
    if 'amp' in args:
        rows.append(('Low-precision training', '3.2', _on_off(g('amp'), f'on ({g("amp_dtype")} autocast)')))
    if 'smoothing' in args:
        rows.append(('Label smoothing', '5.2', _on_off(g('smoothing'), f'epsilon {g("smoothing")} '
                                                                      f'({g("smoothing_mode")})')))
    if 'mixup' in args:
        rows.append(('Mixup', '5.4', _on_off(g('mixup'), f'alpha {g("mixup")}')))
    if 'teacher' in args:
        rows.append(('Knowledge distillation', '5.3', _on_off(g('teacher'), f'teacher `{g("teacher")}`, '
                                                                          f'T={g("temperature")}')))
    if 'img_size' in args:
        rows.append(('Augmentation', '2', f'random-resized crop {g("img_size")}px, scale {g("scale")}, ratio '
                                          f'{g("ratio")}, hflip {g("hflip")}, color jitter {g("color_jitter")}, '
                                          f'PCA lighting {g("pca_lighting")}'))
    if 'model_ema' in args:
        rows.append(('Model EMA (timm; not in the paper)', '-', _on_off(g('model_ema'),
                                                                         f'decay {g("model_ema_decay")}')))
    return rows


def _fmt(value: Any, digits: int = 2) -> str:
    number = _float_or_none(value)
    return '-' if number is None else f'{number:.{digits}f}'


def _md(text: Any) -> str:
    """Table-cell safe text."""
    return str(text).replace('|', '\\|').replace('\n', ' ')


def _results_section(history: Sequence[Mapping[str, Any]], history_source: str, weights: dict[str, Any] | None,
                     prefix: str, validations: Sequence[Mapping[str, Any]], dataset: str, val_split: str) -> str:
    lines = ['## Results', '']
    if weights is not None:
        which = 'EMA weights' if prefix == 'eval_ema_' else 'weights'
        lines += [f'The exported {which} are those after epoch {weights["epoch"] + 1}: top-1 '
                  f'**{_fmt(weights.get(prefix + "top1"))}%**, top-5 **{_fmt(weights.get(prefix + "top5"))}%** on '
                  f'`{dataset}` [{val_split}] (evaluated by train.py at the end of that epoch).', '']
    if history:
        has_ema = any(r.get('eval_ema_top1') is not None for r in history)
        best = max(history, key=lambda r: (r.get('eval_top1') or -1.0, -r['epoch']))
        rows = [('best epoch (by top-1)', best), ('final epoch', history[-1])]
        if weights is not None:
            rows.insert(0, ('exported weights', weights))
        header = '| | epoch | top-1 (%) | top-5 (%) | eval loss |'
        rule = '|---|---:|---:|---:|---:|'
        if has_ema:
            header += ' EMA top-1 (%) | EMA top-5 (%) |'
            rule += '---:|---:|'
        lines += [f'Per-epoch evaluation on `{dataset}` [{val_split}] from {history_source} '
                  f'({len(history)} epochs; epochs counted from 1):', '', header, rule]
        for label, r in rows:
            cells = [label, str(r['epoch'] + 1), _fmt(r.get('eval_top1')), _fmt(r.get('eval_top5')),
                     _fmt(r.get('eval_loss'), 4)]
            if has_ema:
                cells += [_fmt(r.get('eval_ema_top1')), _fmt(r.get('eval_ema_top5'))]
            lines.append('| ' + ' | '.join(cells) + ' |')
        lines.append('')
    else:
        lines += ['No per-epoch results were found (no summary.csv beside the checkpoint, no history in it).', '']
    if validations:
        lines += ['validate.py runs found beside the checkpoint:', '',
                  '| file | weights | data | split | images | top-1 (%) | top-5 (%) | loss |',
                  '|---|---|---|---|---:|---:|---:|---:|']
        for v in validations:
            evaluated = Path(str(v.get('checkpoint') or '')).name or str(v.get('model') or '-')
            data = _dataset_name({'data_dir': v.get('data_dir', '')})
            lines.append('| ' + ' | '.join(_md(c) for c in (
                v['file'], evaluated, data, v.get('split', '-'), v.get('count', '-'), _fmt(v.get('top1')),
                _fmt(v.get('top5')), _fmt(v.get('loss'), 4))) + ' |')
        lines.append('')
    return '\n'.join(lines)


def _usage_section(repo_id: str | None, arch: str, input_size: Sequence[int]) -> str:
    hub_id = repo_id or 'USER/NAME'
    size = 'x'.join(str(s) for s in input_size[-2:])
    return f"""## How to use

Needs `timm` and the `timm-bot` plugin (`pip install timm-bot`, or `pip install -e .` in a checkout of it). The
architecture `{arch}` is registered into timm by the plugin, so **`import timm_bot` must come before
`timm.create_model(...)`**; without it timm fails with `RuntimeError: Unknown model ({arch})`.

```python
import timm
import timm_bot  # noqa: F401  -- registers the `_bot` architectures; import it BEFORE timm.create_model
import torch
from PIL import Image

model = timm.create_model('hf-hub:{hub_id}', pretrained=True).eval()
# or, from a local copy of this folder: timm.create_model('local-dir:PATH/TO/FOLDER', pretrained=True)

# The training run's evaluation preprocessing ({size}, crop_pct, mean/std) is in config.json:
data_config = timm.data.resolve_model_data_config(model)
transform = timm.data.create_transform(**data_config, is_training=False)

image = Image.open('image.png').convert('RGB')
with torch.no_grad():
    probabilities = model(transform(image).unsqueeze(0)).softmax(dim=-1)
labels = model.pretrained_cfg['label_names']
top = probabilities.topk(min(5, len(labels)))
print([(labels[i], round(p.item(), 4)) for p, i in zip(top.values[0], top.indices[0])])
```

Evaluate it with timm-bot's `validate.py`:

```bash
python validate.py --model hf-hub:{hub_id} --data-dir DATA_DIR
```
"""


def build_model_card(
        ckpt: Mapping[str, Any],
        checkpoint: PathLike,
        *,
        use_ema: bool = False,
        repo_id: str | None = None,
        license: str | None = None,
        num_params: int | None = None,
) -> str:
    """The README.md model card of an export: Hub front matter (``library_name: timm``, tags, license, a
    ``model-index`` with the measured top-1/top-5), the results, the paper's recipe as run (sections 2-5), how to load
    the model (``import timm_bot`` first) and the paper's BibTeX.

    Reads ``args.yaml``, ``summary.csv`` and ``validate*.json`` beside ``checkpoint`` when present, else falls back
    to the checkpoint's ``args`` / ``history``.
    """
    from huggingface_hub import EvalResult, ModelCardData

    checkpoint = Path(checkpoint)
    arch = str(ckpt.get('arch'))
    args, args_source = _load_recipe(checkpoint, ckpt)
    history, history_source = _load_history(checkpoint, ckpt)
    validations = _load_validations(checkpoint)
    weights = _weights_row(history, ckpt)
    prefix = 'eval_ema_' if use_ema else 'eval_'
    dataset = _dataset_name(args)
    val_split = str(args.get('val_split') or 'val')
    data_config = dict(ckpt.get('data_config') or {})
    input_size = list(data_config.get('input_size') or [3, 224, 224])
    model_name = repo_id.split('/')[-1] if repo_id else arch
    license = license or 'apache-2.0'

    eval_results = []
    if weights is not None and weights.get(prefix + 'top1') is not None:
        common = dict(task_type='image-classification', task_name='Image Classification', dataset_type=dataset,
                      dataset_name=dataset, dataset_split=val_split)
        eval_results.append(EvalResult(**common, metric_type='accuracy', metric_name='Top-1 accuracy (%)',
                                       metric_value=round(weights[prefix + 'top1'], 4)))
        if weights.get(prefix + 'top5') is not None:
            eval_results.append(EvalResult(**common, metric_type='top_5_accuracy', metric_name='Top-5 accuracy (%)',
                                           metric_value=round(weights[prefix + 'top5'], 4)))
    card_data = ModelCardData(
        library_name='timm', license=license, pipeline_tag='image-classification',
        tags=['image-classification', 'timm', 'timm-bot', 'bag-of-tricks', 'arxiv:1812.01187'],
        model_name=model_name if eval_results else None, eval_results=eval_results or None,
    )

    labels = [str(n) for n in ckpt.get('label_names') or []]
    shown_labels = ', '.join(f'`{n}`' for n in labels[:20]) + (f', ... ({len(labels)} in all)'
                                                                if len(labels) > 20 else '')
    weights_kind = 'exponential moving average (EMA) of the weights' if use_ema else 'model weights (not the EMA)'
    epoch = ckpt.get('epoch')
    details = [
        f'- **Architecture:** {_describe_arch(arch)}',
        f'- **Parameters:** {num_params / 1e6:.2f}M' if num_params else '',
        f'- **Classes:** {ckpt.get("num_classes")} ({shown_labels})' if labels else
        f'- **Classes:** {ckpt.get("num_classes")}',
        f'- **Trained on:** `{dataset}`' + (' (scikit-learn\'s 8x8 handwritten digits, embedded in timm-bot, '
                                            'upscaled)' if dataset == 'digits' else ''),
        f'- **Weights:** {weights_kind}, from `{checkpoint.name}`'
        + (f' (saved after {epoch} epoch{"s" if epoch != 1 else ""})' if isinstance(epoch, int) else ''),
        f'- **Preprocessing (config.json):** input {"x".join(str(s) for s in input_size)}, '
        f'crop_pct {data_config.get("crop_pct")}, {data_config.get("interpolation")} interpolation, '
        f'mean {_round_list(data_config.get("mean"))}, std {_round_list(data_config.get("std"))}',
        f'- **Paper:** [{PAPER_TITLE}]({PAPER_URL}) (He et al., CVPR 2019)',
        f'- **Library:** timm {timm.__version__} with the timm-bot plugin {_plugin_version()}',
    ]
    body = [
        f'# Model card for {model_name}', '',
        f'An image classifier `{arch}` trained with the recipe of *{PAPER_TITLE}* (He et al., CVPR 2019, '
        f'[arXiv:1812.01187]({PAPER_URL})) using the [timm](https://github.com/huggingface/pytorch-image-models) '
        f'plugin timm-bot.', '',
        '## Model details', '', *[d for d in details if d], '',
        _results_section(history, history_source, weights, prefix, validations, dataset, val_split),
        '## Training recipe', '',
    ]
    if args:
        body += [f'The paper\'s tricks as set for this run (from {args_source}):', '',
                 '| trick | paper section | this run |', '|---|---|---|']
        body += ['| ' + ' | '.join(_md(c) for c in row) + ' |' for row in _recipe_rows(args, arch)]
        body += ['', f'All resolved hyper-parameters (`{args_source}`; reproduce with '
                     '`python train.py --hparams recipe.yaml` after saving this block as `recipe.yaml`):', '',
                 '```yaml', yaml.safe_dump(args, sort_keys=False).rstrip(), '```', '']
    else:
        body += ['The training hyper-parameters were not recorded (no args.yaml beside the checkpoint, no `args` '
                 'in it).', '']
    body += [_usage_section(repo_id, arch, input_size), '## Citation', '', '```bibtex', PAPER_BIBTEX, '```', '']
    return f'---\n{card_data.to_yaml()}\n---\n\n' + '\n'.join(body)


def _round_list(values: Any) -> Any:
    if isinstance(values, (list, tuple)):
        return [round(float(v), 4) for v in values]
    return values


def _plugin_version() -> str:
    from . import __version__
    return __version__


# ---------------------------------------------------------------------------------------------------------------------
# Writing the folder
# ---------------------------------------------------------------------------------------------------------------------

def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _check_destination(output_dir: Path, checkpoint: Path, overwrite: bool) -> None:
    """Apply the overwrite policy (module docstring) before any work is done."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ExportError(f'output folder {output_dir} exists and is a file: choose another path')
    if _is_within(checkpoint, output_dir):
        raise ExportError(f'output folder {output_dir} contains the checkpoint {checkpoint}: exporting there would '
                          f'replace it; choose another folder (e.g. {checkpoint.parent / "hub"})')
    if output_dir.is_dir() and any(output_dir.iterdir()):
        if not overwrite:
            raise ExportError(f'output folder {output_dir} exists and is not empty: pass overwrite=True '
                              f'(--overwrite) to replace a previous export, or choose another folder')
        if not (output_dir / CONFIG_NAME).is_file():
            raise ExportError(f'refusing to replace {output_dir}: it is not a previous export (no {CONFIG_NAME}); '
                              f'remove it yourself or choose another folder')


def _verify_export(folder: Path, model: torch.nn.Module, arch: str) -> None:
    """Re-read what was written: the safetensors weights must equal the model's bit for bit."""
    from safetensors.torch import load_file

    names = sorted(p.name for p in folder.iterdir())
    if names != sorted(EXPORT_FILES):
        raise ExportError(f'internal error: export wrote {names}, expected {sorted(EXPORT_FILES)}')
    saved = load_file(folder / WEIGHTS_NAME, device='cpu')
    expected = model.state_dict()
    if saved.keys() != expected.keys() or not all(torch.equal(saved[k], expected[k].cpu()) for k in expected):
        raise ExportError(f'internal error: {WEIGHTS_NAME} does not hold the checkpoint\'s weights')
    config = json.loads((folder / CONFIG_NAME).read_text(encoding='utf-8'))
    if config.get('architecture') != arch:
        raise ExportError(f'internal error: {CONFIG_NAME} names {config.get("architecture")!r}, expected {arch!r}')


def _publish(tmp: Path, output_dir: Path) -> None:
    """Rename the finished ``tmp`` onto ``output_dir``; a previous export is swapped out first, restored if the
    rename fails, and deleted only once the new export is in place."""
    backup = None
    if output_dir.is_dir() and any(output_dir.iterdir()):
        backup = output_dir.parent / f'.{output_dir.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}'
        os.replace(output_dir, backup)
    try:
        os.replace(tmp, output_dir)  # onto a missing or empty folder: atomic on POSIX
    except BaseException:
        if backup is not None:
            os.replace(backup, output_dir)
        raise
    fsync_path(output_dir.parent)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def export_checkpoint(
        checkpoint: PathLike,
        output_dir: PathLike,
        push_to_hub: str | None = None,
        use_ema: bool = False,
        private: bool = False,
        revision: str | None = None,
        commit_message: str | None = None,
        overwrite: bool = False,
        token: str | None = None,
        license: str | None = None,
) -> Path:
    """Write a train.py checkpoint as a timm / Hub model folder (``model.safetensors``, ``config.json``,
    ``README.md``) and optionally push it to the Hub.

    The result loads with ``timm.create_model('local-dir:OUTPUT_DIR', pretrained=True)`` (after ``import timm_bot``)
    and computes bit-identical outputs to :func:`timm_bot.checkpoint.create_model_from_checkpoint`'s model.

    Args:
        checkpoint: a train.py checkpoint (``model_best.pth.tar``, ``last.pth.tar``) or its run folder (then
            ``model_best.pth.tar``). ``args.yaml``, ``summary.csv`` and ``validate*.json`` beside it go into the card.
        output_dir: the folder to create. Written atomically (temp folder + rename).
        push_to_hub: ``USER/NAME`` (or ``NAME``) to upload the folder to after writing it.
        use_ema: export the EMA weights (``state_dict_ema``; train.py ``model_ema: true``).
        private: create the Hub repo private (ignored if it exists).
        revision: Hub branch to push to (created from ``main`` if missing).
        commit_message: Hub commit message (default names the architecture).
        overwrite: replace ``output_dir`` if it holds a previous export; a non-empty folder that is not an export
            is never replaced.
        token: Hub token; default: ``HF_TOKEN`` or the ``hf auth login`` cache.
        license: license id for the card (default: the architecture's, ``apache-2.0``).

    Returns:
        ``output_dir`` as a :class:`~pathlib.Path`.

    Raises:
        ExportError: unreadable checkpoint, ``use_ema`` without EMA weights, a malformed ``push_to_hub`` repo id, or an
            ``output_dir`` it may not replace. Nothing is written.
        HubPushError: the upload failed; the export in ``output_dir`` is complete.
    """
    checkpoint = _resolve_checkpoint(checkpoint)
    output_dir = Path(output_dir)
    if push_to_hub:
        check_repo_id(push_to_hub)
    _check_destination(output_dir, checkpoint, overwrite)
    try:
        model, ckpt = create_model_from_checkpoint(checkpoint, use_ema=use_ema)
    except UnsafeCheckpointError as e:
        raise ExportError(str(e)) from None
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        if use_ema and 'state_dict_ema' in str(e):
            raise ExportError(f'--use-ema: {checkpoint} has no EMA weights (train with model_ema: true to get them); '
                              f'export without --use-ema / use_ema=False') from None
        raise ExportError(f'cannot export {checkpoint}: {e}') from e
    arch = ckpt['arch']
    data_config = {k: v for k, v in (ckpt.get('data_config') or {}).items() if v is not None}
    model.pretrained_cfg = {k: v for k, v in model.pretrained_cfg.items() if k not in _FOREIGN_CFG_KEYS}
    license = license or model.pretrained_cfg.get('license') or 'apache-2.0'
    card = build_model_card(ckpt, checkpoint, use_ema=use_ema, repo_id=push_to_hub, license=license,
                            num_params=sum(p.numel() for p in model.parameters()))
    model_config = {'pretrained_cfg': {'license': license, 'paper_name': PAPER_TITLE,
                                       'paper_ids': 'arXiv:1812.01187'}}
    if ckpt.get('label_names'):
        model_config['label_names'] = [str(n) for n in ckpt['label_names']]

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_dir.parent / f'.{output_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}'
    try:
        save_for_hf(model, str(tmp), model_config=model_config, safe_serialization=True,
                    data_config=data_config or None)
        (tmp / CARD_NAME).write_text(card, encoding='utf-8')
        # safetensors creates its file owner-only (0o600); give it the permissions the umask gives the card.
        os.chmod(tmp / WEIGHTS_NAME, (tmp / CARD_NAME).stat().st_mode & 0o777)
        _verify_export(tmp, model, arch)
        for path in tmp.iterdir():
            fsync_path(path)
        fsync_path(tmp)
        _check_destination(output_dir, checkpoint, overwrite)  # nothing appeared there meanwhile
        _publish(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _logger.info(f'exported {arch} ({"EMA weights" if use_ema else "weights"} of {checkpoint}) to {output_dir}: '
                 f'{", ".join(EXPORT_FILES)}')
    if push_to_hub:
        push_export_to_hub(output_dir, push_to_hub, private=private, revision=revision,
                           commit_message=commit_message, token=token)
    return output_dir


# ---------------------------------------------------------------------------------------------------------------------
# Pushing to the Hub
# ---------------------------------------------------------------------------------------------------------------------

def check_repo_id(repo_id: str) -> str:
    """Refuse a malformed Hub repo id (``USER/NAME`` or ``NAME``) before anything is written or uploaded."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ExportError(f'--push-to-hub {repo_id!r} is not a valid Hub repo id (USER/NAME): {e}') from None
    return repo_id


def _scrub(text: str, secret: str | None) -> str:
    return text.replace(secret, '***') if secret else text


def _retry_hint(export_dir: Path, repo_id: str, private: bool, revision: str | None) -> str:
    extra = (' --private' if private else '') + (f' --revision {shlex.quote(revision)}' if revision else '')
    folder = shlex.quote(str(export_dir))
    return (f'retry with: python -m timm_bot.export {folder} --push-to-hub {shlex.quote(repo_id)}{extra} '
            f'(or: hf upload {shlex.quote(repo_id)} {folder} .{extra})')


def _describe_push_failure(err: BaseException, repo_id: str, endpoint: str) -> str:
    status = getattr(getattr(err, 'response', None), 'status_code', None)
    detail = f'{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ""}'.rstrip(': ')
    if status == 401:
        return f'the Hub rejected the token (HTTP 401: log in with `hf auth login` or set HF_TOKEN) [{detail}]'
    if status == 403:
        return f'the token may not write to {repo_id} (HTTP 403: use a write token, check the namespace) [{detail}]'
    if status == 404:
        return f'repo {repo_id} or the revision was not found (HTTP 404) [{detail}]'
    if status is not None:
        return f'the Hub answered HTTP {status} [{detail}]'
    names = {c.__name__ for c in type(err).__mro__}
    if names & {'ConnectError', 'ConnectionError', 'TimeoutException', 'Timeout', 'NetworkError', 'ConnectTimeout'}:
        return f'could not reach the Hub at {endpoint} (no network?) [{detail}]'
    if 'OfflineModeIsEnabled' in names:
        return f'huggingface_hub is in offline mode (unset HF_HUB_OFFLINE) [{detail}]'
    return detail


def push_export_to_hub(
        export_dir: PathLike,
        repo_id: str,
        *,
        private: bool = False,
        revision: str | None = None,
        commit_message: str | None = None,
        token: str | None = None,
) -> str:
    """Upload an export folder (:func:`export_checkpoint`) to the Hub repo ``repo_id``; never uploads pickle files.

    Like timm's :func:`timm.models.push_to_hf_hub`: ``HfApi.create_repo(exist_ok=True, private=...)``, then (for a
    ``revision``) ``create_branch(exist_ok=True)``, then ``upload_folder``.

    Returns:
        The URL of the commit.

    Raises:
        ExportError: ``export_dir`` is not an export folder, or ``repo_id`` is malformed.
        HubPushError: no token, no network, HTTP error, ...: one line that never contains the token, names the
            cause, and how to retry. The folder is untouched.
    """
    import huggingface_hub
    from huggingface_hub import HfApi

    export_dir = Path(export_dir)
    missing = [n for n in (WEIGHTS_NAME, CONFIG_NAME) if not (export_dir / n).is_file()]
    if missing:
        raise ExportError(f'{export_dir} is not an export folder (no {", ".join(missing)}); create it with '
                          f'python -m timm_bot.export CHECKPOINT {shlex.quote(str(export_dir))}')
    check_repo_id(repo_id)
    retry = _retry_hint(export_dir, repo_id, private, revision)
    failure = None
    secret = token
    endpoint = huggingface_hub.constants.ENDPOINT
    try:
        secret = token or huggingface_hub.get_token()
        if not secret:
            raise HubPushError(f'cannot push {export_dir} to the Hub repo {repo_id}: no Hugging Face token found '
                               f'(set HF_TOKEN or run `hf auth login`); the export in {export_dir} is intact, {retry}')
        if not commit_message:
            arch = json.loads((export_dir / CONFIG_NAME).read_text(encoding='utf-8')).get('architecture', 'model')
            commit_message = f'Add {arch} trained with timm-bot (Bag of Tricks, He et al. 2019)'
        api = HfApi(token=secret, library_name='timm', library_version=timm.__version__)
        endpoint = api.endpoint
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type='model')
        repo_id = getattr(repo_url, 'repo_id', None) or repo_id  # may gain the user's namespace
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type='model')
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(export_dir), repo_type='model',
                                   revision=revision, commit_message=commit_message,
                                   ignore_patterns=PICKLE_PATTERNS)
    except HubPushError:
        raise
    except Exception as e:  # any client failure becomes one clear, scrubbed line
        failure = _describe_push_failure(e, repo_id, endpoint)
    if failure is not None:
        # Raised outside the except block: no chained exception (whose text could hold the token) is attached.
        raise HubPushError(_scrub(f'pushing {export_dir} to the Hub repo {repo_id} failed: {failure}; the export in '
                                  f'{export_dir} is intact, {retry}', secret))
    url = str(getattr(commit, 'commit_url', None) or getattr(commit, 'oid', '') or f'{repo_id}')
    _logger.info(f'pushed {export_dir} to {repo_id}: {url}')
    return url


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------

def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='python -m timm_bot.export', description=__doc__.split('\n\n')[0],
        usage='python -m timm_bot.export CHECKPOINT OUTPUT_DIR [--use-ema] [--overwrite] [--push-to-hub REPO_ID ...]\n'
              '       python -m timm_bot.export EXPORT_DIR --push-to-hub REPO_ID [...]   (upload an existing export)')
    parser.add_argument('checkpoint', help='train.py checkpoint (or its run folder), or an existing export folder '
                                           'to upload (then no OUTPUT_DIR)')
    parser.add_argument('output_dir', nargs='?', help='folder to write (must not exist, be empty, or --overwrite)')
    parser.add_argument('--use-ema', action='store_true', help="export the checkpoint's EMA weights")
    parser.add_argument('--overwrite', action='store_true', help='replace OUTPUT_DIR if it holds a previous export')
    parser.add_argument('--push-to-hub', metavar='REPO_ID', default=None, help='upload to this Hub repo (USER/NAME)')
    parser.add_argument('--private', action='store_true', help='create the Hub repo private')
    parser.add_argument('--revision', default=None, help='Hub branch to push to (created if missing)')
    parser.add_argument('--commit-message', default=None)
    parser.add_argument('--token-env', metavar='NAME', default=None,
                        help='read the Hub token from this environment variable (default: HF_TOKEN or the '
                             '`hf auth login` cache); tokens are never accepted on the command line')
    parser.add_argument('--license', default=None, help='license id for the model card (default apache-2.0)')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """CLI: exit 0 on success, 2 for a bad checkpoint / output folder, 1 when the push failed (export kept)."""
    logging.basicConfig(level=logging.WARNING, format='%(message)s')
    args = _parse_args(argv)
    token = None
    if args.token_env:
        token = os.environ.get(args.token_env)
        if not token:
            print(f'error: --token-env {args.token_env}: that environment variable is not set', file=sys.stderr)
            return 2
    try:
        source = Path(args.checkpoint)
        if args.output_dir is None:
            if not args.push_to_hub:
                print('error: give OUTPUT_DIR to export to (or an export folder and --push-to-hub to upload it)',
                      file=sys.stderr)
                return 2
            url = push_export_to_hub(source, args.push_to_hub, private=args.private, revision=args.revision,
                                     commit_message=args.commit_message, token=token)
            print(f'pushed {source} to {args.push_to_hub}: {url}')
            return 0
        out = export_checkpoint(source, args.output_dir, push_to_hub=args.push_to_hub, use_ema=args.use_ema,
                                private=args.private, revision=args.revision, commit_message=args.commit_message,
                                overwrite=args.overwrite, token=token, license=args.license)
        print(f'exported to {out}' + (f' and pushed to {args.push_to_hub}' if args.push_to_hub else ''))
        return 0
    except HubPushError as e:
        print(f'error: {_scrub(str(e), token)}', file=sys.stderr)
        return 1
    except (ExportError, FileNotFoundError) as e:
        print(f'error: {_scrub(str(e), token)}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
