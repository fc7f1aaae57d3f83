#!/usr/bin/env python3
"""Wall time of train.py against timm's own train.py on the same CPU recipe, run as a user runs them.

    python benchmarks/vs_timm.py --timm-train PATH/TO/pytorch-image-models/train.py [--pairs 3]

Recipe (issue 20 item 5): resnet18d, 32 px, batch 128, 3 epochs of cifar10-mini, cosine + 1 warmup epoch, label
smoothing 0.1, mixup 0.2, 2 loader workers, on the CPU. Each repetition runs every variant once, one after the
other (interleaved); a variant's time is the whole process, start to exit. Variants of train.py: ``ours`` (its
defaults: split augmentation, torch's threads), ``ours_per_image`` (``device_augment: false``), ``ours_workers0``
(loading in the training process), ``ours_1thread`` (``OMP_NUM_THREADS=1``: the policy before issue 20, compute
threads = cores - workers).
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import DEFAULT_RESULTS, REPO, machine_info, markdown_table, median, spread, write_json

RECIPE = dict(epochs=3, batch=128, workers=2, lr=0.1, warmup=1, smoothing=0.1, mixup=0.2, img=32)


def commands(data: Path, timm_train: str, out: Path) -> dict[str, tuple[list, dict]]:
    r = RECIPE
    ours = [sys.executable, 'train.py', '--model', 'resnet18d', '--data_dir', data, '--img_size', r['img'],
            '--crop_pct', 1.0, '--batch_size', r['batch'], '--epochs', r['epochs'], '--sched', 'cosine',
            '--warmup_epochs', r['warmup'], '--smoothing', r['smoothing'], '--mixup', r['mixup'], '--workers',
            r['workers'], '--lr', r['lr'], '--device', 'cpu', '--plots', 'false', '--output', out / 'ours']
    timm = [sys.executable, timm_train, '--data-dir', data, '--train-split', 'train.tar', '--val-split', 'val.tar',
            '--model', 'resnet18d', '--num-classes', 10, '--input-size', 3, r['img'], r['img'], '--crop-pct', 1.0,
            '-b', r['batch'], '--epochs', r['epochs'], '--sched', 'cosine', '--warmup-epochs', r['warmup'],
            '--smoothing', r['smoothing'], '--mixup', r['mixup'], '--workers', r['workers'], '--lr', r['lr'],
            '--device', 'cpu', '--no-prefetcher', '--output', out / 'timm']
    env = {k: v for k, v in os.environ.items() if k != 'OMP_NUM_THREADS'}
    return {'ours': (ours, env), 'ours_per_image': ([*ours, '--device_augment', 'false'], env),
            'ours_workers0': ([*ours, '--workers', 0], env), 'ours_1thread': (ours, dict(env, OMP_NUM_THREADS='1')),
            'timm': (timm, env)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--timm-train', required=True, help="timm's train.py, from its GitHub repository")
    p.add_argument('--data-dir', default=str(REPO.parent / 'shared' / 'data' / 'cifar10-mini'))
    p.add_argument('--pairs', type=int, default=3, help='interleaved repetitions')
    p.add_argument('--out', default=str(DEFAULT_RESULTS / 'vs_timm.json'))
    args = p.parse_args(argv)
    times: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}  # user + system seconds of the run's processes (loader workers included)
    with tempfile.TemporaryDirectory() as tmp:
        runs = commands(Path(args.data_dir), args.timm_train, Path(tmp))
        for rep in range(args.pairs):
            for name, (cmd, env) in runs.items():
                tic, used = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
                res = subprocess.run([str(c) for c in cmd], cwd=REPO, env=env, capture_output=True, text=True)
                now = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu.setdefault(name, []).append(now.ru_utime + now.ru_stime - used.ru_utime - used.ru_stime)
                if res.returncode != 0:
                    print(f'{name} failed:\n{(res.stdout + res.stderr)[-3000:]}', file=sys.stderr)
                    return 1
                times.setdefault(name, []).append(time.perf_counter() - tic)
                print(f'rep {rep + 1} {name}: {times[name][-1]:.1f} s ({cpu[name][-1]:.1f} s CPU)', flush=True)
    ratios = {name: [t / ts for t, ts in zip(times[name], times['timm'])] for name in times}
    rows = [(name, f'{median(t):.1f}', spread(t), f'{median(ratios[name]):.3f}', spread(ratios[name]),
             f'{median(cpu[name]):.1f}') for name, t in times.items()]
    print(markdown_table(['variant', 'wall s (median)', 'range', 'wall ratio to timm (median of pairs)', 'range',
                          'CPU s (median)'], rows))
    write_json({'machine': machine_info(), 'recipe': RECIPE, 'seconds': times, 'cpu_seconds': cpu,
                'ratio_to_timm': ratios}, args.out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
