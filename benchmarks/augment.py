#!/usr/bin/env python3
"""Training data cost per image (issue 20): timm's default training transform vs the paper's, per image and split.

    nice -n 5 python benchmarks/augment.py [--img-size 224] [--reps 5] [--passes 4] [--batch-size 64]
    nice -n 5 python benchmarks/augment.py --img-size 32 --data ../shared/data/cifar10-mini/train.tar

Images (default): the two photographs scikit-learn ships (``load_sample_images``, 640x427), cut into 500x375
windows at 8 offsets each and re-encoded as JPEG quality 90 in a temp folder: ImageNet's typical size and
encoding, so decode costs what it costs there. ``--data`` takes a tar of class folders instead (the CIFAR-10 tars).

Loader side, one image at a time as a DataLoader worker does it (read the file, decode, transform), single thread,
process CPU time, interleaved repetitions (every variant once per repetition, medians reported):

* ``decode``: ``Image.open(f).convert('RGB')`` alone;
* ``timm_default``: + ``timm.data.create_transform(img_size, is_training=True)`` (crop, flip, colour jitter 0.4,
  normalize);
* ``paper_per_image``: + ``create_paper_train_transform(img_size)`` (today's per-image section 2 path);
* ``paper_loader``: + the loader side of ``create_paper_train_transform(img_size, device_augment=True)`` (crop,
  flip, uint8, drawn parameters).

Collate (``default_collate``) per image of float32 and of uint8 + parameters batches, and the device side
(``BatchPaperAugment``) run on this CPU on a batch of ``--batch-size``: its CPU ms per image, an upper bound for
an accelerator. Per-sample seeding (~0.04 ms, see pipeline.py) is left out: every variant pays it alike.
"""
from __future__ import annotations

import argparse
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _common import REPO, add_timing_args, apply_threads, machine_info, markdown_table, median, spread, write_json
from PIL import Image

LOADER_VARIANTS = ('decode', 'timm_default', 'paper_per_image', 'paper_loader')


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--data', default='', help='a tar of class folders of images (default: the sample photos)')
    p.add_argument('--max-images', type=int, default=64, help='images taken from --data')
    p.add_argument('--reps', type=int, default=5, help='interleaved repetitions (medians are reported)')
    p.add_argument('--passes', type=int, default=4, help='passes over the images per measurement')
    p.add_argument('--batch-size', type=int, default=64, help='batch of the collate and device-side measurements')
    add_timing_args(p, 'augment224.json', 'seconds-long run for tests')
    args = p.parse_args(argv)
    apply_threads(args.threads)
    if args.smoke:
        args.reps, args.passes, args.batch_size, args.max_images = 1, 1, 4, 4
    return args


def write_photos(folder: Path, size: tuple[int, int] = (500, 375), offsets: int = 8, quality: int = 90) -> list[Path]:
    """scikit-learn's sample photographs as ``size`` windows at ``offsets`` positions each, JPEG ``quality``."""
    from sklearn.datasets import load_sample_images
    paths = []
    for k, array in enumerate(load_sample_images().images):
        photo = Image.fromarray(array)
        for j in range(offsets):
            x = (photo.width - size[0]) * j // max(1, offsets - 1)
            y = (photo.height - size[1]) * (j % 2)
            paths.append(folder / f'photo{k}_{j}.jpg')
            photo.crop((x, y, x + size[0], y + size[1])).save(paths[-1], quality=quality)
    return paths


def extract_tar(tar: Path, folder: Path, n: int) -> list[Path]:
    """The first ``n`` images of a tar of class folders, written to ``folder`` (the decode then reads files)."""
    paths = []
    with tarfile.open(tar) as src:
        for m in src:
            if m.isfile() and len(paths) < n:
                paths.append(folder / f'{len(paths)}{Path(m.name).suffix}')
                paths[-1].write_bytes(src.extractfile(m).read())
    return paths


def decode(path: Path) -> Image.Image:
    with open(path, 'rb') as f:  # as timm's folder reader
        return Image.open(f).convert('RGB')


def loader_variants(img_size: int) -> dict[str, Callable[[Path], object]]:
    from timm.data import create_transform

    from timm_bot.transforms import create_paper_train_transform
    timm_tf = create_transform(img_size, is_training=True)
    paper_tf = create_paper_train_transform(img_size)
    loader_tf, _ = create_paper_train_transform(img_size, device_augment=True)
    return {'decode': decode, 'timm_default': lambda p: timm_tf(decode(p)),
            'paper_per_image': lambda p: paper_tf(decode(p)), 'paper_loader': lambda p: loader_tf(decode(p))}


def cpu_ms_per_call(fn: Callable[[], object], calls: int) -> float:
    tic = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - tic) / calls * 1e3


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if str(REPO) not in sys.path:  # this checkout's timm_bot, as pipeline.py does
        sys.path.insert(0, str(REPO))
    from torch.utils.data import default_collate

    import timm_bot  # noqa: F401
    from timm_bot.transforms import create_paper_train_transform
    info = machine_info()
    with tempfile.TemporaryDirectory(prefix='bench_augment_') as tmp:
        if args.data:
            paths = extract_tar(Path(args.data), Path(tmp), args.max_images)
        else:
            paths = write_photos(Path(tmp))[:args.max_images]
        sizes = sorted({decode(p).size for p in paths})
        print(f'# augment: {len(paths)} images ({sizes[0]}..{sizes[-1]}) -> {args.img_size} px, {args.reps} reps x '
              f'{args.passes} passes, batch {args.batch_size}; {info["cpu"]}, torch {info["torch"]}', flush=True)
        variants = loader_variants(args.img_size)
        loader_tf, batch_augment = create_paper_train_transform(args.img_size, device_augment=True)
        per_image_tf = create_paper_train_transform(args.img_size)
        batch_paths = [paths[i % len(paths)] for i in range(args.batch_size)]
        split_samples = [loader_tf(decode(p)) for p in batch_paths]
        float_samples = [per_image_tf(decode(p)) for p in batch_paths]
        images, params = default_collate(split_samples)
        batch_augment(images, params)  # warm-up
        samples: dict[str, list[float]] = {k: [] for k in (*LOADER_VARIANTS, 'collate_float32', 'collate_uint8',
                                                             'device_side')}
        for rep in range(args.reps):
            for key, fn in variants.items():
                samples[key].append(cpu_ms_per_call(lambda fn=fn: [fn(p) for p in paths], args.passes) / len(paths))
            batch_calls = max(1, args.passes * len(paths) // args.batch_size)
            for key, fn in (('collate_float32', lambda: default_collate(float_samples)),
                            ('collate_uint8', lambda: default_collate(split_samples)),
                            ('device_side', lambda: batch_augment(images, params))):
                samples[key].append(cpu_ms_per_call(fn, batch_calls) / args.batch_size)
            print(f'rep {rep + 1}/{args.reps}: ' + ', '.join(f'{k} {v[-1]:.3f}' for k, v in samples.items()),
                  flush=True)
    med = {k: median(v) for k, v in samples.items()}
    per_rep = {k: [v / t for v, t in zip(samples[k], samples['timm_default'])] for k in LOADER_VARIANTS}
    end_to_end = {'per-image path: loader + collate': med['paper_per_image'] + med['collate_float32'],
                  'split path on this CPU: loader + collate + device side':
                      med['paper_loader'] + med['collate_uint8'] + med['device_side']}
    rows = [[k, f'{med[k]:.3f}', spread(samples[k]),
             f'{median(per_rep[k]):.2f} ({spread(per_rep[k])})' if k in LOADER_VARIANTS else ''] for k in samples]
    rows += [[f'end to end, {k}', f'{v:.3f}', '', ''] for k, v in end_to_end.items()]
    table = markdown_table(['stage (per image)', 'CPU ms (median)', 'range', "x timm's default: median (range)"],
                           rows)
    ratio = median(per_rep['paper_loader'])
    table += (f'\n\nloader side / timm default: **{ratio:.2f}** (target <= 0.75); per-image paper path / timm '
              f'default: {median(per_rep["paper_per_image"]):.2f}; device side on this CPU: {med["device_side"]:.3f} '
              f'ms per image (batch {args.batch_size}, {torch.get_num_threads()} thread(s)). Ratios: medians of the '
              'per-repetition ratios.')
    print(table, flush=True)
    out = {'benchmark': 'augment', 'machine': info, 'command': 'python benchmarks/augment.py ' + ' '.join(
        argv if argv is not None else sys.argv[1:]), 'settings': vars(args), 'n_images': len(paths),
        'image_sizes': [list(s) for s in sizes], 'cpu_ms_per_image': med, 'samples': samples,
        'end_to_end_cpu_ms_per_image': end_to_end, 'ratio_to_timm_per_rep': per_rep, 'loader_vs_timm': ratio,
        'table': table}
    write_json(out, args.out)
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
