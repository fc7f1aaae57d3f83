#!/usr/bin/env python3
"""The paper's ablation ladder (Tables 4-6) at CPU scale on CIFAR-10, one ``train.py`` run per row.

    nice -n 10 python benchmarks/ablation.py --preset cpu                       # the whole ladder (~2 h, 2 cores)
    nice -n 10 python benchmarks/ablation.py --preset cpu --rows baseline,efficient
    python benchmarks/ablation.py --preset smoke                                # minutes: proves the runner works
    python benchmarks/ablation.py --preset cpu --report                         # table + chart of what is done

Each row adds one trick to the previous one (cumulative), as in the paper:

====================  ===========================================================  ==================
row                   change (train.py keys)                                       paper (ImageNet)
====================  ===========================================================  ==================
baseline              original ResNet (resnet26_tiny_bot), NAG, step decay /10 at  Table 4: 75.87
                      1/4, 1/2, 3/4 of training, Xavier init, no zero-gamma, decay
                      on biases/BN, no warmup, small batch, lr = 0.1 x batch / 256
efficient             4x batch (lr by linear scaling), warmup (5/120 of training),  Table 4: 76.21
                      zero-gamma, no bias decay (no FP16 on CPU)
resnet_b              resnet26b_tiny_bot                                            Table 5: 76.66
resnet_c              resnet26c_tiny_bot                                            Table 5: 76.87
resnet_d              resnet26d_tiny_bot                                            Table 5: 77.16
cosine                sched cosine                                                  Table 6: 77.91
label_smoothing       smoothing 0.1                                                 Table 6: 78.31
mixup                 mixup 0.2 (the paper also trains mixup 200/120 longer; not    Table 6: 79.15
                      here)                                                         (mixup w/o distill)
distill               teacher (T=20) + mixup                                        Table 6: 79.29
                                                                                    (distill w/ mixup)
distill_no_mixup      label_smoothing + teacher (T=20), no mixup (not in the         Table 6: 78.67
                      default ladder; ``--rows distill_no_mixup``)
====================  ===========================================================  ==================

Paper numbers are ResNet-50 (Table 4: the BS=256 baseline and the BS=1024 efficient setting; Table 5: the tweaks)
and ResNet-50-D (Table 6) top-1 on ImageNet; 75.3 is He et al.'s original reference, not the paper's baseline.

The teacher (paper: ResNet-152-D with cosine + label smoothing) is trained by this runner first: the resnet_d
architecture with cosine + label smoothing for twice the row epochs, cached as ``teacher/model_best.pth.tar`` in the
output folder and reused. Every row uses the same seed; ``--spread-seeds`` re-runs the baseline and the last row
with other seeds to show the seed-to-seed spread. Top-1 is that of the *last* epoch (no selection on val).

Data: class-balanced random subsets of ``--data-dir/{train,val}.tar`` (JPEG bytes copied, seed 0) written once to
``OUTPUT/PRESET/data``. Rows already done are skipped (results in ``OUTPUT/PRESET/results.json``); a row interrupted
mid-way resumes from its ``last.pth.tar``; new rows are appended. The table (Markdown) and chart (PNG) are written
to ``OUTPUT/PRESET/`` and copied to ``benchmarks/results/ablation_PRESET.{md,png}``.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import DEFAULT_DATA, DEFAULT_RESULTS, REPO, machine_info, markdown_table, write_json, write_subset_dataset


@dataclasses.dataclass(frozen=True)
class Preset:
    data_dir: str
    train_per_class: int | None
    val_per_class: int | None
    epochs: int
    small_batch: int
    large_batch: int
    img_size: int = 32
    workers: int = 0
    teacher_epochs_factor: int = 2
    seed: int = 42
    spread_seeds: tuple[int, ...] = (43,)


PRESETS = {
    # ~5-9 min a row, ~2 h in all, on 2 shared CPU cores.
    'cpu': Preset(str(DEFAULT_DATA), 500, 100, epochs=8, small_batch=32, large_batch=128, workers=1),
    # Proves the runner end to end in minutes; the numbers mean nothing.
    'smoke': Preset(str(DEFAULT_DATA.parent / 'cifar10-mini'), 30, 10, epochs=1, small_batch=16, large_batch=64,
                    teacher_epochs_factor=1),
}

# Paper top-1 (ImageNet) for each row: (table, ResNet variant, top-1).
PAPER = {
    'baseline': ('Table 4 (BS=256)', 'ResNet-50', 75.87),
    'efficient': ('Table 4 (BS=1024)', 'ResNet-50', 76.21),
    'resnet_b': ('Table 5', 'ResNet-50-B', 76.66),
    'resnet_c': ('Table 5', 'ResNet-50-C', 76.87),
    'resnet_d': ('Table 5', 'ResNet-50-D', 77.16),
    'cosine': ('Table 6', 'ResNet-50-D', 77.91),
    'label_smoothing': ('Table 6', 'ResNet-50-D', 78.31),
    'mixup': ('Table 6 (w/o distill)', 'ResNet-50-D', 79.15),
    'distill': ('Table 6 (w/ mixup)', 'ResNet-50-D', 79.29),
    'distill_no_mixup': ('Table 6 (w/o mixup)', 'ResNet-50-D', 78.67),
}
LADDER = ('baseline', 'efficient', 'resnet_b', 'resnet_c', 'resnet_d', 'cosine', 'label_smoothing', 'mixup',
          'distill')
EXTRA = ('distill_no_mixup',)
CHANGE = {
    'baseline': 'original ResNet, step decay, no tricks', 'efficient': '+ 4x batch, warmup, zero-γ, no bias decay',
    'resnet_b': '+ ResNet-B', 'resnet_c': '+ ResNet-C', 'resnet_d': '+ ResNet-D', 'cosine': '+ cosine decay',
    'label_smoothing': '+ label smoothing', 'mixup': '+ mixup', 'distill': '+ distillation (with mixup)',
    'distill_no_mixup': 'label smoothing + distillation (no mixup)', 'teacher': 'teacher: resnet_d, cosine, LS',
}
TEACHER = 'teacher'


def row_hparams(row: str, p: Preset, teacher_ckpt: str) -> dict[str, Any]:
    """train.py overrides of ``row`` (cumulative ladder)."""
    e = p.epochs
    hp: dict[str, Any] = {
        'model': 'resnet26_tiny_bot', 'img_size': p.img_size, 'crop_pct': 1.0, 'scale': [0.35, 1.0],
        'epochs': e, 'batch_size': p.small_batch, 'lr': None, 'lr_base': 0.1, 'lr_base_size': 256, 'opt': 'nag',
        'sched': 'step', 'decay_milestones': sorted({max(1, round(e * f)) for f in (0.25, 0.5, 0.75)}),
        'warmup_epochs': 0.0, 'weight_init': 'xavier', 'zero_init_last': False, 'no_bias_decay': False,
        'smoothing': 0.0, 'mixup': 0.0, 'workers': p.workers,
    }
    if row == TEACHER:
        row, extra = 'label_smoothing', {'epochs': e * p.teacher_epochs_factor}
    else:
        extra = {}
    # distill_no_mixup: the ladder up to label smoothing, plus the teacher (below).
    upto = 'label_smoothing' if row == 'distill_no_mixup' else row
    steps = LADDER[:LADDER.index(upto) + 1]
    for step in steps:
        if step == 'efficient':
            hp.update(batch_size=p.large_batch, warmup_epochs=round(e * 5 / 120, 3), zero_init_last=True,
                      no_bias_decay=True)
        elif step in ('resnet_b', 'resnet_c', 'resnet_d'):
            hp['model'] = f'resnet26{step[-1]}_tiny_bot'
        elif step == 'cosine':
            hp['sched'] = 'cosine'
        elif step == 'label_smoothing':
            hp['smoothing'] = 0.1
        elif step == 'mixup':
            hp['mixup'] = 0.2
        elif step == 'distill':
            hp.update(teacher=teacher_ckpt, temperature=20.0)
    if row == 'distill_no_mixup':
        hp.update(teacher=teacher_ckpt, temperature=20.0)
    hp.update(extra)
    if hp['sched'] == 'step':
        hp['decay_milestones'] = sorted({max(1, round(hp['epochs'] * f)) for f in (0.25, 0.5, 0.75)})
    return hp


def to_cli(hp: dict[str, Any]) -> list[str]:
    out = []
    for k, v in hp.items():
        if isinstance(v, bool):
            v = 'true' if v else 'false'
        elif v is None:
            v = 'null'
        elif isinstance(v, list):
            v = '[' + ', '.join(str(x) for x in v) + ']'
        out += [f'--{k}', str(v)]
    return out


def parse_row(spec: str) -> tuple[str, int | None]:
    """'baseline' -> ('baseline', None); 'baseline@43' -> ('baseline', 43)."""
    name, _, seed = spec.partition('@')
    if name not in LADDER + EXTRA + (TEACHER,):
        raise SystemExit(f'unknown row {name!r}: choose from {", ".join(LADDER + EXTRA + (TEACHER,))}')
    return name, int(seed) if seed else None


def read_summary(path: Path) -> list[dict[str, float]]:
    with open(path, newline='') as f:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]


IMG_S_RE = re.compile(r'(\d+(?:\.\d+)?) img/s')


def run_row(key: str, hp: dict[str, Any], root: Path, log_dir: Path) -> dict[str, Any]:
    """Train one row with train.py (resuming an interrupted run); metrics from its summary.csv."""
    run_dir = root / 'runs' / key
    cmd = [sys.executable, str(REPO / 'train.py')] + to_cli(
        dict(hp, output=str(root / 'runs'), experiment=key, plots=False))
    if (run_dir / 'last.pth.tar').is_file():
        cmd += ['--resume', str(run_dir / 'last.pth.tar')]
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f'{key}.log'
    print(f'[{time.strftime("%H:%M:%S")}] {key}: {" ".join(cmd[1:])}', flush=True)
    tic = time.perf_counter()
    with open(log, 'a') as f:
        proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - tic
    if proc.returncode != 0:
        raise RuntimeError(f'{key}: train.py exited with {proc.returncode}; see {log}')
    hist = read_summary(run_dir / 'summary.csv')
    last = hist[-1]
    img_s = [float(m) for m in IMG_S_RE.findall(log.read_text())]
    return {'status': 'done', 'top1': last['eval_top1'], 'top5': last['eval_top5'],
            'best_top1': max(h['eval_top1'] for h in hist), 'epochs_done': len(hist), 'seconds': seconds,
            'train_img_s': img_s[-1] if img_s else None, 'hparams': hp, 'command': ' '.join(cmd[1:]),
            'log': str(log)}


# ---------------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------------

def make_report(results: dict[str, Any], preset_name: str, p: Preset, root: Path,
                results_dir: Path = DEFAULT_RESULTS) -> str:
    rows_out, prev = [], None
    done = results['rows']
    seed = p.seed
    for row in LADDER + EXTRA:
        r = done.get(row)
        if r is None and row in EXTRA:
            continue
        table, variant, paper = PAPER[row]
        seeds = [r['top1']] if r else []
        seeds += [v['top1'] for k, v in done.items() if k.startswith(row + '@')]
        spread = f'{min(seeds):.2f}..{max(seeds):.2f} (n={len(seeds)})' if len(seeds) > 1 else '-'
        paper_prev = PAPER['label_smoothing'][2] if row == 'distill_no_mixup' else (
            PAPER[LADDER[LADDER.index(row) - 1]][2] if row in LADDER and row != 'baseline' else None)
        ours_prev = (done.get('label_smoothing') if row == 'distill_no_mixup' else prev)
        if r:
            delta = f"{r['top1'] - ours_prev['top1']:+.2f}" if ours_prev else '-'
            rows_out.append([row, CHANGE[row], r['hparams']['model'], f"{r['top1']:.2f}", delta, spread,
                             f"{r['seconds'] / 60:.1f}", f'{paper:.2f}',
                             f'{paper - paper_prev:+.2f}' if paper_prev else '-', f'{table}, {variant}'])
        else:
            rows_out.append([row, CHANGE[row], '-', 'pending', '-', '-', '-', f'{paper:.2f}',
                             f'{paper - paper_prev:+.2f}' if paper_prev else '-', f'{table}, {variant}'])
        if row in LADDER:
            prev = r
    header = ['row', 'change', 'model', f'ours top-1 % (seed {seed})', 'Δ', 'seed spread (top-1)', 'minutes',
              'paper top-1 % (ImageNet)', 'paper Δ', 'paper source']
    t = done.get(TEACHER)
    n_train = results['data']['n_train']
    text = (f'Ablation ladder, preset `{preset_name}`: CIFAR-10 subset of {n_train} train / '
            f'{results["data"]["n_val"]} val images at {p.img_size}px, {p.epochs} epochs a row, batch '
            f'{p.small_batch} -> {p.large_batch}, seed {seed}; top-1 of the last epoch.\n\n'
            + markdown_table(header, rows_out))
    if t:
        text += (f'\n\nTeacher ({t["hparams"]["model"]}, cosine + label smoothing, {t["hparams"]["epochs"]} epochs): '
                 f'top-1 {t["top1"]:.2f}% ({t["seconds"] / 60:.1f} min).')
    missing = [r for r in LADDER if r not in done]
    missing += [f'{r}@{s}' for s in p.spread_seeds for r in (LADDER[0], LADDER[-1]) if f'{r}@{s}' not in done]
    if missing:
        text += (f'\n\nPending rows: {", ".join(missing)}. Produce them with `nice -n 10 python '
                 f'benchmarks/ablation.py --preset {preset_name} --rows {",".join(missing)}`.')
    (root / 'ablation.md').write_text(text + '\n')
    _plot(results, root / 'ablation.png', preset_name)
    if results_dir:
        results_dir.mkdir(parents=True, exist_ok=True)
        for ext in ('md', 'png'):
            if (root / f'ablation.{ext}').is_file():
                shutil.copyfile(root / f'ablation.{ext}', results_dir / f'ablation_{preset_name}.{ext}')
    return text


def _plot(results: dict[str, Any], path: Path, preset_name: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    done = results['rows']
    names = [r for r in LADDER + EXTRA if r in done or r in LADDER]
    ours = [done[r]['top1'] if r in done else 0.0 for r in names]
    err_lo, err_hi = [], []
    for r, v in zip(names, ours):
        vals = [v] + [x['top1'] for k, x in done.items() if k.startswith(r + '@')] if r in done else [0.0]
        err_lo.append(v - min(vals))
        err_hi.append(max(vals) - v)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 4.5))
    x = range(len(names))
    a1.bar(x, ours, yerr=[err_lo, err_hi], color=['C0' if r in done else 'lightgrey' for r in names], capsize=3)
    lo = min([v for v in ours if v > 0], default=0)
    y0 = max(0, lo - 10)
    a1.set_ylim(y0, max(ours + [1]) + 4)
    for i, (r, v) in enumerate(zip(names, ours)):
        if r in done:
            a1.text(i, v + 0.3, f'{v:.1f}', ha='center', va='bottom', fontsize=7)
        else:
            a1.text(i, y0 + 0.5, 'pending', ha='center', va='bottom', fontsize=7, rotation=90, color='grey')
    a1.set_title(f'ours: CIFAR-10 subset, preset {preset_name} (last-epoch top-1, seed spread)')
    a2.bar(x, [PAPER[r][2] for r in names], color='C1')
    a2.set_ylim(74, 80)
    a2.set_title('paper: ImageNet top-1 (Tables 4-6)')
    for a in (a1, a2):
        a.set_xticks(list(x))
        a.set_xticklabels(names, rotation=35, ha='right', fontsize=8)
        a.set_ylabel('top-1 %')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--preset', default='cpu', choices=sorted(PRESETS))
    p.add_argument('--data-dir', default='', help='folder with train.tar and val.tar (default: the preset\'s)')
    p.add_argument('--output', default=str(REPO / 'output' / 'ablation'))
    p.add_argument('--rows', default='', help='comma-separated rows (ROW or ROW@SEED); default: the whole ladder, '
                   'then the spread seeds of baseline and the last row')
    p.add_argument('--epochs', type=int, default=0, help='override the preset\'s epochs per row')
    p.add_argument('--train-per-class', type=int, default=0, help='override the preset\'s train images per class')
    p.add_argument('--val-per-class', type=int, default=0, help='override the preset\'s val images per class')
    p.add_argument('--workers', type=int, default=-1, help='override the preset\'s data-loader workers')
    p.add_argument('--results-dir', default=str(DEFAULT_RESULTS),
                   help='where the table and chart are copied ("" for nowhere)')
    p.add_argument('--force', action='store_true', help='re-run rows already done')
    p.add_argument('--report', action='store_true', help='only rewrite the table and chart')
    p.add_argument('--dry-run', action='store_true', help='print the train.py commands, run nothing')
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    p = PRESETS[args.preset]
    overrides = {k: v for k, v in (('epochs', args.epochs), ('train_per_class', args.train_per_class),
                                   ('val_per_class', args.val_per_class)) if v}
    if args.workers >= 0:
        overrides['workers'] = args.workers
    if args.data_dir:
        overrides['data_dir'] = args.data_dir
    p = dataclasses.replace(p, **overrides)
    root = Path(args.output) / args.preset
    results_path = root / 'results.json'
    import json
    settings = json.loads(json.dumps({k: v for k, v in dataclasses.asdict(p).items() if k != 'workers'}))
    results: dict[str, Any] = {'preset': args.preset, 'settings': settings, 'rows': {}}
    if results_path.is_file():
        old = json.loads(results_path.read_text())
        if old.get('settings') != settings:
            raise SystemExit(f'{results_path} holds results of other settings ({old.get("settings")}); use another '
                             f'--output or delete it')
        results = old

    if not args.report:
        if not Path(p.data_dir).is_dir():
            raise SystemExit(f'data not found: {p.data_dir} (--data-dir: a folder with train.tar and val.tar)')
        data = write_subset_dataset(p.data_dir, root / 'data', p.train_per_class, p.val_per_class, seed=0)
        import tarfile
        counts = {}
        for split in ('train', 'val'):
            with tarfile.open(data / f'{split}.tar') as tf:
                counts[split] = sum(m.isfile() for m in tf.getmembers())
        results['data'] = {'source': p.data_dir, 'dir': str(data), 'n_train': counts['train'],
                           'n_val': counts['val']}
        results.setdefault('machine', machine_info())
        if args.rows:
            specs = [parse_row(s.strip()) for s in args.rows.split(',') if s.strip()]
        else:
            specs = [(r, None) for r in LADDER] + [(r, s) for s in p.spread_seeds for r in (LADDER[0], LADDER[-1])]
        teacher_ckpt = str(root / 'runs' / TEACHER / 'model_best.pth.tar')
        needs_teacher = any(name in ('distill', 'distill_no_mixup') for name, _ in specs)
        if needs_teacher:  # the teacher runs (or is skipped if done) right before the first row that needs it
            specs = [s for s in specs if s[0] != TEACHER]
            specs.insert(next(i for i, (n, _) in enumerate(specs) if n.startswith('distill')), (TEACHER, None))
        for name, seed in specs:
            key = name if seed is None else f'{name}@{seed}'
            if results['rows'].get(key, {}).get('status') == 'done' and not args.force:
                print(f'{key}: done already (top-1 {results["rows"][key]["top1"]:.2f}), skipped', flush=True)
                continue
            hp = dict(row_hparams(name, p, teacher_ckpt), data_dir=str(data), seed=seed if seed is not None
                      else p.seed)
            if args.dry_run:
                print(f'{key}: python train.py {" ".join(to_cli(hp))}')
                continue
            if args.force and (root / 'runs' / key).exists():
                shutil.rmtree(root / 'runs' / key)
            results['rows'][key] = run_row(key, hp, root, root / 'logs')
            r = results['rows'][key]
            print(f'[{time.strftime("%H:%M:%S")}] {key}: top-1 {r["top1"]:.2f}% (best {r["best_top1"]:.2f}), '
                  f'{r["seconds"] / 60:.1f} min', flush=True)
            write_json(results, results_path)
        if args.dry_run:
            return 0
    if 'data' not in results:
        raise SystemExit(f'nothing run yet for preset {args.preset} in {root}')
    write_json(results, results_path)
    results_dir = Path(args.results_dir) if args.results_dir else None
    print(make_report(results, args.preset, p, root, results_dir))
    print(f'wrote {root / "ablation.md"}, {root / "ablation.png"}' + (f' (copied to {results_dir})' if results_dir
                                                                       else ''))
    return 0


if __name__ == '__main__':
    os.environ.setdefault('PYTHONWARNINGS', 'ignore')
    sys.exit(main())
