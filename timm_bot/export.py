"""Export a train.py checkpoint as a timm / Hugging Face Hub model folder (atomically), and push it to the Hub."""
import argparse
import contextlib
import csv
import json
import os
import re
import shlex
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

import timm
import torch
import yaml
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, get_token
from huggingface_hub.utils import HFValidationError, validate_repo_id
from timm.models import model_entrypoint, save_for_hf
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

from .checkpoint import (
    create_model_from_checkpoint,
    fsync_path,
    load_checkpoint,
    resolve_architecture,
    resolve_checkpoint,
)

__all__ = ['ExportError', 'HubPushError', 'check_repo_id', 'check_export_destination', 'export_checkpoint',
           'push_export_to_hub', 'timm_architecture', 'main']

EXPORT_FILES = ('model.safetensors', 'config.json', 'README.md')
TEMPLATE = Path(__file__).with_name('model_card.md')
PAPER_TITLE = 'Bag of Tricks for Image Classification with Convolutional Neural Networks'
CFG_KEYS = ('input_size', 'crop_pct', 'interpolation', 'mean', 'std', 'crop_mode', 'num_classes', 'pool_size',
            'first_conv', 'classifier', 'fixed_input_size')  # kept in config.json (not tag, url, ...: other weights)


class ExportError(ValueError):
    """Nothing was exported: bad checkpoint, no EMA weights, bad repo id, or an output folder it may not replace."""


class HubPushError(RuntimeError):
    """The upload failed; the export folder is intact. The message says how to retry and never holds the token."""


def _is_timm(arch: str) -> bool:
    return model_entrypoint(arch).__module__.startswith('timm.')


def _resnet_args(model: torch.nn.Module) -> dict[str, Any] | None:
    """The ``model_args`` that shape a timm :class:`ResNet` of timm's own blocks (``None`` for any other model)."""
    stages = [getattr(model, f'layer{i}', None) for i in range(1, 5)]
    if not isinstance(model, ResNet) or any(type(b) not in (BasicBlock, Bottleneck) for s in stages for b in s):
        return None
    deep, down = isinstance(model.conv1, torch.nn.Sequential), stages[1][0].downsample
    return dict(layers=[len(s) for s in stages], channels=[s[0].conv1.out_channels for s in stages],
                stem_type='deep' if deep else '', stem_width=model.conv1[0].out_channels if deep else 64,
                avg_down=isinstance(down, torch.nn.Sequential) and isinstance(down[0], torch.nn.AvgPool2d))


def timm_architecture(model: torch.nn.Module, arch: str) -> tuple[str, dict[str, Any]]:
    """``(name, model_args)`` for plain timm's same module tree (``resnet50d``, ``resnet18d`` + ``channels``, ...)."""
    want = _resnet_args(model)
    if _is_timm(arch) or want is None:
        return arch, {}
    base = re.sub(r'(_tiny)?_bot$', '', arch)
    by_block = 'resnet50' if type(model.layer1[0]) is Bottleneck else 'resnet18'
    for name in dict.fromkeys([base, re.sub(r'[a-z]+$', '', base), by_block]):
        if timm.is_model(name) and _is_timm(name):
            with torch.device('meta'):
                default = _resnet_args(timm.create_model(name)) or {}
                args = {k: v for k, v in want.items() if default.get(k) != v}
                candidate = timm.create_model(name, num_classes=model.num_classes, **args)
            if [repr(m) for m in candidate.children()] == [repr(m) for m in model.children()]:
                return name, args
    return arch, {}


def _public(value: Any, key: str = '') -> Any:
    """A recipe value without machine-local paths: output folders dropped, a local model's architecture, a name."""
    if isinstance(value, dict):
        return {k: _public(v, k) for k, v in value.items() if k not in ('output', 'export_dir', 'resume')}
    if not isinstance(value, str) or value.startswith('hf-hub:'):
        return value
    if key in ('model', 'teacher') and (value.startswith('local-dir:') or os.sep in value):
        path = Path(value.removeprefix('local-dir:')).expanduser()
        with contextlib.suppress(OSError, ValueError, KeyError):  # export, run folder, checkpoint: its architecture
            is_export = (path / 'config.json').is_file()
            return resolve_architecture(f'local-dir:{path}')[0] if is_export else \
                load_checkpoint(resolve_checkpoint(path))['arch']
    if key in ('model', 'teacher', 'data_dir') or os.path.isabs(value) or value.startswith('~'):
        return Path(value.removeprefix('local-dir:').rstrip('/\\')).name or value
    return value


def check_export_destination(output_dir: Path, checkpoint: Path, overwrite: bool) -> None:
    """The overwrite policy: a new or empty folder, or (with ``overwrite``) a previous export."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ExportError(f'output folder {output_dir} is a file: choose another path')
    if checkpoint.resolve().is_relative_to(output_dir.resolve()):
        raise ExportError(f'output folder {output_dir} contains the checkpoint {checkpoint}: choose another folder')
    if output_dir.is_dir() and any(output_dir.iterdir()) and not (overwrite and (output_dir / 'config.json').is_file()):
        raise ExportError(f'output folder {output_dir} is not empty: ' + ('it is not a previous export (no config.json)'
                          if overwrite else 'pass --overwrite to replace a previous export'))


def _model_card(ckpt: dict[str, Any], checkpoint: Path, model: torch.nn.Module, arch: str, export_args: dict[str, Any],
                use_ema: bool, push_to_hub: str | None, license: str) -> ModelCard:
    """README.md: Hub front matter (tags, dataset, base model, model-index of these weights) + model_card.md's text."""
    args, summary = _public(dict(ckpt.get('args') or {})), checkpoint.parent / 'summary.csv'
    history = list(ckpt.get('history') or [])
    if summary.is_file():  # the whole run (timm's update_summary columns), not only up to this checkpoint
        with summary.open(newline='') as f:
            history = [{k: float(v) if v else None for k, v in row.items()} for row in csv.DictReader(f)]
    dataset, split = str(args.get('data_dir') or 'unknown'), str(args.get('val_split') or 'val')
    prefix = 'eval_ema_' if use_ema else 'eval_'
    done = None if ckpt.get('batch_in_epoch') else ckpt.get('epoch')  # saved after epoch `done` - 1 (0-based)
    exported = next((r for r in history if done and r.get('epoch') == done - 1), {})  # the saved weights' epoch
    eval_results = [EvalResult(task_type='image-classification', task_name='Image Classification', metric_type=t,
                               metric_name=f'{n} accuracy (%)', metric_value=round(exported[prefix + k], 4),
                               dataset_type=dataset, dataset_name=dataset, dataset_split=split)
                    for k, t, n in (('top1', 'accuracy', 'Top-1'), ('top5', 'top_5_accuracy', 'Top-5'))
                    if exported.get(prefix + k) is not None]
    kind, _, spec = (ckpt.get('source') or '').partition(':')  # a fine-tune's base: Hub id or folder name
    base_model = (spec.split('@')[0] if kind == 'hf-hub' else Path(spec.rstrip('/\\')).name) or None
    name = push_to_hub.split('/')[-1] if push_to_hub else arch
    card_data = ModelCardData(library_name='timm', license=license, pipeline_tag='image-classification',
                              base_model=base_model if kind == 'hf-hub' else None,  # front matter: Hub ids only
                              # no `datasets:`: data_dir is a local folder or tar, whose name is not a Hub dataset id
                              tags=['image-classification', 'timm', 'timm-bot', 'bag-of-tricks', 'arxiv:1812.01187'],
                              model_name=name, eval_results=eval_results or None)
    return ModelCard.from_template(
        card_data, template_path=str(TEMPLATE), model_name=name, fine_tuned_from=base_model, ckpt=ckpt,
        architecture=arch, export_args=export_args,
        needs_plugin=not _is_timm(arch), dataset=dataset, val_split=split, use_ema=use_ema, done=done, prefix=prefix,
        params=sum(p.numel() for p in model.parameters()), repo_id=push_to_hub, history=history, exported=exported,
        recipe=yaml.safe_dump(args, sort_keys=False).rstrip() if args else '')


def export_checkpoint(checkpoint: str | os.PathLike, output_dir: str | os.PathLike, push_to_hub: str | None = None,
                      use_ema: bool = False, overwrite: bool = False, private: bool = False, token: str | None = None,
                      license: str = 'apache-2.0') -> Path:
    """Export a checkpoint (a run folder: its model_best.pth.tar); ExportError: nothing written, HubPushError: kept."""
    checkpoint, output_dir = Path(checkpoint), Path(output_dir)
    checkpoint = checkpoint / 'model_best.pth.tar' if checkpoint.is_dir() else checkpoint
    if push_to_hub:
        check_repo_id(push_to_hub)
    check_export_destination(output_dir, checkpoint, overwrite)
    try:
        model, ckpt = create_model_from_checkpoint(checkpoint, use_ema=use_ema)
    except (OSError, ValueError) as e:  # not found, refused pickle, corrupt, no EMA weights, ...
        raise ExportError(str(e).splitlines()[0]) from None
    arch, export_args = timm_architecture(model, ckpt['arch'])
    model.pretrained_cfg = dict({k: v for k, v in model.pretrained_cfg.items() if k in CFG_KEYS}, architecture=arch,
                                license=license, paper_ids='arXiv:1812.01187', paper_name=PAPER_TITLE)
    card = _model_card(ckpt, checkpoint, model, arch, export_args, use_ema, push_to_hub, license)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = (output_dir.parent / f'.{output_dir.name}.{part}-{uuid.uuid4().hex[:8]}' for part in ('tmp', 'old'))
    try:
        save_for_hf(model, str(tmp), model_config={'label_names': [str(n) for n in ckpt.get('label_names') or []]},
                    model_args=export_args, safe_serialization=True)  # pretrained_cfg: the checkpoint's data_config
        card.save(tmp / 'README.md')
        os.chmod(tmp / 'model.safetensors', (tmp / 'README.md').stat().st_mode & 0o777)  # not owner-only
        for path in [*tmp.iterdir(), tmp]:
            fsync_path(path)
        check_export_destination(output_dir, checkpoint, overwrite)  # nothing appeared there meanwhile
        if output_dir.is_dir():  # a previous export (or an empty folder): moved aside, deleted once replaced
            os.replace(output_dir, old)
        os.replace(tmp, output_dir)
    except BaseException:
        if old.exists() and not output_dir.exists():
            os.replace(old, output_dir)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_path(output_dir.parent)
    shutil.rmtree(old, ignore_errors=True)
    if push_to_hub:
        push_export_to_hub(output_dir, push_to_hub, private=private, token=token)
    return output_dir


def check_repo_id(repo_id: str) -> str:
    """Refuse a malformed Hub repo id (``USER/NAME`` or ``NAME``) before any work: raises ExportError."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ExportError(f'--push-to-hub {repo_id!r} is not a valid Hub repo id (USER/NAME): {e}') from None
    return repo_id


def push_export_to_hub(export_dir: str | os.PathLike, repo_id: str, *, private: bool = False,
                       token: str | None = None) -> str:
    """Upload only the export files to the Hub repo (created if needed); the commit URL. ExportError / HubPushError."""
    export_dir = Path(export_dir)
    if not all((export_dir / n).is_file() for n in EXPORT_FILES):
        raise ExportError(f'{export_dir} is not an export folder (no {"/".join(EXPORT_FILES)}): export one first')
    check_repo_id(repo_id)
    retry = (f'the export in {export_dir} is intact; retry with: python -m timm_bot.export '
             f'{shlex.quote(str(export_dir))} --push-to-hub {repo_id}' + (' --private' if private else ''))
    secret = token or get_token()
    if not secret:
        raise HubPushError(f'cannot push to {repo_id}: no Hugging Face token (HF_TOKEN or `hf auth login`); {retry}')
    arch = json.loads((export_dir / 'config.json').read_text()).get('architecture')  # for the commit message
    api = HfApi(token=secret, library_name='timm', library_version=timm.__version__)
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True, repo_type='model').repo_id
        return str(api.upload_folder(repo_id=repo_id, folder_path=export_dir, allow_patterns=list(EXPORT_FILES),
                                     commit_message=f'Add {arch} trained with timm-bot').commit_url)
    except Exception as e:  # any client failure: one scrubbed line, raised outside this block (no chained error)
        status = getattr(getattr(e, 'response', None), 'status_code', None)
        hint = {401: 'the Hub rejected the token (HTTP 401): set HF_TOKEN or run `hf auth login`',
                403: 'the token may not write to this repo (HTTP 403)'}.get(status, f'HTTP {status}' if status else '')
        if not status and {'ConnectError', 'ConnectionError', 'Timeout'} & {c.__name__ for c in type(e).__mro__}:
            hint = f'could not reach the Hub at {api.endpoint} (no network?)'
        failure = f'{hint} [{type(e).__name__}: {(str(e).splitlines() or [""])[0]}]'.lstrip()
    raise HubPushError(f'pushing {export_dir} to {repo_id} failed: {failure}; {retry}'.replace(secret, '***'))


def main(argv: list[str] | None = None) -> int:
    """CLI: exit 0 on success, 2 on bad input (nothing written), 1 when the push failed (the export is kept)."""
    parser = argparse.ArgumentParser(prog='python -m timm_bot.export', description=__doc__.split('\n')[0])
    parser.add_argument('checkpoint', help='train.py checkpoint or run folder; or an export folder to push')
    parser.add_argument('output_dir', nargs='?', help='export folder to write (omit to push CHECKPOINT as it is)')
    parser.add_argument('--use-ema', action='store_true', help="export the checkpoint's EMA weights")
    parser.add_argument('--overwrite', action='store_true', help='replace OUTPUT_DIR if it is a previous export')
    parser.add_argument('--push-to-hub', metavar='USER/NAME', help='upload the export to this Hub repo (HF_TOKEN)')
    parser.add_argument('--private', action='store_true', help='create the Hub repo private')
    args = parser.parse_args(argv)
    try:  # the Hub token: HF_TOKEN or `hf auth login`, read by huggingface_hub
        if args.output_dir is not None:
            export_checkpoint(args.checkpoint, args.output_dir, push_to_hub=args.push_to_hub, use_ema=args.use_ema,
                              overwrite=args.overwrite, private=args.private)
            print(f'exported to {args.output_dir}' + (f', pushed to {args.push_to_hub}' if args.push_to_hub else ''))
        elif args.push_to_hub:
            url = push_export_to_hub(args.checkpoint, args.push_to_hub, private=args.private)
            print(f'pushed {args.checkpoint} to {args.push_to_hub}: {url}')
        else:
            raise ExportError('give OUTPUT_DIR to export to, or an export folder and --push-to-hub to upload it')
        return 0
    except (HubPushError, ValueError, OSError) as e:  # ExportError is a ValueError
        print(f'error: {str(e).splitlines()[0] if str(e) else type(e).__name__}', file=sys.stderr)
        return 1 if isinstance(e, HubPushError) else 2


if __name__ == '__main__':
    sys.exit(main())
