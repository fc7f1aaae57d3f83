#!/usr/bin/env python3
"""Pipeline efficiency: train.py's real training loop vs a bare loop over random tensors already in memory.

    nice -n 5 python benchmarks/pipeline.py [--data-dir ../shared/data/cifar10] [--reps 3] [--workers 0,1,2]

*Real*: ``train.main(argv)`` -- train.py's own code, called in this process with command-line arguments -- with
the recipe switches that cost time: warmup + cosine, label smoothing, mixup (and, in the distillation rows, a
frozen teacher at T=20), on a class-balanced random subset of ``--data-dir/train.tar`` (the JPEG bytes copied
unchanged into a smaller tar, so an epoch is ``--batches`` batches; decode and augmentation cost per image are
those of the full set). The last epoch is timed (epoch 1 warms up) from train.py's call of
``train_loader.sampler.set_epoch`` to its call of ``evaluate`` -- the span of its own img/s timer, which is also
recorded -- by substituting timing wrappers for those two names in the ``train`` module; the loop is untouched.

*Bare*: in the same process, the same model, batch size and image size, ``x``/``y`` random tensors created once,
``cross_entropy -> backward -> SGD(nesterov).step -> zero_grad``, timed over the same number of steps after two
warm-up steps, **with the compute threads the real run used** (train.py sets them: cores - workers on a CPU run;
read back at its ``set_epoch`` call): ``bare_tN`` runs on N threads. ``bare+teacher_tN`` adds the teacher's no-grad
forward and a soft-target loss. Every real run starts from the process's thread count (``--threads``; 0: torch's
default, as a standalone train.py starts), and it is restored afterwards, so no run inherits another's threads.

Ratios: *wall* = real img/s / bare img/s at the same threads (distillation: / bare+teacher), what a user sees, but
noisy on a shared machine; *vs fastest bare* = real img/s / the fastest bare loop at any thread count, which shows
what train.py's threads-vs-workers choice costs; *CPU-cost* = bare CPU-ms per image / real CPU-ms per image
(``time.process_time`` of this process), much less sensitive to other load, valid where all the work is in this
process (workers=0). Runs are interleaved (each real run, then its bare reference unless this repetition already
measured it); medians over repetitions and the median of per-repetition ratios are reported. ``--profile``
also runs train.py (workers=0) under cProfile and prints the top functions, and the per-image data costs (decode,
augmentation, per-sample RNG seeding) are measured in-process.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _common import (
    DEFAULT_DATA,
    REPO,
    add_timing_args,
    apply_threads,
    machine_info,
    markdown_table,
    median,
    spread,
    write_json,
    write_subset_dataset,
)

EPOCH_RE = re.compile(r'epoch (\d+)/(\d+):.*?lr [^,]+, (\d+(?:\.\d+)?) img/s')


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data-dir', default=str(DEFAULT_DATA), help='folder with train.tar and val.tar')
    p.add_argument('--model', default='resnet18d_tiny_bot')
    p.add_argument('--teacher', default='resnet26d_tiny_bot',
                   help='teacher for the distillation rows (a timm name: random weights, only the cost matters)')
    p.add_argument('--batch-size', type=int, default=128)
    p.add_argument('--img-size', type=int, default=32)
    p.add_argument('--batches', type=int, default=12, help='training batches per epoch')
    p.add_argument('--epochs', type=int, default=2, help='train.py epochs; the last one is measured')
    p.add_argument('--reps', type=int, default=3, help='interleaved repetitions (medians are reported)')
    p.add_argument('--workers', default='0,1,2', help='train.py data-loader workers to compare')
    p.add_argument('--distill-workers', default='0,2', help='workers for the distillation rows ("" to skip them)')
    p.add_argument('--profile', action='store_true', help='also cProfile train.py (workers=0) and print the top')
    p.add_argument('--work-dir', default='', help='where the data subset and runs go (default: a temp dir)')
    add_timing_args(p, 'pipeline.json', 'seconds-long run for tests (tiny batches, 1 rep)')
    p.set_defaults(threads=0)  # train.py sets its own threads from torch's default: let it, as a user's run does
    args = p.parse_args(argv)
    apply_threads(args.threads)
    if args.smoke:
        args.batch_size, args.batches, args.epochs, args.reps = 16, 2, 2, 1
        args.workers, args.distill_workers = '0', '0'
    return args


# ---------------------------------------------------------------------------------------------------------------------
# Bare loop
# ---------------------------------------------------------------------------------------------------------------------

def bare_loop(model_name: str, batch_size: int, img_size: int, steps: int, teacher_name: str | None = None,
              temperature: float = 20.0, threads: int = 0) -> dict[str, float]:
    """Forward/backward/SGD on random tensors (plus a no-grad teacher forward when ``teacher_name``), on ``threads``
    torch threads (0: the process's).

    Returns ``{'img_s': wall-clock images/s, 'cpu_ms': process CPU milliseconds per image, 'threads': threads}``.
    """
    process_threads = torch.get_num_threads()
    torch.set_num_threads(threads or process_threads)
    try:
        return _bare_loop(model_name, batch_size, img_size, steps, teacher_name, temperature)
    finally:
        torch.set_num_threads(process_threads)


def _bare_loop(model_name: str, batch_size: int, img_size: int, steps: int, teacher_name: str | None,
               temperature: float) -> dict[str, float]:
    import timm

    import timm_bot  # noqa: F401
    torch.manual_seed(0)
    model = timm.create_model(model_name, num_classes=10).train()
    teacher = timm.create_model(teacher_name, num_classes=10).eval() if teacher_name else None
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    x = torch.randn(batch_size, 3, img_size, img_size)
    y = torch.randint(0, 10, (batch_size,))

    def step() -> None:
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        if teacher is not None:
            with torch.no_grad():
                soft = F.softmax(teacher(x) / temperature, dim=-1)
            loss = loss - (soft * F.log_softmax(logits / temperature, dim=-1)).sum(-1).mean() * temperature ** 2
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    tic, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    n = steps * batch_size
    return {'img_s': n / (time.perf_counter() - tic), 'cpu_ms': (time.process_time() - cpu) / n * 1e3,
            'threads': torch.get_num_threads()}


# ---------------------------------------------------------------------------------------------------------------------
# Real loop: train.py's main()
# ---------------------------------------------------------------------------------------------------------------------

def train_argv(args: argparse.Namespace, data: Path, out: Path, name: str, workers: int,
               teacher: str | None) -> list[str]:
    argv = ['--model', args.model, '--data_dir', str(data), '--img_size', str(args.img_size), '--crop_pct', '1.0',
            '--batch_size', str(args.batch_size), '--epochs', str(args.epochs), '--warmup_epochs', '1',
            '--sched', 'cosine', '--smoothing', '0.1', '--mixup', '0.2', '--lr', '0.1', '--workers', str(workers),
            '--scale', '[0.35, 1.0]', '--plots', 'false', '--output', str(out), '--experiment', name]
    if teacher:
        argv += ['--teacher', teacher, '--temperature', '20']
    return argv


def real_loop(argv: list[str], n_images: int) -> dict[str, float]:
    """Run ``train.main(argv)`` in this process; time its last training epoch; note the threads train.py set.

    train.py's loop is not touched: the epoch starts where it calls ``train_loader.sampler.set_epoch`` (right
    before its own timer starts) and ends where it calls ``evaluate`` (right after its timer stops). Returns
    ``{'img_s': wall-clock images/s, 'cpu_ms': CPU ms per image of this process (data loading included only with
    workers=0), 'logged_img_s': the img/s train.py itself logged for that epoch, 'threads': its compute threads}``.
    """
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import logging

    import train
    from timm_bot.sampler import ResumableSampler

    marks: list[tuple[float, float]] = []

    threads: list[int] = []

    class TimedSampler(ResumableSampler):
        def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
            marks.append((time.perf_counter(), time.process_time()))
            threads.append(torch.get_num_threads())  # what train.py set for its compute
            super().set_epoch(epoch, start_batch)

    ends: list[tuple[float, float]] = []
    orig_evaluate, orig_sampler = train.evaluate, train.ResumableSampler

    def timed_evaluate(*a: Any, **k: Any) -> Any:
        ends.append((time.perf_counter(), time.process_time()))
        return orig_evaluate(*a, **k)

    lines: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = Capture()
    logging.getLogger('train').addHandler(handler)
    train.evaluate, train.ResumableSampler = timed_evaluate, TimedSampler
    process_threads = torch.get_num_threads()
    try:
        rc = train.main(argv)
    finally:
        train.evaluate, train.ResumableSampler = orig_evaluate, orig_sampler
        logging.getLogger('train').removeHandler(handler)
        torch.set_num_threads(process_threads)  # train.py's choice must not leak into the next run
    if rc != 0:
        raise RuntimeError(f'train.py exited with {rc} for {argv}')
    epochs = [m for m in (EPOCH_RE.search(line) for line in lines) if m]
    (t0, c0), (t1, c1) = marks[-1], ends[-1]
    return {'img_s': n_images / (t1 - t0), 'cpu_ms': (c1 - c0) / n_images * 1e3,
            'logged_img_s': float(epochs[-1].group(3)) if epochs else float('nan'), 'threads': threads[-1]}


# ---------------------------------------------------------------------------------------------------------------------
# Per-image data costs and profile
# ---------------------------------------------------------------------------------------------------------------------

def data_costs(data: Path, img_size: int, n: int = 300) -> dict[str, float]:
    """Milliseconds per image (main process, 1 image at a time) of each stage of train.py's training data path."""
    import timm_bot  # noqa: F401
    from timm_bot.data import collate_skip_bad, create_image_dataset
    from timm_bot.sampler import SeededTransformDataset
    from timm_bot.transforms import create_paper_train_transform
    ds = create_image_dataset(data / 'train.tar', 'train')
    n = min(n, len(ds))
    tf = create_paper_train_transform(img_size, scale=(0.35, 1.0))
    seeded = SeededTransformDataset(ds, tf)

    def unseeded(i: int) -> tuple:
        img, target = ds[i]
        return tf(img), target
    res: dict[str, list[float]] = {'decode': [], 'decode+augment': [], 'decode+augment+seeding': [], 'collate': []}
    for _ in range(3):  # interleaved repetitions
        for key, fn in (('decode', lambda i: ds[i]), ('decode+augment', unseeded),
                        ('decode+augment+seeding', lambda i: seeded[(i, 1_000_003 * i)])):
            tic = time.perf_counter()
            for i in range(n):
                fn(i)
            res[key].append((time.perf_counter() - tic) / n * 1e3)
        batch = [unseeded(i) for i in range(min(128, n))]
        tic = time.perf_counter()
        for _ in range(10):
            collate_skip_bad(batch)
        res['collate'].append((time.perf_counter() - tic) / 10 / len(batch) * 1e3)
    return {k: round(median(v), 4) for k, v in res.items()}


def profile_train(argv: list[str], top: int = 25) -> str:
    """cProfile train.py in-process (same argv), sorted by total time; returns the printed top."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import train
    prof = cProfile.Profile()
    prof.enable()
    train.main(argv)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats('tottime').print_stats(top)
    return buf.getvalue()


def profile_dataset(data: Path, img_size: int, n: int = 1000) -> str:
    """cProfile ``SeededTransformDataset.__getitem__`` (train.py's per-sample data path) over ``n`` samples."""
    from timm_bot.data import create_image_dataset
    from timm_bot.sampler import SeededTransformDataset
    from timm_bot.transforms import create_paper_train_transform
    ds = create_image_dataset(data / 'train.tar', 'train')
    sds = SeededTransformDataset(ds, create_paper_train_transform(img_size, scale=(0.35, 1.0)))
    n = min(n, len(ds))
    prof = cProfile.Profile()
    prof.enable()
    for i in range(n):
        sds[(i, 1_000_003 * i)]
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats('cumulative').print_stats(
        r'sampler.py|transforms.py|manual_seed|format_stack|_lazy_call|data.py|reader_image_in_tar|Image.py')
    return f'{n} samples\n' + buf.getvalue()


# ---------------------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if str(REPO) not in sys.path:  # this checkout's train.py and timm_bot, also for the bare loops
        sys.path.insert(0, str(REPO))
    workers = [int(w) for w in args.workers.split(',') if w != '']
    distill_workers = [int(w) for w in args.distill_workers.split(',') if w != '']
    n_train = args.batches * args.batch_size
    per_class = -(-n_train // 10)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix='bench_pipeline_'))
    data = write_subset_dataset(args.data_dir, work / f'data_{per_class}', per_class, 20)
    info = machine_info()
    print(f'# pipeline: {args.model}, batch {args.batch_size}, {args.img_size}px, {args.batches} batches/epoch, '
          f'{args.reps} reps; {info["cpu"]}, {info["cores"]} cores, torch {info["torch"]}, timm {info["timm"]}',
          flush=True)

    reals = [f'real_w{w}' for w in workers] + [f'real_distill_w{w}' for w in distill_workers]
    samples: dict[str, list[dict[str, float]]] = {key: [] for key in reals}
    reference: dict[str, str] = {}  # real run -> its bare loop at the same threads (per repetition: the same)
    n_images = args.batches * args.batch_size
    bare_loop(args.model, args.batch_size, args.img_size, 1)  # warm-up, not timed (imports, allocator, kernels)

    def record(key: str, rep: int, v: dict[str, float]) -> None:
        samples.setdefault(key, []).append(v)
        print(f'rep {rep + 1}/{args.reps} {key}: {v["img_s"]:.1f} img/s, {v["cpu_ms"]:.2f} CPU ms/img, '
              f'{v["threads"]} thread(s)', flush=True)

    for rep in range(args.reps):
        for key in reals:
            w, distill = int(key.rsplit('_w', 1)[1]), 'distill' in key
            v = real_loop(train_argv(args, data, work / 'runs', f'{key}_{rep}', w, args.teacher if distill else None),
                          n_images)
            record(key, rep, v)
            bare = f'bare{"+teacher" if distill else ""}_t{v["threads"]}'
            reference[key] = bare
            if len(samples.get(bare, [])) <= rep:  # this repetition's bare loop on those threads
                record(bare, rep, bare_loop(args.model, args.batch_size, args.img_size, args.batches,
                                            args.teacher if distill else None, threads=v['threads']))

    def med(key: str, field: str = 'img_s') -> float:
        return median([v[field] for v in samples[key]])

    fastest = {kind: max((k for k in samples if k.startswith(kind + '_t')), key=med, default=None)
               for kind in ('bare', 'bare+teacher')}
    rows, results = [], []
    for key, vals in samples.items():
        ref = reference.get(key, key)
        ratio = med(key) / med(ref)
        best = fastest['bare+teacher' if 'teacher' in ref else 'bare']
        per_rep = [a['img_s'] / b['img_s'] for a, b in zip(vals, samples[ref])]
        # CPU cost ratio: only meaningful where all the work is in this process (bare loops, workers=0).
        in_process = key.startswith('bare') or key.endswith('_w0')
        cpu_ratio = med(ref, 'cpu_ms') / med(key, 'cpu_ms') if in_process else None
        cpu_per_rep = [b['cpu_ms'] / a['cpu_ms'] for a, b in zip(vals, samples[ref])] if in_process else []
        results.append({'config': key, 'threads': vals[0]['threads'], 'img_s': med(key),
                        'img_s_all': [v['img_s'] for v in vals], 'cpu_ms_per_img': med(key, 'cpu_ms'),
                        'reference': ref, 'ratio': ratio, 'ratio_per_rep': per_rep,
                        'median_ratio_per_rep': median(per_rep), 'fastest_bare': best,
                        'ratio_vs_fastest_bare': med(key) / med(best), 'cpu_ratio': cpu_ratio,
                        'cpu_ratio_per_rep': cpu_per_rep, 'runs': vals})
        rows.append([key, vals[0]['threads'], f'{med(key):.1f}', spread([v['img_s'] for v in vals]), ref,
                     f'{ratio:.3f}', f'{median(per_rep):.3f} ({spread(per_rep)})', f'{med(key) / med(best):.3f}',
                     f"{med(key, 'cpu_ms'):.2f}",
                     f'{cpu_ratio:.3f} ({spread(cpu_per_rep)})' if cpu_ratio else 'n/a (workers)'])
    table = markdown_table(['config', 'threads', 'img/s (median)', 'img/s range', 'relative to',
                            'wall ratio (of medians)', 'wall ratio per rep: median (range)', 'vs fastest bare',
                            'CPU ms/img', 'CPU-cost ratio (range)'], rows)
    teacher_cost = None
    if distill_workers:
        teacher = reference[f'real_distill_w{distill_workers[0]}']
        bare = teacher.replace('+teacher', '')
        teacher_cost = med(teacher, 'cpu_ms') / med(bare, 'cpu_ms') - 1 if bare in samples else None
        if teacher_cost is not None:
            table += (f'\n\nteacher ({args.teacher}) forward + soft loss adds {100 * teacher_cost:.0f}% to the '
                      f'bare step\'s CPU time ({med(bare, "cpu_ms"):.2f} -> {med(teacher, "cpu_ms"):.2f} CPU ms/img; '
                      f'wall: {bare} {med(bare):.1f}, {teacher} {med(teacher):.1f} img/s).')
    costs = data_costs(data, args.img_size, 60 if args.smoke else 300)
    compute_ms = med(fastest['bare'], 'cpu_ms') if fastest['bare'] else float('nan')
    table += ('\n\nper-image data cost in one process (ms): ' + ', '.join(f'{k} {v:.3f}' for k, v in costs.items())
              + f'; bare loop {compute_ms:.3f} CPU ms/image.')
    print(table, flush=True)

    profile = None
    if args.profile:
        profile = profile_train(train_argv(args, data, work / 'runs', 'profile', 0, None))
        profile += '\n\n# SeededTransformDataset.__getitem__, cumulative\n' + profile_dataset(data, args.img_size)
        print(profile)
        Path(args.out).with_name(Path(args.out).stem + '_profile.txt').write_text(
            f'# {" ".join(sys.argv)}\n# {info}\n{profile}')
    best = max((r for r in results if r['config'].startswith('real_w')), key=lambda r: r['ratio'])
    out = {'benchmark': 'pipeline', 'machine': info, 'command': 'python benchmarks/pipeline.py ' + ' '.join(
        argv if argv is not None else sys.argv[1:]), 'settings': {k: v for k, v in vars(args).items()},
        'results': results, 'best_real': best['config'], 'best_ratio': best['ratio'],
        'teacher_cost': teacher_cost, 'data_cost_ms_per_image': costs, 'bare_compute_ms_per_image': compute_ms,
        'table': table, 'profile': profile}
    write_json(out, args.out)
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
