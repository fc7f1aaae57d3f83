#!/usr/bin/env python3
"""GPU check: train.py's accelerator paths end to end, and its speed next to timm's train.py.

    python benchmarks/gpu_check.py --device cuda --timm-train PATH/TO/pytorch-image-models/train.py
    python benchmarks/gpu_check.py --device cpu --smoke        # the same steps, tiny (tests/test_benchmarks.py)

Steps, each a real ``python train.py`` / ``validate.py`` / ``python -m timm_bot.export`` process on class folders of
photographs (scikit-learn's sample images, random crops re-encoded as JPEG): 1 epoch with AMP fp16, channels-last,
torch.compile, EMA and a teacher; the same with bf16; ``deterministic: true`` for 2 epochs, then the same run
SIGKILLed mid-epoch 2 and resumed, compared bit for bit; validate.py and an export loaded by plain timm; finally
images/s of train.py and of timm's train.py for the same model, size, AMP, channels-last and worker count.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import timm
from _common import DEFAULT_RESULTS, REPO, machine_info, markdown_table, write_json

EPOCH_IMG_S = re.compile(r'epoch \d+/\d+: .*?, (\d+) img/s')
TIMM_IMG_S = re.compile(r'\(\s*[\d.]+s,\s*([\d.]+)/s\)')  # timm's "Time: 0.1s, 900/s  (0.1s, 950/s)": the average


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cuda', help="train.py's device: cuda (the check) or cpu (CI)")
    p.add_argument('--model', default='resnet50d_bot', help="ours; timm's train.py gets the timm name (no _bot)")
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--batch-size', type=int, default=128)
    p.add_argument('--workers', type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument('--images', type=int, default=2560, help='training images (10 classes); val gets a fifth')
    p.add_argument('--teacher', default='resnet26d_tiny_bot', help='distillation teacher (no weights: random)')
    p.add_argument('--compile', action=argparse.BooleanOptionalAction, default=True)
    p.add_argument('--timm-train', help="timm's train.py (from its GitHub repository) for the speed comparison")
    p.add_argument('--work-dir', default=None, help='data and runs (default: a temporary folder)')
    p.add_argument('--out', default=str(DEFAULT_RESULTS / 'gpu_check.json'))
    p.add_argument('--smoke', action='store_true', help='tiny (CI): resnet18d_tiny_bot, 32 px, 24 small images, no '
                   'compile, and only the fp16 deterministic run (killed and resumed), validate and export')
    args = p.parse_args(argv)
    if args.smoke:
        args.model, args.img_size, args.batch_size, args.workers, args.images = 'resnet18d_tiny_bot', 32, 8, 0, 24
        args.compile = False
    return args


def write_photos(root: Path, n_train: int, width: int) -> Path:
    """``root/{train,val}/<class>/*.jpg``: 10 classes of random crops of scikit-learn's two sample photographs,
    ``width`` x 3/4 ``width`` px (ImageNet's 500 x 375: its decode and crop work), JPEG quality 90."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_images
    photos = [Image.fromarray(a) for a in load_sample_images().images]
    rng = np.random.RandomState(0)
    for split, n in (('train', n_train), ('val', max(10, n_train // 5))):
        for i in range(n):
            photo, cls = photos[i % 2], i % 10
            w, h = photo.size
            cw = int(rng.uniform(0.4, 0.9) * w)
            x, y = rng.randint(0, w - cw + 1), rng.randint(0, h - cw * 3 // 4 + 1)
            crop = photo.crop((x, y, x + cw, y + cw * 3 // 4)).rotate(36 * cls)  # the class: a rotation
            out = root / split / str(cls) / f'{i:05d}.jpg'
            out.parent.mkdir(parents=True, exist_ok=True)
            crop.resize((width, width * 3 // 4)).save(out, quality=90)
    return root


def python(*args: object, timeout: float = 3600) -> subprocess.CompletedProcess:
    tic = time.perf_counter()
    res = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                         timeout=timeout, env=dict(os.environ, PYTHONUNBUFFERED='1'))
    res.seconds = time.perf_counter() - tic
    return res


def train_argv(args: argparse.Namespace, data: Path, out: Path, name: str, *extra: object) -> list:
    return ['train.py', '--model', args.model, '--data_dir', data, '--img_size', args.img_size, '--crop_pct', 0.875,
            '--batch_size', args.batch_size, '--workers', args.workers, '--device', args.device, '--epochs', 1,
            '--warmup_epochs', 0, '--lr', 0.1, '--channels_last', 'true', '--model_ema', 'true', '--plots', 'false',
            '--output', out, '--experiment', name, '--log_interval', 5, *extra]


def checked(step: str, res: subprocess.CompletedProcess, results: dict) -> str:
    log = res.stdout + res.stderr
    results[step] = {'ok': res.returncode == 0, 'rc': res.returncode, 'seconds': round(res.seconds, 1)}
    if res.returncode != 0:
        results[step]['error'] = log.strip().splitlines()[-1] if log.strip() else ''
        print(f'{step}: FAILED (exit {res.returncode})\n{log[-3000:]}', file=sys.stderr)
    return log


def kill_mid_epoch_and_resume(argv: list, run: Path) -> subprocess.CompletedProcess:
    """Start ``argv``, SIGKILL it at a mid-epoch checkpoint of epoch 2, then ``--resume`` it to the end."""
    import torch
    p = subprocess.Popen([sys.executable, *map(str, argv)], cwd=REPO, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    ckpt, deadline = run / 'last.pth.tar', time.monotonic() + 3600
    while p.poll() is None and time.monotonic() < deadline:
        if ckpt.exists() and (state := torch.load(ckpt, weights_only=True))['epoch'] == 1 and state['batch_in_epoch']:
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    return python('train.py', '--resume', run)


def same_weights(a: Path, b: Path) -> bool:
    import torch
    wa, wb = (torch.load(p / 'last.pth.tar', weights_only=True) for p in (a, b))
    return all(torch.equal(wa[k][n], wb[k][n]) for k in ('state_dict', 'state_dict_ema') for n in wa[k])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix='gpu_check-'))
    data = work / 'data'
    if not (data / 'val').is_dir():
        write_photos(data, args.images, 64 if args.smoke else max(500, args.img_size))
    runs, results = work / 'runs', {'machine': machine_info(), 'args': {k: str(v) for k, v in vars(args).items()}}
    compile_flag = ['--torchcompile', 'true'] if args.compile else []
    teacher = ['--teacher', args.teacher]
    log = ''
    if not args.smoke:  # the smoke test covers the same code paths in the deterministic runs below
        log = checked('fp16_compile_ema_teacher', python(*train_argv(args, data, runs, 'fp16', '--amp', 'true',
                                                                     '--amp_dtype', 'float16', *compile_flag,
                                                                     *teacher)), results)
        checked('bf16', python(*train_argv(args, data, runs, 'bf16', '--amp', 'true', '--amp_dtype', 'bfloat16',
                                           *teacher)), results)
    deterministic = ['--amp', 'true', '--deterministic', 'true', '--epochs', 2, '--checkpoint_interval', 1, *teacher]
    log += checked('deterministic_reference', python(*train_argv(args, data, runs, 'ref', *deterministic)), results)
    ours = [float(m) for m in EPOCH_IMG_S.findall(log)]
    checked('killed_and_resumed', kill_mid_epoch_and_resume(train_argv(args, data, runs, 'kill', *deterministic),
                                                            runs / 'kill'), results)
    results['killed_and_resumed']['bitwise_equal'] = results['killed_and_resumed']['ok'] and \
        same_weights(runs / 'ref', runs / 'kill')
    checked('validate', python('validate.py', '--checkpoint', runs / 'ref', '--data_dir', data, '--device',
                               args.device, '--workers', args.workers), results)
    checked('export', python('-m', 'timm_bot.export', runs / 'ref', work / 'export', '--overwrite'), results)
    load = python('-c', f'import timm; timm.create_model("local-dir:{work / "export"}", pretrained=True)')
    checked('plain_timm_loads_export', load, results)
    timm_rate = None
    if args.timm_train and timm.is_model(args.model.removesuffix('_bot')):
        timm_log = checked('timm_train_py', python(
            args.timm_train, '--data-dir', data, '--val-split', 'val', '--model', args.model.removesuffix('_bot'),
            '--img-size', args.img_size, '-b', args.batch_size, '--workers', args.workers, '--epochs', 1, '--amp',
            '--channels-last', '--lr', 0.1, '--warmup-epochs', 0, '--output', work / 'timm', '--log-interval', 5,
            '--device', args.device, *([] if args.device.startswith('cuda') else ['--no-prefetcher'])), results)
        timm_rate = ([float(r) for r in TIMM_IMG_S.findall(timm_log)] or [None])[-1]
    results['speed'] = {'train_py_img_s': ours[-1] if ours else None, 'timm_train_py_img_s': timm_rate,
                        'ratio': ours[-1] / timm_rate if ours and timm_rate else None}
    rows = [(step, 'ok' if r['ok'] else f'FAILED: {r.get("error", "")}', r.get('bitwise_equal', ''), r['seconds'])
            for step, r in results.items() if isinstance(r, dict) and 'ok' in r]
    print(markdown_table(['step', 'result', 'bitwise equal', 'seconds'], rows))
    speed = results['speed']
    print(f'\n{args.model} {args.img_size} px on {args.device}: train.py {speed["train_py_img_s"]} img/s, timm '
          f'train.py {speed["timm_train_py_img_s"] or "not run (--timm-train)"} img/s')
    write_json(results, args.out)
    return 0 if all(r['ok'] for r in results.values() if isinstance(r, dict) and 'ok' in r) and \
        results['killed_and_resumed']['bitwise_equal'] else 1


if __name__ == '__main__':
    sys.exit(main())
