#!/usr/bin/env python3
"""Model tweaks (paper section 4, Table 5): parameters, MACs and CPU throughput of the ResNet-50 family.

    nice -n 5 python benchmarks/models.py [--img-size 224] [--batch-size 8] [--reps 5]

For each model: parameters; multiply-accumulates of one ``img-size`` image (``torch.utils.flop_counter.
FlopCounterMode`` FLOPs / 2 -- the paper's "FLOPs" column counts multiply-adds, e.g. 3.86G for ResNet-50 where
fvcore-style counters say ~4.1 G for the torchvision (= ResNet-B) layout); training img/s (forward + backward +
SGD step) and inference img/s (eval, no_grad) at batch ``--batch-size``, each relative to ``resnet50_bot`` (the
original ResNet-50); ``resnet50d_bot`` is also compared with timm's own ``resnet50d`` (same architecture, should
be 1.0 within noise).

Timing: every repetition measures every model once (interleaved: the models see the same machine load), each
measurement is ``--steps`` timed steps after one warm-up step; per-repetition ratios to the reference measured in
the same repetition, median over repetitions.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F
from _common import (
    add_timing_args,
    apply_threads,
    machine_info,
    markdown_table,
    median,
    spread,
    write_json,
)

MODELS = ('resnet50_bot', 'resnet50b_bot', 'resnet50c_bot', 'resnet50d_bot', 'resnet101d_bot', 'resnet152d_bot',
          'resnet50d')
REFERENCE, TIMM_PAIR = 'resnet50_bot', ('resnet50d_bot', 'resnet50d')
# Paper Table 5 (ResNet-50 tweaks on ImageNet, top-1 %); deeper -D models are not in Table 5.
PAPER_TOP1 = {'resnet50_bot': 76.21, 'resnet50b_bot': 76.66, 'resnet50c_bot': 76.87, 'resnet50d_bot': 77.16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--models', default=','.join(MODELS))
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--reps', type=int, default=5)
    p.add_argument('--steps', type=int, default=1, help='timed steps per measurement')
    add_timing_args(p, 'models.json', 'seconds-long run for tests (32px, batch 2, 1 rep)')
    args = p.parse_args(argv)
    apply_threads(args.threads)
    if args.smoke:
        args.img_size, args.batch_size, args.reps = 32, 2, 1
        args.models = 'resnet50_bot,resnet50d_bot,resnet50d'
    return args


def count_macs(model: torch.nn.Module, img_size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, img_size, img_size))
    return counter.get_total_flops() / 2


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    F.cross_entropy(model(x), y).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def main(argv: list[str] | None = None) -> int:
    import timm

    import timm_bot  # noqa: F401
    args = parse_args(argv)
    names = args.models.split(',')
    info = machine_info()
    torch.manual_seed(0)
    models = {n: timm.create_model(n) for n in names}
    opts = {n: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for n, m in models.items()}
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    y = torch.randint(0, 1000, (args.batch_size,))
    params = {n: sum(p.numel() for p in m.parameters()) for n, m in models.items()}
    macs = {n: count_macs(m, 224 if not args.smoke else args.img_size) for n, m in models.items()}

    # wall-clock img/s and CPU seconds per image (process_time) per model, phase and repetition
    keys = [(n, phase) for n in names for phase in ('train', 'infer')]
    ips: dict[tuple[str, str], list[float]] = {k: [] for k in keys}
    cpu: dict[tuple[str, str], list[float]] = {k: [] for k in keys}

    def measure(n: str, phase: str, step) -> None:
        tic, cpu_tic = time.perf_counter(), time.process_time()
        for _ in range(args.steps):
            step()
        ips[n, phase].append(args.steps * args.batch_size / (time.perf_counter() - tic))
        cpu[n, phase].append((time.process_time() - cpu_tic) / (args.steps * args.batch_size))

    for n, m in models.items():  # warm-up
        train_step(m.train(), opts[n], x, y)
    for rep in range(args.reps):
        for n, m in models.items():
            m.train()
            measure(n, 'train', lambda m=m, n=n: train_step(m, opts[n], x, y))
            m.eval()
            with torch.no_grad():
                m(x)
                measure(n, 'infer', lambda m=m: m(x))
        print(f'rep {rep + 1}/{args.reps}: ' + ', '.join(f"{n} {ips[n, 'train'][-1]:.1f}/{ips[n, 'infer'][-1]:.1f}"
                                                       for n in names) + ' img/s (train/infer)', flush=True)

    def rel(n: str, ref: str, phase: str) -> tuple[list[float], list[float]]:
        """Per-repetition speed ratios n / ref: from img/s, and from CPU time (speed = 1 / CPU cost)."""
        return ([a / b for a, b in zip(ips[n, phase], ips[ref, phase])],
                [b / a for a, b in zip(cpu[n, phase], cpu[ref, phase])])

    ref = REFERENCE if REFERENCE in names else names[0]
    results, rows = [], []
    for n in names:
        (tr, trc), (inf, infc) = rel(n, ref, 'train'), rel(n, ref, 'infer')
        r = {'model': n, 'train_rel_cpu': median(trc), 'infer_rel_cpu': median(infc), 'train_rel_cpu_all': trc,
             'infer_rel_cpu_all': infc, 'params_m': params[n] / 1e6, 'gmacs': macs[n] / 1e9,
             'train_img_s': median(ips[n, 'train']), 'infer_img_s': median(ips[n, 'infer']),
             'train_rel': median(tr), 'infer_rel': median(inf), 'train_rel_all': tr, 'infer_rel_all': inf,
             'paper_top1': PAPER_TOP1.get(n)}
        results.append(r)
        rows.append([n, f"{r['params_m']:.2f}", f"{r['gmacs']:.2f}", f"{r['train_img_s']:.2f}",
                     f"{r['train_rel']:.3f} ({spread(tr)})", f"{r['train_rel_cpu']:.3f} ({spread(trc)})",
                     f"{r['infer_img_s']:.2f}", f"{r['infer_rel']:.3f} ({spread(inf)})",
                     f"{r['infer_rel_cpu']:.3f} ({spread(infc)})", r['paper_top1'] or '-'])
    macs_at = 224 if not args.smoke else args.img_size
    table = markdown_table(['model', 'params (M)', f'GMACs @{macs_at}', 'train img/s', f'train speed rel. to {ref}',
                            'train rel. (CPU time)', 'infer img/s', f'infer speed rel. to {ref}',
                            'infer rel. (CPU time)', 'paper top-1 (Table 5)'], rows)
    pair = None
    if all(p in names for p in TIMM_PAIR):
        (tr, trc), (inf, infc) = rel(*TIMM_PAIR, 'train'), rel(*TIMM_PAIR, 'infer')
        pair = {'pair': list(TIMM_PAIR), 'train_ratio': median(tr), 'infer_ratio': median(inf),
                'train_ratio_cpu': median(trc), 'infer_ratio_cpu': median(infc),
                'train_ratio_all': tr, 'infer_ratio_all': inf,
                'same_params': params[TIMM_PAIR[0]] == params[TIMM_PAIR[1]],
                'same_macs': macs[TIMM_PAIR[0]] == macs[TIMM_PAIR[1]]}
        table += (f'\n\n{TIMM_PAIR[0]} / timm {TIMM_PAIR[1]}: train {pair["train_ratio"]:.3f} ({spread(tr)}), '
                  f'inference {pair["infer_ratio"]:.3f} ({spread(inf)}); by CPU time: train '
                  f'{pair["train_ratio_cpu"]:.3f} ({spread(trc)}), inference {pair["infer_ratio_cpu"]:.3f} '
                  f'({spread(infc)}); same params: {pair["same_params"]}, same MACs: {pair["same_macs"]}.')
    table += (f'\n\nbatch {args.batch_size} at {args.img_size}px, {torch.get_num_threads()} thread(s), {args.reps} '
              f'interleaved reps x {args.steps} step(s); relative = median of per-rep speed ratios (min..max), from '
              f'wall-clock img/s and from process CPU time per image (less sensitive to other load).')
    print(table)
    write_json({'benchmark': 'models', 'machine': info, 'command': 'python benchmarks/models.py ' + ' '.join(
        argv if argv is not None else sys.argv[1:]), 'settings': vars(args), 'results': results,
        'resnet50d_vs_timm': pair, 'table': table}, args.out)
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
