"""curves.png stays readable (issue 11 item 10): any loss scale, 1-based epochs, best epoch, EMA, one epoch."""
from pathlib import Path

import timm_bot.plots as plots


def draw(history, monkeypatch) -> list:
    figures = []
    monkeypatch.setattr(plots, '_save', lambda fig, path: figures.append(fig))
    plots.plot_curves(history, Path('unused.png'))
    return figures[0].axes


def test_single_epoch_with_ema_and_distillation_scale_loss(monkeypatch):
    row = {'epoch': 0, 'train_loss': 923.0, 'eval_loss': 2.1, 'eval_top1': 31.0, 'eval_top5': 80.0,
           'eval_ema_loss': 2.0, 'eval_ema_top1': 33.0}
    ax_loss, ax_acc = draw([row], monkeypatch)
    assert ax_loss.get_yscale() == 'log'  # 923 beside 2.1: a linear axis would flatten the val loss to zero
    assert list(ax_acc.get_xticks()) == [1] and ax_acc.get_xlim()[0] < 1 < ax_acc.get_xlim()[1]
    labels = [line.get_label() for line in ax_acc.get_lines()]
    assert 'EMA val top-1' in labels and 'best: epoch 1' in labels


def test_epochs_are_one_based_and_the_best_is_marked(monkeypatch):
    history = [{'epoch': e, 'train_loss': 2.0 - e / 10, 'eval_loss': 2.0, 'eval_top1': top1, 'eval_top5': 90.0}
               for e, top1 in enumerate([10.0, 40.0, 30.0])]
    ax_loss, ax_acc = draw(history, monkeypatch)
    assert ax_loss.get_yscale() == 'linear'
    assert list(ax_acc.get_lines()[0].get_xdata()) == [1, 2, 3]
    assert 'best: epoch 2' in [line.get_label() for line in ax_acc.get_lines()]
