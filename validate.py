#!/usr/bin/env python3
"""Evaluate a train.py checkpoint, an export folder or a timm model with its own eval preprocessing (paper section 2).

    python validate.py --checkpoint output/train/RUN/model_best.pth.tar --data-dir digits [--use-ema]
    python validate.py --checkpoint output/train/RUN --data-dir digits              # a run: its model_best.pth.tar
    python validate.py --checkpoint output/train/RUN/export --data-dir digits       # an export folder
    python validate.py --model resnet50d --data-dir /data/imagenet                  # timm's pretrained weights

Writes JSON results (default: validate-<checkpoint>[-ema]-<data>-<split>[-<N>px][-crop<P>].json beside the
checkpoint, or in output/validate/ for --model; -<N>px and -crop<P> when --img-size / --crop-pct are given).
Exit codes: 0 ok, 2 bad input (one `error:` line on stderr, before any work), 130 interrupted. Options also take
`_` for `-`.
"""
import argparse
import json
import logging
import re
import sys
from pathlib import Path

import timm
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

import timm_bot  # noqa: F401  (registers the _bot models)
from timm_bot.amp import create_amp
from timm_bot.checkpoint import (
    create_model_from_checkpoint,
    create_pretrained_model,
    resolve_architecture,
    resolve_checkpoint,
)
from timm_bot.data import check_same_classes, collate_skip_bad, create_image_dataset
from timm_bot.distributed import resolve_device
from timm_bot.evaluate import evaluate
from timm_bot.transforms import create_paper_eval_transform
from timm_bot.wds import WdsImageDataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.error = lambda message: parser.exit(2, f'error: {message} (see --help)\n')  # one line, exit 2

    def opt(name: str, **kwargs) -> None:  # --data-dir and --data_dir
        parser.add_argument(*dict.fromkeys((f'--{name}', f'--{name.replace("-", "_")}')), **kwargs)

    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--checkpoint', default='', help='train.py checkpoint, run folder (its model_best.pth.tar) '
                        'or export folder')
    source.add_argument('--model', default='', help='timm model name, hf-hub:ORG/NAME or local-dir:PATH')
    opt('use-ema', action='store_true', help="evaluate the checkpoint's EMA weights")
    opt('data-dir', required=True, help="'digits', a folder with SPLIT/ or SPLIT.tar, a .tar of class folders, "
        'hfds/ID_OR_PATH (a Hugging Face dataset) or wds/SHARDS (WebDataset shards)')
    opt('split', default='val')
    opt('input-key', help='hfds/, wds/: the image column or member(s) (default: image, or the only Image column)')
    opt('target-key', help='hfds/, wds/: the label column or .json field (default: label, or the only ClassLabel)')
    opt('class-map', help='a .txt of class names, line i naming class i (as timm --class-map)')
    opt('batch-size', type=int, default=128)
    opt('workers', type=int, default=2)
    opt('img-size', type=int, default=None, help="override the model's eval input size")
    opt('crop-pct', type=float, default=None, help="override the model's crop_pct")
    opt('skip-bad-images', action='store_true', help='skip unreadable images (counted) instead of failing')
    opt('amp', action='store_true', help='bfloat16 autocast')
    opt('device', default='auto', help='auto, cpu, cuda, cuda:N or mps')
    opt('results-file', type=Path, help='JSON results path (default: named after the checkpoint or model, the data, '
        'the split and any --img-size/--crop-pct; beside the checkpoint, or in output/validate/ for --model)')
    opt('log-interval', type=int, default=50, help='progress line every N batches when stderr is not a terminal')
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> tuple[torch.device, Path]:
    """Everything that can be wrong in the command line, checked before any work: (device, results file)."""
    for flag, low in (('batch-size', 1), ('workers', 0), ('log-interval', 0)):
        if (value := getattr(args, flag.replace('-', '_'))) < low:
            raise ValueError(f'--{flag} {value}: must be >= {low}')
    if args.use_ema and not args.checkpoint:
        raise ValueError('--use-ema needs a --checkpoint trained with model_ema')
    if args.model and ':' not in args.model:
        resolve_architecture(args.model)  # a ValueError naming close names for an unknown one
    if args.results_file and not args.results_file.parent.is_dir():
        raise ValueError(f'--results-file {args.results_file}: folder {args.results_file.parent} does not exist')
    device = resolve_device(args.device)
    if args.results_file:
        return device, args.results_file
    ckpt = resolve_checkpoint(args.checkpoint) if args.checkpoint else None
    folder = ckpt.parent if ckpt else Path('output', 'validate')
    data = Path(args.data_dir.partition('/')[2] if args.data_dir.startswith(('hfds/', 'wds/')) else args.data_dir)
    data = 'digits' if args.data_dir == 'digits' else data.resolve().name.removesuffix('.tar')
    parts = [re.sub(r'(\.pth)?\.(tar|pt|pth|safetensors)$', '', ckpt.name) if ckpt else args.model,
             'ema' if args.use_ema else '', data, args.split, f'{args.img_size}px' if args.img_size else '',
             f'crop{args.crop_pct:g}' if args.crop_pct else '']  # other data or sizes: another file
    name = re.sub(r'[^\w.-]+', '_', '-'.join(p for p in parts if p))
    return device, folder / f'validate-{name}.json'


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    device, results_file = check_args(args)
    model, ckpt = create_model_from_checkpoint(args.checkpoint, args.use_ema) if args.checkpoint else (None, {})
    checkpoint = str(resolve_checkpoint(args.checkpoint)) if args.checkpoint else None
    logging.info(f'validate.py on {device}: {args.checkpoint or args.model}{" (EMA)" if args.use_ema else ""}, '
                 f'{args.data_dir} [{args.split}]')
    dataset = create_image_dataset(args.data_dir, args.split, skip_bad_images=args.skip_bad_images,
                                   input_key=args.input_key, target_key=args.target_key, class_map=args.class_map)
    if isinstance(dataset, WdsImageDataset):  # streamed shards: every sample once, in shard order
        dataset.configure(args.batch_size)
    if model is None and (args.model.startswith(('hf-hub:', 'local-dir:')) or timm.list_pretrained(args.model)):
        model = create_pretrained_model(args.model)  # one-line ValueError: offline, unknown tag, missing folder, ...
    elif model is None:
        logging.warning(f'warning: {args.model} has no pretrained weights (no --checkpoint): evaluating RANDOM weights')
        model = timm.create_model(args.model, num_classes=dataset.num_classes)
    if model.num_classes != dataset.num_classes or ckpt.get('label_names'):
        check_same_classes(ckpt.get('label_names') or range(model.num_classes), dataset.classes,
                           f'the {args.split} split of {args.data_dir}')
    data_config = timm.data.resolve_data_config({'img_size': args.img_size, 'crop_pct': args.crop_pct}, model=model)
    dataset.transform, normalize = create_paper_eval_transform(**data_config, device_augment=True)  # uint8 crops
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers, collate_fn=collate_skip_bad,
                        pin_memory=device.type == 'cuda')
    logging.info(f'{len(dataset)} images, {dataset.num_classes} classes, eval transform {data_config}')
    tty = sys.stderr.isatty()  # a tqdm bar on a terminal, else a progress line every --log-interval batches
    loader = tqdm(loader, desc='validate', leave=False, dynamic_ncols=True) if tty else loader
    autocast = create_amp(device, args.amp, 'bfloat16')[0]
    metrics = evaluate(model.to(device), loader, device, autocast, log_interval=0 if tty else args.log_interval,
                       normalize=normalize.to(device))
    results = {'model': ckpt.get('arch', args.model), 'checkpoint': checkpoint, 'use_ema': args.use_ema,
               'data_dir': str(args.data_dir), 'split': args.split, 'device': str(device), **metrics,
               'img_size': data_config['input_size'][-1], 'crop_pct': data_config['crop_pct']}
    results_file.parent.mkdir(parents=True, exist_ok=True)  # output/validate/ for --model
    results_file.write_text(json.dumps(results, indent=2) + '\n')
    print(f'top-1 {metrics["top1"]:.3f}%  top-5 {metrics["top5"]:.3f}%  loss {metrics["loss"]:.4f}  '
          f'({metrics["count"]} images) -> {results_file}')
    return 0


def run(argv: list[str] | None = None) -> int:
    """``main`` with bad input (incl. an unreadable image) as one ``error:`` line and exit 2; 130 when interrupted."""
    try:
        return main(argv)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(run())
