"""PNG plots of a run: the per-iteration learning rate (sections 3.1, 5.1) and per-epoch loss/accuracy curves."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ['plot_lr', 'plot_curves']


def _save(fig: Figure, path: Path) -> None:
    tmp = path.with_name(path.name + '.tmp.png')
    fig.savefig(tmp, dpi=100, bbox_inches='tight')
    os.replace(tmp, path)


def plot_lr(lrs: Sequence[float], updates_per_epoch: int, path: Path, title: str = '') -> None:
    """Learning rate of every iteration, x axis in epochs."""
    from matplotlib.figure import Figure  # here: matplotlib's import costs half a second of every run's start
    stride = max(1, len(lrs) // 4000)
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.plot([i / updates_per_epoch for i in range(0, len(lrs), stride)], list(lrs)[::stride])
    ax.set(xlabel='epoch', ylabel='learning rate', title=title or 'learning rate per iteration')
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_curves(history: Sequence[dict], path: Path) -> None:
    """Train/val loss (log scale) and val top-1/top-5 per 1-based epoch, EMA curves if present, best epoch marked."""
    from matplotlib.figure import Figure
    epochs = [row['epoch'] + 1 for row in history]
    fig = Figure(figsize=(10, 3.5))  # no pyplot: no GUI backend, no global figure state
    ax_loss, ax_acc = fig.subplots(1, 2)
    series = [(ax_loss, 'train_loss', 'train loss'), (ax_loss, 'eval_loss', 'val loss'),
              (ax_acc, 'eval_top1', 'val top-1'), (ax_acc, 'eval_top5', 'val top-5'),
              (ax_loss, 'eval_ema_loss', 'EMA val loss'), (ax_acc, 'eval_ema_top1', 'EMA val top-1')]
    for ax, key, label in series:
        if all(key in row for row in history):
            ax.plot(epochs, [row[key] for row in history], marker='o', markersize=3, label=label)
    losses = [row[k] for row in history for k in ('train_loss', 'eval_loss') if row.get(k, 0) > 0]
    if losses and max(losses) / min(losses) > 10:  # e.g. distillation's T^2-scaled train loss beside the val loss
        ax_loss.set_yscale('log')
    best = max(history, key=lambda row: row['eval_top1'])
    ax_acc.axvline(best['epoch'] + 1, color='grey', linestyle=':', label=f'best: epoch {best["epoch"] + 1}')
    for ax, label in ((ax_loss, 'loss'), (ax_acc, 'accuracy (%)')):
        ax.set(xlabel='epoch', ylabel=label)
        ax.set_xlim(0.5, epochs[-1] + 0.5)  # a single epoch is a visible point, not a collapsed axis
        ax.set_xticks(epochs[::max(1, len(epochs) // 10)])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path)
