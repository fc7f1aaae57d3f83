#!/usr/bin/env python3
"""The paper's ablation ladder (Tables 4-6) and its refinements across architectures ("Table 7") at CPU scale.

Every run is ``train.py`` on recipe files from ``benchmarks/recipes/``; this script only schedules the runs, resumes
them and tabulates the results:

    nice -n 10 python benchmarks/ablation.py --preset cpu                  # everything: ladder + Table 7, 3 seeds
    nice -n 10 python benchmarks/ablation.py --preset cpu --table7 none    # the ladder only
    nice -n 10 python benchmarks/ablation.py --preset cpu --ladder all --table7 none --seeds 42   # + optional rows
    python benchmarks/ablation.py --preset cpu --dry-run                   # write the data, print the commands
    python benchmarks/ablation.py --preset cpu --report                    # tables + plot of what is done
    python benchmarks/ablation.py --preset smoke                           # minutes: proves the runner

A run by hand is ``python train.py --hparams benchmarks/recipes/ladder_base.yaml benchmarks/recipes/ladder_ROW.yaml
--data_dir DATA --seed S`` (Table 7: ``... table7_RECIPE.yaml --model ARCH``); ``--dry-run`` prints each one.

* **Ladder** (cumulative, as the paper): baseline, efficient, resnet_b, resnet_c, resnet_d, cosine, label_smoothing,
  mixup, distill; optional rows mixup_long (mixup for 2x the epochs, as the paper trains mixup 200 epochs instead
  of 120) and distill_no_mixup (``--ladder all`` or name them).
* **Table 7**: the baseline recipe, the refined one (efficient + cosine + label smoothing + mixup) and refined +
  distillation on several architectures (``--archs``), same data and epochs for each.
* **Teacher**: the label_smoothing row's recipe (resnet26d_tiny_bot, efficient + cosine + LS) for 2x the epochs,
  seed 42, trained once per preset before the first distillation run and shared by every student (the paper
  distils all its architectures from one ResNet-152-D).
* **Seeds**: every cell is run for each of ``--seeds`` (default 42,43,44). The report gives mean ± std, the per-seed
  values, each row's change against the previous row and whether it is outside 2 standard errors of the
  difference of the means (Welch: SE = sqrt(s1²/n1 + s2²/n2)).
* **Resume**: results are kept in ``OUTPUT/PRESET/results.json``, keyed ``table/row/arch/seed``. A finished run is
  skipped; an interrupted one continues with ``train.py --resume RUN_DIR``; a run folder without a checkpoint is
  started again. Two cells with identical resolved hparams (the ladder's mixup/distill rows and Table 7's refined
  cells of resnet26d_tiny_bot) share one run.
* **Output**: ``OUTPUT/PRESET/ablation.{md,png}``, copied to ``benchmarks/results/ablation_PRESET.{md,png}``.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

from _common import DEFAULT_DATA, DEFAULT_RESULTS, REPO, machine_info, markdown_table, write_json, write_subset_dataset

RECIPES = REPO / 'benchmarks' / 'recipes'
BASE = 'ladder_base.yaml'
TEACHER_SEED = 42


@dataclasses.dataclass(frozen=True)
class Preset:
    data_dir: str
    train_per_class: int | None
    val_per_class: int | None
    seeds: tuple[int, ...]
    overrides: tuple[tuple[str, str], ...] = ()  # train.py --KEY VALUE added to every run (on top of the recipes)
    note: str = ''


PRESETS = {
    'cpu': Preset(str(DEFAULT_DATA), 500, 100, (42, 43, 44),
                  note='~1.5-4 min a run on 2 idle cores (row times in benchmarks/README.md)'),
    # Proves the runner end to end in minutes; the numbers are chance level and mean nothing.
    # No step decay in 1 epoch: the milestones (epochs 2, 4, 6) would be refused as never reached.
    'smoke': Preset(str(DEFAULT_DATA.parent / 'cifar10-mini'), 30, 10, (42, 43),
                    (('epochs', '1'), ('decay_milestones', '[]')),
                    note='1 epoch a run: checks the runner, not the tricks'),
}


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    recipe: str | None  # override file on top of BASE; None: BASE alone
    change: str
    prev: str | None  # the row it is compared with
    paper: float | None
    paper_source: str
    distill: bool = False


# Paper top-1 (ImageNet), from the tables named; see benchmarks/README.md section 4 for the sources.
LADDER = (
    Row('baseline', None, 'original ResNet, step decay, small batch, no tricks', None, 75.87,
        'Table 4 (BS=256), ResNet-50'),
    Row('efficient', 'ladder_efficient.yaml', '+ 4x batch, warmup, zero-γ, no bias decay', 'baseline', 76.21,
        'Table 4 (BS=1024), ResNet-50'),
    Row('resnet_b', 'ladder_resnet_b.yaml', '+ ResNet-B', 'efficient', 76.66, 'Table 5, ResNet-50-B'),
    Row('resnet_c', 'ladder_resnet_c.yaml', '+ ResNet-C', 'resnet_b', 76.87, 'Table 5, ResNet-50-C'),
    Row('resnet_d', 'ladder_resnet_d.yaml', '+ ResNet-D', 'resnet_c', 77.16, 'Table 5, ResNet-50-D'),
    Row('cosine', 'ladder_cosine.yaml', '+ cosine decay', 'resnet_d', 77.91, 'Table 6, ResNet-50-D'),
    Row('label_smoothing', 'ladder_label_smoothing.yaml', '+ label smoothing', 'cosine', 78.31,
        'Table 6, ResNet-50-D'),
    Row('mixup', 'ladder_mixup.yaml', '+ mixup (same epochs)', 'label_smoothing', 79.15,
        'Table 6 (w/o distill; 200 epochs), ResNet-50-D'),
    Row('distill', 'ladder_distill.yaml', '+ distillation (with mixup)', 'mixup', 79.29,
        'Table 6 (w/ mixup), ResNet-50-D', distill=True),
)
OPTIONAL = (
    Row('mixup_long', 'ladder_mixup_long.yaml', 'label_smoothing + mixup, 2x epochs', 'label_smoothing', 79.15,
        'Table 6 (w/o distill; 200 epochs), ResNet-50-D'),
    Row('distill_no_mixup', 'ladder_distill_no_mixup.yaml', 'label_smoothing + distillation, no mixup',
        'label_smoothing', 78.67, 'Table 6 (w/o mixup), ResNet-50-D', distill=True),
)
TEACHER = Row('teacher', 'ladder_teacher.yaml', 'teacher: label_smoothing recipe, 2x epochs', None, None, '')
ROWS = {r.name: r for r in LADDER + OPTIONAL + (TEACHER,)}

T7 = (
    Row('baseline', 'table7_baseline.yaml', 'section 2 baseline', None, None, ''),
    Row('refined', 'table7_refined.yaml', 'efficient + cosine + LS + mixup', 'baseline', None, ''),
    Row('refined_distill', 'table7_refined_distill.yaml', 'refined + distillation', 'refined', None, '',
        distill=True),
)
T7_ROWS = {r.name: r for r in T7}
ARCHS = ('resnet26d_tiny_bot', 'mobilenetv3_small_050', 'convnext_atto')
# The paper's architecture each of ours stands in for: the ResNet, the MobileNet, and the one from another family.
PAPER_ARCH = {'resnet26d_tiny_bot': 'ResNet-50-D', 'mobilenetv3_small_050': 'MobileNet',
              'convnext_atto': 'Inception-V3', 'regnetx_002': 'Inception-V3'}
# Paper ImageNet top-1 per architecture: baseline and efficient from Table 3 (ResNet: the baseline is ResNet-50's,
# Table 3/4; efficient ResNet-50-D from Table 5), refined ("+ mixup w/o distill") and "+ distill w/ mixup" from Table
# 6, whose columns are ResNet-50-D, Inception-V3 and MobileNet. Inception-V3 and MobileNet values: from the paper as
# I recall it; check them against arXiv 1812.01187 before quoting (benchmarks/README.md, section 4).
PAPER_T7 = {
    'ResNet-50-D': {'baseline': 75.87, 'efficient': 77.16, 'refined': 79.15, 'refined_distill': 79.29},
    'Inception-V3': {'baseline': 77.32, 'efficient': 77.50, 'refined': 78.77, 'refined_distill': 78.34},
    'MobileNet': {'baseline': 69.03, 'efficient': 71.90, 'refined': 73.28, 'refined_distill': 72.51},
}
# Keys that do not change what a run computes: left out when comparing runs.
VOLATILE = {'output', 'experiment', 'plots', 'workers', 'log_interval', 'checkpoint_interval', 'device', 'data_dir',
            'pin_memory', 'export_dir', 'push_to_hub', 'export_ema', 'dist_timeout'}


# ---------------------------------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------------------------------

def summarize(values: list[float]) -> dict[str, Any]:
    """n, mean and sample standard deviation (None for n < 2) of the per-seed top-1 values."""
    n = len(values)
    return {'n': n, 'mean': statistics.fmean(values) if n else None,
            'std': statistics.stdev(values) if n >= 2 else None, 'values': list(values)}


def compare(new: list[float], old: list[float]) -> dict[str, Any]:
    """Change of the mean from ``old`` to ``new``, the standard error of that difference (Welch) and the verdict.

    ``outside`` is True when |delta| > 2 SE, False when not, None when either side has fewer than 2 seeds.
    ``seeds_needed``: seeds per row for 2 SE to fall below the observed |delta| at the pooled spread.
    """
    a, b = summarize(new), summarize(old)
    if not a['n'] or not b['n']:
        return {'delta': None, 'se': None, 'outside': None, 'seeds_needed': None}
    delta = a['mean'] - b['mean']
    if a['std'] is None or b['std'] is None:
        return {'delta': delta, 'se': None, 'outside': None, 'seeds_needed': None}
    se = math.sqrt(a['std'] ** 2 / a['n'] + b['std'] ** 2 / b['n'])
    pooled = (a['std'] ** 2 + b['std'] ** 2) / 2
    needed = math.ceil(8 * pooled / delta ** 2) if delta else None  # 2 sqrt(2 s²/n) < |delta|
    return {'delta': delta, 'se': se, 'outside': abs(delta) > 2 * se, 'seeds_needed': needed}


def verdict(c: dict[str, Any]) -> str:
    if c['outside'] is None:
        return 'n/a (< 2 seeds)' if c['delta'] is not None else '-'
    return '**outside noise**' if c['outside'] else 'inside noise'


def fmt_cell(s: dict[str, Any]) -> str:
    if not s['n']:
        return 'pending'
    return f"{s['mean']:.2f} ± {s['std']:.2f} (n={s['n']})" if s['std'] is not None else f"{s['mean']:.2f} (n=1)"


def fmt_delta(c: dict[str, Any]) -> str:
    if c['delta'] is None:
        return '-'
    return f"{c['delta']:+.2f}" + (f" (2 SE {2 * c['se']:.2f})" if c['se'] is not None else '')


# ---------------------------------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Run:
    table: str  # 'ladder' (the teacher is ladder/teacher) or 'table7'
    row: str
    arch: str
    seed: int
    files: tuple[str, ...]
    model: str | None  # --model override (Table 7)
    distill: bool

    @property
    def key(self) -> str:
        return f'{self.table}/{self.row}/{self.arch}/{self.seed}'

    @property
    def name(self) -> str:
        return f'{self.table}-{self.row}-{self.arch}-s{self.seed}'


def rel(path: str | os.PathLike) -> str:
    """``path`` relative to the repository root when inside it (train.py runs there): shorter commands."""
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)


def recipe_files(row: Row) -> tuple[str, ...]:
    return tuple(rel(RECIPES / f) for f in (BASE, row.recipe) if f)


def recipe_model(files: tuple[str, ...]) -> str:
    import yaml
    model = None
    for f in files:
        model = (yaml.safe_load((REPO / f).read_text()) or {}).get('model', model)
    return model


def ladder_run(name: str, seed: int) -> Run:
    row = ROWS[name]
    files = recipe_files(row)
    return Run('ladder', name, recipe_model(files), seed, files, None, row.distill)


def table7_run(name: str, arch: str, seed: int) -> Run:
    row = T7_ROWS[name]
    return Run('table7', name, arch, seed, recipe_files(row), arch, row.distill)


def train_args(run: Run, data_dir: str, teacher: str | None, p: Preset) -> list[str]:
    """The train.py arguments of ``run``: recipes, data, seed (+ model, teacher, preset overrides)."""
    args = ['--hparams', *run.files, '--data_dir', rel(data_dir), '--seed', str(run.seed)]
    if run.model:
        args += ['--model', run.model]
    if run.distill:
        args += ['--teacher', rel(teacher)]
    for k, v in p.overrides:
        args += [f'--{k}', v]
    return args


def resolve(args: list[str]) -> dict[str, Any]:
    """The hparams train.py would use for ``args`` (checked like train.py does), less the :data:`VOLATILE` keys."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from timm_bot.hparams import build_parser, load_hparams
    ns = vars(build_parser().parse_args(args))
    cwd = os.getcwd()
    os.chdir(REPO)  # relative paths are train.py's (repository root)
    try:
        hp = load_hparams(ns.pop('hparams'), {k: v for k, v in ns.items() if k != 'resume'})
    finally:
        os.chdir(cwd)
    return {k: v for k, v in dataclasses.asdict(hp).items() if k not in VOLATILE}


def read_summary(path: Path) -> list[dict[str, float]]:
    with open(path, newline='') as f:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]


IMG_S_RE = re.compile(r', (\d+(?:\.\d+)?) img/s')


def execute(run: Run, args: list[str], hp: dict[str, Any], root: Path) -> dict[str, Any]:
    """Train ``run`` (continuing an interrupted run) with train.py; metrics from its summary.csv."""
    run_dir = root / 'runs' / run.name
    if (run_dir / 'last.pth.tar').is_file():
        import yaml
        started = yaml.safe_load((run_dir / 'args.yaml').read_text()) if (run_dir / 'args.yaml').is_file() else {}
        changed = sorted(k for k in hp if k in started and started[k] != hp[k]
                         and not (k == 'lr' and hp[k] is None))  # args.yaml holds the lr linear scaling gave
        if changed:
            raise SystemExit(f'{run_dir} was started with other hparams ({", ".join(changed)}) than the recipes now '
                             f'give: delete that folder (or use --force) to run it again')
        cmd = ['train.py', '--resume', rel(run_dir)]
    else:
        if run_dir.exists():  # killed before its first checkpoint: start again
            shutil.rmtree(run_dir)
        cmd = ['train.py', *args, '--output', rel(root / 'runs'), '--experiment', run.name, '--plots', 'false']
    log = root / 'logs' / f'{run.name}.log'
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f'[{time.strftime("%H:%M:%S")}] {run.key}: python {" ".join(cmd)}', flush=True)
    tic = time.perf_counter()
    with open(log, 'a') as f:
        proc = subprocess.run([sys.executable, *cmd], cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - tic
    if proc.returncode != 0:
        raise SystemExit(f'{run.key}: train.py exited with {proc.returncode}; see {log}. Run the same command again '
                         'to resume it.')
    hist = read_summary(run_dir / 'summary.csv')
    if len(hist) != hp['epochs']:
        raise SystemExit(f'{run.key}: {run_dir} holds {len(hist)} epochs, the recipe {hp["epochs"]}')
    img_s = [float(m) for m in IMG_S_RE.findall(log.read_text())]
    return {'status': 'done', 'top1': hist[-1]['eval_top1'], 'top5': hist[-1]['eval_top5'],
            'best_top1': max(h['eval_top1'] for h in hist), 'epochs': len(hist), 'seconds': seconds,
            'train_img_s': img_s[-1] if img_s else None, 'run_dir': rel(run_dir), 'hparams': hp,
            'command': 'python train.py ' + ' '.join(args), 'log': rel(log)}


def plan(args: argparse.Namespace, seeds: list[int]) -> list[Run]:
    """Seed-major order: all cells for the first seed, then the next, so a partial set already covers every row."""
    ladder = names(args.ladder, [r.name for r in LADDER], [r.name for r in LADDER + OPTIONAL], 'ladder')
    t7 = names(args.table7, [r.name for r in T7], [r.name for r in T7], 'table7')
    archs = [a for a in args.archs.split(',') if a]
    runs = []
    for seed in seeds:
        runs += [ladder_run(r, seed) for r in ladder]
        runs += [table7_run(r, a, seed) for a in archs for r in t7]
    first = next((i for i, r in enumerate(runs) if r.distill), None)
    if first is not None:  # the teacher runs (or is found done) right before the first student needs it
        runs.insert(first, ladder_run('teacher', TEACHER_SEED))
    return runs


def names(spec: str, default: list[str], allowed: list[str], what: str) -> list[str]:
    if spec == 'none':
        return []
    if spec in ('', 'default'):
        return default
    if spec == 'all':
        return allowed
    out = [s.strip() for s in spec.split(',') if s.strip()]
    bad = [s for s in out if s not in allowed]
    if bad:
        raise SystemExit(f'--{what}: unknown {", ".join(bad)}; choose from {", ".join(allowed)}, all or none')
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------------

def cell_values(results: dict[str, Any], table: str, row: str, arch: str | None = None) -> list[float]:
    out = []
    for key, r in sorted(results['runs'].items()):
        t, rw, a, _ = key.split('/')
        if t == table and rw == row and (arch is None or a == arch) and r.get('status') == 'done':
            out.append(r['top1'])
    return out


def ladder_report(results: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    done_optional = [r for r in OPTIONAL if cell_values(results, 'ladder', r.name)]
    rows, stats = [], []
    for row in LADDER + tuple(done_optional):
        vals = cell_values(results, 'ladder', row.name)
        s = summarize(vals)
        c = compare(vals, cell_values(results, 'ladder', row.prev)) if row.prev else compare([], [])
        paper_prev = ROWS[row.prev].paper if row.prev else None
        runs = [r for k, r in results['runs'].items() if k.startswith(f'ladder/{row.name}/') and 'seconds' in r]
        minutes = statistics.fmean(r['seconds'] for r in runs) / 60 if runs else None
        needed = c['seeds_needed'] if c['outside'] is False else None
        stats.append(dict(row=row.name, **s, **c))
        rows.append([row.name, row.change, recipe_model(recipe_files(row)), fmt_cell(s),
                     ' / '.join(f'{v:.1f}' for v in vals) or '-', f'{fmt_delta(c)} vs {row.prev}' if row.prev else '-',
                     verdict(c), needed or '-', f'{row.paper:.2f}',
                     f'{row.paper - paper_prev:+.2f}' if paper_prev else '-', row.paper_source,
                     f'{minutes:.1f}' if minutes else '-'])
    header = ['row', 'change', 'model', 'top-1 % mean ± std', 'per seed', 'Δ mean (2 SE)', 'verdict',
              'seeds to resolve Δ', 'paper top-1 %', 'paper Δ', 'paper source', 'min/run']
    text = markdown_table(header, rows)
    whole = compare(cell_values(results, 'ladder', LADDER[-1].name), cell_values(results, 'ladder', 'baseline'))
    if whole['delta'] is not None:
        text += (f'\n\nWhole ladder, baseline -> {LADDER[-1].name}: {fmt_delta(whole)}, {verdict(whole)} '
                 f'(paper: {LADDER[-1].paper - LADDER[0].paper:+.2f}).')
    teacher = [r for k, r in results['runs'].items() if k.startswith('ladder/teacher/') and r.get('status') == 'done']
    if teacher:
        t = teacher[0]
        text += (f'\n\nTeacher ({t["hparams"]["model"]}, efficient + cosine + label smoothing, {t["epochs"]} epoch(s), '
                 f'seed {TEACHER_SEED}): top-1 {t["top1"]:.2f}%.')
    return text, stats


def table7_report(results: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    archs = list(dict.fromkeys([k.split('/')[2] for k in results['runs'] if k.startswith('table7/')]))
    rows, stats = [], []
    for arch in archs:
        vals = {r.name: cell_values(results, 'table7', r.name, arch) for r in T7}
        refined = compare(vals['refined'], vals['baseline'])
        distill = compare(vals['refined_distill'], vals['refined'])
        stats.append({'arch': arch, **{k: summarize(v) for k, v in vals.items()}, 'refined_vs_baseline': refined,
                      'distill_vs_refined': distill})
        pa = PAPER_ARCH.get(arch)
        p = PAPER_T7.get(pa, {})
        paper = (f"{p['baseline']:.2f} -> {p['refined']:.2f} ({p['refined'] - p['baseline']:+.2f}) -> "
                 f"{p['refined_distill']:.2f} ({p['refined_distill'] - p['refined']:+.2f})" if p else '-')
        rows.append([arch, fmt_cell(summarize(vals['baseline'])), fmt_cell(summarize(vals['refined'])),
                     f'{fmt_delta(refined)}, {verdict(refined)}', fmt_cell(summarize(vals['refined_distill'])),
                     f'{fmt_delta(distill)}, {verdict(distill)}', pa or '-', paper])
    header = ['architecture', 'baseline top-1 %', 'refined top-1 %', 'refined − baseline', 'refined + distill top-1 %',
              'distill − refined', 'paper counterpart', 'paper: baseline -> refined -> + distill']
    per_seed = []
    for arch in archs:
        for r in T7:
            v = cell_values(results, 'table7', r.name, arch)
            if v:
                per_seed.append(f'{arch} {r.name}: ' + ' / '.join(f'{x:.1f}' for x in v))
    text = markdown_table(header, rows)
    if per_seed:
        text += '\n\nPer seed: ' + '; '.join(per_seed) + '.'
    return text, stats


def make_report(results: dict[str, Any], preset_name: str, root: Path, results_dir: Path | None) -> str:
    d = results['data']
    epochs = [r['epochs'] for k, r in sorted(results['runs'].items())
              if 'epochs' in r and k.split('/')[1] not in ('teacher', 'mixup_long')]
    e = epochs[0] if epochs else '?'
    budget = (f'Preset `{preset_name}`: CIFAR-10 subset of {d["n_train"]} train / {d["n_val"]} val images at 32 px. '
              f'Budget per run: {e} epoch{"s" if e != 1 else ""} x {d["n_train"]} images'
              + (f' = {e * d["n_train"]:,} images seen' if isinstance(e, int) else '')
              + ' (mixup_long and the teacher: 2x); top-1 of the last epoch (no selection on val). Verdict: the '
                'change of the mean against the compared row is outside noise when |Δ| > 2 SE, SE = sqrt(s1²/n1 + '
                's2²/n2). "Seeds to resolve Δ": seeds per row for 2 SE < |Δ| at the pooled spread.')
    ladder_text, ladder_stats = ladder_report(results)
    t7_text, t7_stats = table7_report(results)
    text = f'{budget}\n\n### Ladder (Tables 4-6)\n\n{ladder_text}\n'
    if t7_stats:
        text += (f'\n### Table 7 counterpart: the refinements on other architectures\n\nSame data and epochs for every '
                 f'architecture; baseline = table7_baseline.yaml, refined = table7_refined.yaml (efficient + cosine + '
                 f'LS + mixup), + distill = table7_refined_distill.yaml (teacher above). Paper: ImageNet top-1 '
                 f'(baseline, Table 3; refined = "+ mixup w/o distill" and "+ distill w/ mixup", Table 6; for '
                 f'ResNet-50-D the baseline is ResNet-50\'s).\n\n{t7_text}\n')
    pending = results.get('pending') or []
    if pending:
        text += (f'\nPending: {len(pending)} runs ({", ".join(pending[:6])}{", ..." if len(pending) > 6 else ""}). '
                 f'`nice -n 10 python benchmarks/ablation.py --preset {preset_name}` continues.\n')
    (root / 'ablation.md').write_text(text)
    write_json({'ladder': ladder_stats, 'table7': t7_stats}, root / 'stats.json')
    _plot(results, root / 'ablation.png', preset_name)
    if results_dir:
        results_dir.mkdir(parents=True, exist_ok=True)
        for ext in ('md', 'png'):
            shutil.copyfile(root / f'ablation.{ext}', results_dir / f'ablation_{preset_name}.{ext}')
    return text


def _plot(results: dict[str, Any], path: Path, preset_name: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    rows = [r.name for r in LADDER + OPTIONAL if r in LADDER or cell_values(results, 'ladder', r.name)]
    archs = list(dict.fromkeys([k.split('/')[2] for k in results['runs'] if k.startswith('table7/')]))
    fig, axes = plt.subplots(1, 2 if archs else 1, figsize=(14 if archs else 8, 4.8), squeeze=False)
    a1 = axes[0][0]

    def bars(ax, x, vals_list, color, width=0.8, label=None):
        means = [statistics.fmean(v) if v else 0.0 for v in vals_list]
        stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in vals_list]
        ax.bar(x, means, width, yerr=stds, color=color, capsize=3, alpha=0.8, label=label)
        for xi, v in zip(x, vals_list):
            ax.plot([xi] * len(v), v, 'k.', ms=4)
        return [y for m, s, v in zip(means, stds, vals_list) if v for y in (m - s, m + s, *v)]

    vals = [cell_values(results, 'ladder', r) for r in rows]
    shown = bars(a1, range(len(rows)), vals, 'C0')
    a1.set_ylim(max(0.0, min(shown, default=0.0) - 5), max(shown, default=10.0) + 3)
    a1.set_xticks(list(range(len(rows))))
    a1.set_xticklabels(rows, rotation=35, ha='right', fontsize=8)
    a1.set_ylabel('top-1 % (mean ± std, dots: seeds)')
    a1.set_title(f'ladder, preset {preset_name}')
    if archs:
        a2, w = axes[0][1], 0.27
        allv = []
        for i, (r, c) in enumerate(zip(T7, ('C7', 'C0', 'C2'))):
            v = [cell_values(results, 'table7', r.name, a) for a in archs]
            allv += bars(a2, [j + (i - 1) * w for j in range(len(archs))], v, c, w, r.name)
        a2.set_ylim(max(0.0, min(allv, default=0.0) - 5), max(allv, default=10.0) + 3)
        a2.set_xticks(list(range(len(archs))))
        a2.set_xticklabels(archs, fontsize=8)
        a2.legend(fontsize=8)
        a2.set_title('Table 7 counterpart: baseline / refined / + distill')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--preset', default='cpu', choices=sorted(PRESETS))
    p.add_argument('--ladder', default='default', help='ladder rows, comma-separated; "all" adds the optional rows '
                   f'({", ".join(r.name for r in OPTIONAL)}); "none" skips the ladder')
    p.add_argument('--table7', default='default', help=f'Table 7 recipes ({", ".join(T7_ROWS)}), "none" skips')
    p.add_argument('--archs', default=','.join(ARCHS), help='Table 7 architectures (any timm model name)')
    p.add_argument('--seeds', default='', help="comma-separated seeds (default: the preset's, cpu: 42,43,44)")
    p.add_argument('--data-dir', default='', help="folder with train.tar and val.tar (default: the preset's)")
    p.add_argument('--train-per-class', type=int, default=0, help="override the preset's train images per class")
    p.add_argument('--val-per-class', type=int, default=0, help="override the preset's val images per class")
    p.add_argument('--output', default=str(REPO / 'output' / 'ablation'))
    p.add_argument('--results-dir', default=str(DEFAULT_RESULTS),
                   help='where the table and plot are copied ("" for nowhere)')
    p.add_argument('--force', action='store_true', help='re-run the selected runs even when done')
    p.add_argument('--report', action='store_true', help='only rewrite the tables and plot from results.json')
    p.add_argument('--dry-run', action='store_true', help='write the data subset, print the train.py commands')
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    p = PRESETS[args.preset]
    over = {k: v for k, v in (('train_per_class', args.train_per_class), ('val_per_class', args.val_per_class),
                              ('data_dir', args.data_dir)) if v}
    p = dataclasses.replace(p, **over)
    seeds = [int(s) for s in args.seeds.split(',') if s.strip()] if args.seeds else list(p.seeds)
    root = Path(args.output).resolve() / args.preset
    results_path = root / 'results.json'
    settings = {'data_source': str(Path(p.data_dir).resolve()), 'train_per_class': p.train_per_class,
                'val_per_class': p.val_per_class, 'overrides': [list(o) for o in p.overrides]}
    results: dict[str, Any] = {'preset': args.preset, 'settings': settings, 'runs': {}}
    if results_path.is_file():
        old = json.loads(results_path.read_text())
        if 'runs' not in old:
            raise SystemExit(f'{results_path} is from the earlier single-seed runner: move it (or its folder) away, '
                             'or use another --output')
        if old.get('settings') != settings:
            raise SystemExit(f'{results_path} holds results of other settings ({old.get("settings")}); use another '
                             '--output or delete it')
        results = old

    if not args.report:
        if not Path(p.data_dir).is_dir():
            raise SystemExit(f'data not found: {p.data_dir} (--data-dir: a folder with train.tar and val.tar)')
        data = write_subset_dataset(p.data_dir, root / 'data', p.train_per_class, p.val_per_class, seed=0)
        counts = {}
        for split in ('train', 'val'):
            with tarfile.open(data / f'{split}.tar') as tf:
                counts[split] = sum(m.isfile() for m in tf.getmembers())
        results['data'] = {'dir': rel(data), 'n_train': counts['train'], 'n_val': counts['val']}
        results.setdefault('machine', machine_info())
        teacher_ckpt = str(root / 'runs' / ladder_run('teacher', TEACHER_SEED).name / 'last.pth.tar')
        runs = plan(args, seeds)
        targs = {r.key: train_args(r, str(data), teacher_ckpt, p) for r in runs}
        hps = {r.key: resolve(targs[r.key]) for r in runs}  # checks every recipe before anything runs
        done = {k for k, r in results['runs'].items() if r.get('status') == 'done'}
        stale = [r.key for r in runs if r.key in done and results['runs'][r.key]['hparams'] != hps[r.key]]
        if stale and not args.force:
            raise SystemExit(f'{", ".join(stale[:3])} were run with other hparams than the recipes now give: --force '
                             're-runs them (or use another --output)')
        twins: dict[str, str] = {}  # key -> the key of an identical run (same resolved hparams) it reuses
        for i, run in enumerate(runs):
            earlier = [r.key for r in runs[:i]] + ([] if args.force else sorted(done - {r.key for r in runs}))
            same = [k for k in earlier if results['runs'].get(k, {}).get('same_as') is None and '/teacher/' not in k
                    and hps.get(k, results['runs'].get(k, {}).get('hparams')) == hps[run.key]]
            if same and run.row != 'teacher':
                twins[run.key] = same[0]
        to_do = [r for r in runs if args.force or r.key not in done]
        n_train = sum(r.key not in twins for r in to_do)
        print(f'{len(runs)} runs selected: {len(runs) - len(to_do)} done, {len(to_do) - n_train} the same run as '
              f'another cell, {n_train} to train (preset {args.preset}: {p.note})', flush=True)
        for run in runs:
            if run.key in done and not args.force:
                print(f'{run.key}: done (top-1 {results["runs"][run.key]["top1"]:.2f}), skipped', flush=True)
                continue
            twin = twins.get(run.key)
            if args.dry_run:
                print(f'{run.key}: ' + (f'the same run as {twin}' if twin else
                                        f'python train.py {" ".join(targs[run.key])}'))
                continue
            if twin:
                results['runs'][run.key] = dict(results['runs'][twin], same_as=twin)
                print(f'{run.key}: the same run as {twin} (top-1 {results["runs"][twin]["top1"]:.2f}), reused',
                      flush=True)
            else:
                if args.force and (root / 'runs' / run.name).exists():
                    shutil.rmtree(root / 'runs' / run.name)
                results['runs'][run.key] = r = execute(run, targs[run.key], hps[run.key], root)
                print(f'[{time.strftime("%H:%M:%S")}] {run.key}: top-1 {r["top1"]:.2f}% ({r["seconds"] / 60:.1f} min)',
                      flush=True)
            results['pending'] = [r.key for r in runs if results['runs'].get(r.key, {}).get('status') != 'done']
            write_json(results, results_path)
        if args.dry_run:
            return 0
        results['pending'] = [r.key for r in runs if results['runs'].get(r.key, {}).get('status') != 'done']
    if 'data' not in results:
        raise SystemExit(f'nothing run yet for preset {args.preset} in {root}')
    write_json(results, results_path)
    results_dir = Path(args.results_dir) if args.results_dir else None
    print(make_report(results, args.preset, root, results_dir))
    print(f'wrote {root / "ablation.md"}, {root / "ablation.png"}' + (f' (copied to {results_dir})' if results_dir
                                                                       else ''))
    return 0


if __name__ == '__main__':
    os.environ.setdefault('PYTHONWARNINGS', 'ignore')
    sys.exit(main())
