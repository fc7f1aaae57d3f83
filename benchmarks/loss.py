#!/usr/bin/env python3
"""Loss cost: our index-based mixup + label-smoothing loss vs timm's dense mixup targets, and the distillation loss.

    nice -n 5 python benchmarks/loss.py [--batch-size 256] [--num-classes 1000] [--reps 7]

Each case times *target construction + loss forward + backward* on CPU for random logits ``(B, K)``:

* ``mixup+ls`` -- ours: ``timm_bot.mixup.BatchMixup(0.2)`` -> ``MixedTarget`` (class indices, lam) ->
  ``timm_bot.loss.SmoothedCrossEntropy(0.1)``; timm: ``timm.data.Mixup(mixup_alpha=0.2, cutmix_alpha=0,
  label_smoothing=0.1, mode='batch')`` -> dense ``B x K`` target -> ``timm.loss.SoftTargetCrossEntropy``.
  Both mixers are called for real, on a ``(B, 3, 1, 1)`` input so that mixing the images (identical work in both)
  does not hide the target/loss cost.
  ``SmoothedCrossEntropy`` is a fused autograd function (``softmax - q`` built in place in backward): nothing
  B x K is kept for backward and no dense target is built.
* ``ls`` -- label smoothing alone: ours vs ``timm.loss.LabelSmoothingCrossEntropy(0.1)``.
* ``distill_T20`` -- ``timm_bot.distill.DistillationLoss.distill_loss`` (soft-target cross entropy, T=20) vs the
  KL form of timm's ``LogitDistillationTask`` (``kl_div(log_softmax(s/T), log_softmax(t/T), log_target=True) *
  T^2``, its lines copied: the task class needs whole models). Teacher logits are an input (no teacher forward).

Time: process CPU time (``time.process_time``; with the default single torch thread this is the time the call
keeps a core busy, and much less sensitive to other processes than wall-clock time on a shared machine), median
over ``--reps`` interleaved repetitions (ours, timm, ours, timm, ...) of the mean of ``--iters`` calls.
Memory: the peak of *live bytes of CPU tensors allocated inside the call* (forward, backward and the gradient of
the logits), from ``torch.profiler``'s memory timeline (``profile_memory=True``); the logits and labels that exist
before the call are not counted. This is what the caching-free CPU allocator would need on top of the inputs.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _common import add_timing_args, apply_threads, machine_info, markdown_table, median, write_json


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--batch-size', type=int, default=256)
    p.add_argument('--num-classes', type=int, default=1000)
    p.add_argument('--reps', type=int, default=7)
    p.add_argument('--iters', type=int, default=50)
    p.add_argument('--temperature', type=float, default=20.0)
    add_timing_args(p, 'loss.json', 'seconds-long run for tests')
    args = p.parse_args(argv)
    apply_threads(args.threads)
    if args.smoke:
        args.batch_size, args.num_classes, args.reps, args.iters = 32, 100, 2, 3
    return args


def make_cases(b: int, k: int, temperature: float) -> dict[str, dict[str, Callable[[], None]]]:
    import timm.data
    import timm.loss

    from timm_bot.distill import DistillationLoss
    from timm_bot.loss import SmoothedCrossEntropy
    from timm_bot.mixup import BatchMixup

    torch.manual_seed(0)
    logits = torch.randn(b, k, requires_grad=True)
    teacher_logits = torch.randn(b, k)
    y = torch.randint(0, k, (b,))
    x = torch.randn(b, 3, 1, 1)

    ours_mix, ours_ce = BatchMixup(0.2), SmoothedCrossEntropy(0.1)
    timm_mix = timm.data.Mixup(mixup_alpha=0.2, cutmix_alpha=0.0, label_smoothing=0.1, num_classes=k, mode='batch')
    timm_soft_ce, timm_ls = timm.loss.SoftTargetCrossEntropy(), timm.loss.LabelSmoothingCrossEntropy(0.1)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        distill = DistillationLoss(torch.nn.Identity(), ours_ce, temperature=temperature)
    t = temperature

    def backward(loss: torch.Tensor) -> None:
        loss.backward()
        logits.grad = None

    def ours_mixup_ls() -> None:
        _, target = ours_mix(x, y)
        backward(ours_ce(logits, target))

    def timm_mixup_ls() -> None:
        _, target = timm_mix(x.clone(), y)  # timm mixes in place: give it a fresh input like a new batch
        backward(timm_soft_ce(logits, target))

    def timm_kl() -> None:  # timm.task.distillation.LogitDistillationTask, lines 419-421
        prob_s = F.log_softmax(logits / t, dim=-1)
        prob_t = F.log_softmax(teacher_logits / t, dim=-1)
        backward(F.kl_div(prob_s, prob_t, reduction='batchmean', log_target=True) * (t ** 2))

    return {
        'floor': {'torch': lambda: backward(F.cross_entropy(logits, y))},
        'mixup+ls': {'ours': ours_mixup_ls, 'timm': timm_mixup_ls},
        'ls': {'ours': lambda: backward(ours_ce(logits, y)), 'timm': lambda: backward(timm_ls(logits, y))},
        f'distill_T{t:g}': {'ours': lambda: backward(distill.distill_loss(logits, teacher_logits)), 'timm': timm_kl},
    }


def peak_bytes(fn: Callable[[], None]) -> int:
    """Peak live bytes of tensors created during ``fn()`` (torch.profiler memory timeline, CPU)."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action
    fn()  # warm-up outside the profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        fn()
    live = peak = 0
    for _, action, _, size in prof._memory_profile().timeline:
        if action == Action.CREATE:
            live += size
        elif action == Action.DESTROY:
            live -= size
        peak = max(peak, live)
    return peak


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine_info()
    cases = make_cases(args.batch_size, args.num_classes, args.temperature)
    times: dict[tuple[str, str], list[float]] = {(c, impl): [] for c, impls in cases.items() for impl in impls}
    for fns in cases.values():
        for fn in fns.values():
            fn()  # warm-up
    for _ in range(args.reps):
        for case, fns in cases.items():
            for impl, fn in fns.items():
                tic = time.process_time()
                for _ in range(args.iters):
                    fn()
                times[(case, impl)].append((time.process_time() - tic) / args.iters * 1e3)
    dense = args.batch_size * args.num_classes * 4
    floor_fn = cases.pop('floor')['torch']
    floor = {'ms': median(times.pop(('floor', 'torch'))), 'peak_bytes': peak_bytes(floor_fn)}
    results, rows = [], []
    for case, fns in cases.items():
        mem = {impl: peak_bytes(fn) for impl, fn in fns.items()}
        ms = {impl: median(times[(case, impl)]) for impl in fns}
        per_rep = [b / a for a, b in zip(times[(case, 'ours')], times[(case, 'timm')])]
        r = {'case': case, 'ours_ms': ms['ours'], 'timm_ms': ms['timm'], 'speedup': ms['timm'] / ms['ours'],
             'speedup_per_rep': per_rep, 'ours_peak_bytes': mem['ours'], 'timm_peak_bytes': mem['timm'],
             'memory_ratio': mem['ours'] / mem['timm'], 'dense_target_bytes': dense}
        results.append(r)
        rows.append([case, f"{r['ours_ms']:.3f}", f"{r['timm_ms']:.3f}", f"{r['speedup']:.2f}x",
                     f'{min(per_rep):.2f}..{max(per_rep):.2f}', f"{mem['ours'] / 2**20:.2f}",
                     f"{mem['timm'] / 2**20:.2f}", f"{r['memory_ratio']:.3f}"])
    table = markdown_table(['case', 'ours CPU ms', 'timm CPU ms', 'speedup (timm/ours)', 'per-rep speedup',
                            'ours peak MiB', 'timm peak MiB', 'memory ratio (ours/timm)'], rows)
    table += (f'\n\nReference: plain `F.cross_entropy(logits, labels)` forward+backward takes {floor["ms"]:.3f} ms '
              f'and peaks at {floor["peak_bytes"] / 2**20:.2f} MiB (log-softmax saved for backward, its gradient, '
              f'logits.grad): the floor for any log-softmax loss. Target tensors: ours two int64 index vectors '
              f'({2 * args.batch_size * 8 / 2**10:.1f} KiB), timm a dense float32 B x K target '
              f'({dense / 2**20:.2f} MiB).')
    table += (f'\n\nB={args.batch_size}, K={args.num_classes}, {torch.get_num_threads()} thread(s); '
              f'{args.reps} reps x {args.iters} calls, '
              f'{statistics.fmean(len(v) for v in times.values()):.0f} timings per cell.')
    print(table)
    write_json({'benchmark': 'loss', 'machine': info, 'command': 'python benchmarks/loss.py ' + ' '.join(
        argv if argv is not None else sys.argv[1:]), 'settings': vars(args), 'results': results,
        'floor_ce': floor, 'table': table},
        args.out)
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
