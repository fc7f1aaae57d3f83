#!/usr/bin/env python3
"""Evaluate a model with its own evaluation preprocessing (paper section 2: resize 256, center crop 224).

    python validate.py --model resnet50d_bot --data-dir /data/imagenet            # timm/_bot model (Hub weights)
    python validate.py --checkpoint output/train/RUN/model_best.pth.tar --data-dir digits
    python validate.py --model local-dir:exported/ --data-dir /data/imagenet      # or hf-hub:ORG/NAME

Prints top-1 / top-5 / loss and writes them as JSON (default: beside the checkpoint, else ./validate-SPLIT.json).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from pathlib import Path

import timm
import timm.data
import torch
from torch.utils.data import DataLoader

import timm_bot  # noqa: F401  (registers the _bot models)
from timm_bot.checkpoint import create_model_from_checkpoint
from timm_bot.data import BadImageError, collate_skip_bad, create_image_dataset
from timm_bot.evaluate import evaluate

_logger = logging.getLogger('validate')


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='', help='timm model name, hf-hub:ORG/NAME or local-dir:PATH')
    parser.add_argument('--checkpoint', default='', help='train.py checkpoint (its architecture is used)')
    parser.add_argument('--use-ema', action='store_true', help="evaluate the checkpoint's EMA weights")
    parser.add_argument('--data-dir', required=True, help="'digits', an ImageFolder root or a .tar of class folders")
    parser.add_argument('--split', default='val')
    parser.add_argument('--batch-size', type=int, default=128)
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--img-size', type=int, default=None, help="override the model's eval input size")
    parser.add_argument('--crop-pct', type=float, default=None, help="override the model's crop_pct (224/256)")
    parser.add_argument('--skip-bad-images', action='store_true')
    parser.add_argument('--amp', action='store_true', help='bfloat16 autocast')
    parser.add_argument('--device', default='auto')
    parser.add_argument('--results-file', default='', help='where to write the JSON results')
    args = parser.parse_args(argv)
    if not args.model and not args.checkpoint:
        parser.error('give --model, --checkpoint, or both')
    return args


def create_model(args: argparse.Namespace, num_classes: int) -> torch.nn.Module:
    """The model to evaluate: from a train.py checkpoint, or any timm source (incl. hf-hub:/local-dir:)."""
    if args.checkpoint:
        model, ckpt = create_model_from_checkpoint(args.checkpoint, use_ema=args.use_ema)
        if args.model and args.model != ckpt['arch']:
            raise ValueError(f'--model {args.model} but {args.checkpoint} holds a {ckpt["arch"]}: drop --model.')
    else:
        pretrained = args.model.startswith(('hf-hub:', 'local-dir:')) or bool(timm.list_pretrained(args.model))
        model = timm.create_model(args.model, pretrained=pretrained)
    if model.num_classes != num_classes:
        raise ValueError(f'the model predicts {model.num_classes} classes but the {args.split} split of '
                         f'{args.data_dir} has {num_classes}: evaluate it on data with the same classes.')
    return model


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    args = parse_args(argv)
    device = torch.device('cuda' if args.device == 'auto' and torch.cuda.is_available() else
                          'cpu' if args.device == 'auto' else args.device)
    try:
        dataset = create_image_dataset(args.data_dir, args.split, skip_bad_images=args.skip_bad_images)
        model = create_model(args, dataset.num_classes).to(device)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    overrides = {k: v for k, v in (('input_size', args.img_size and (3, args.img_size, args.img_size)),
                                   ('crop_pct', args.crop_pct)) if v}
    data_config = timm.data.resolve_data_config(overrides, model=model)
    dataset.transform = timm.data.create_transform(**data_config, is_training=False)
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers, collate_fn=collate_skip_bad)
    _logger.info(f'{args.checkpoint or args.model} on {args.data_dir} [{args.split}]: {len(dataset)} images, '
                 f'eval transform {data_config}')
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.amp else contextlib.nullcontext
    try:
        metrics = evaluate(model, loader, device, autocast)
    except BadImageError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    results = {'model': args.model or model.pretrained_cfg.get('architecture', ''), 'checkpoint': args.checkpoint,
               'data_dir': str(args.data_dir), 'split': args.split, **metrics,
               'img_size': data_config['input_size'][-1], 'crop_pct': data_config['crop_pct']}
    default = Path(args.checkpoint).parent if args.checkpoint else Path('.')
    results_file = Path(args.results_file or default / f'validate-{args.split}.json')
    results_file.write_text(json.dumps(results, indent=2) + '\n')
    print(f'top-1 {metrics["top1"]:.3f}%  top-5 {metrics["top5"]:.3f}%  loss {metrics["loss"]:.4f}  '
          f'({metrics["count"]} images) -> {results_file}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
