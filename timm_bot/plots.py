"""PNG plots of a training run: the per-iteration learning rate and the per-epoch loss/accuracy curves."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ['plot_lr', 'plot_curves']


def _pyplot():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> None:
    tmp = path.with_name(path.name + '.tmp.png')
    fig.savefig(tmp, dpi=100, bbox_inches='tight')
    os.replace(tmp, path)


def plot_lr(lrs: Sequence[float], updates_per_epoch: int, path: Path, title: str = '') -> None:
    """Learning rate of every iteration (warmup 3.1, cosine 5.1 / step decay section 2), x axis in epochs."""
    plt = _pyplot()
    stride = max(1, len(lrs) // 4000)  # keep the PNG light for ImageNet-length runs
    xs = [i / updates_per_epoch for i in range(0, len(lrs), stride)]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(xs, list(lrs)[::stride])
    ax.set_xlabel('epoch')
    ax.set_ylabel('learning rate')
    ax.set_title(title or 'learning rate per iteration')
    ax.grid(alpha=0.3)
    _save(fig, path)
    plt.close(fig)


def plot_curves(history: Sequence[dict], path: Path) -> None:
    """Train/val loss and val top-1/top-5 per epoch, from the rows of ``summary.csv``."""
    plt = _pyplot()
    epochs = [row['epoch'] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax_loss.plot(epochs, [row['train_loss'] for row in history], label='train loss')
    ax_loss.plot(epochs, [row['eval_loss'] for row in history], label='val loss')
    ax_acc.plot(epochs, [row['eval_top1'] for row in history], label='val top-1')
    ax_acc.plot(epochs, [row['eval_top5'] for row in history], label='val top-5')
    for ax, label in ((ax_loss, 'loss'), (ax_acc, 'accuracy (%)')):
        ax.set_xlabel('epoch')
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, path)
    plt.close(fig)
