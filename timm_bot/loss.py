"""Label smoothing (paper section 5.2) and the mixup loss (section 5.4) of *Bag of Tricks* (He et al., 2019).

Section 5.2 replaces the one-hot target of the cross entropy by

    q_i = 1 - eps            if i = y,
    q_i = eps / (K - 1)      otherwise,

(``mode='paper'``), whose optimum (softmax(z) = q) puts every wrong logit a gap
``log((K - 1)(1 - eps) / eps)`` below the true one (9.1 for K = 1000, eps = 0.1). timm
(:class:`timm.loss.LabelSmoothingCrossEntropy`, :func:`timm.data.mixup.mixup_target`) and
``torch.nn.functional.cross_entropy(label_smoothing=eps)`` use ``(1 - eps) one_hot + eps / K`` instead
(``mode='uniform'``). The two are the same family: paper eps equals uniform eps' = eps K / (K - 1).

Section 5.4 (mixup) trains on ``lam x_i + (1 - lam) x_j`` against ``lam y_i + (1 - lam) y_j``. Cross entropy is
linear in its target, so that loss is ``lam l(z, y_i) + (1 - lam) l(z, y_j)``; :class:`SmoothedCrossEntropy` computes
it from class indices (a :class:`MixedTarget`) and one log-softmax. It equals timm's ``Mixup`` dense targets +
:class:`timm.loss.SoftTargetCrossEntropy` without ever building a B x K target.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['MixedTarget', 'SmoothedCrossEntropy', 'label_smoothing_cross_entropy', 'SMOOTHING_MODES']

SMOOTHING_MODES = ('paper', 'uniform')
_REDUCTIONS = ('mean', 'sum', 'none')


class MixedTarget(NamedTuple):
    """Mixup target of section 5.4 as class indices: ``lam * onehot(target_a) + (1 - lam) * onehot(target_b)``."""
    target_a: torch.Tensor
    target_b: torch.Tensor
    lam: float


def _check_smoothing(smoothing: float, mode: str) -> None:
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f'label smoothing must satisfy 0 <= smoothing < 1, got {smoothing!r}')
    if mode not in SMOOTHING_MODES:
        raise ValueError(f'label smoothing mode must be one of {SMOOTHING_MODES}, got {mode!r}')


def _on_off_values(smoothing: float, mode: str, num_classes: int) -> tuple[float, float]:
    """Target probabilities (true class, every other class) of section 5.2 ('paper') or timm/torch ('uniform')."""
    if mode == 'uniform':
        off = smoothing / num_classes
        return 1.0 - smoothing + off, off
    if num_classes < 2:
        if smoothing > 0:
            raise ValueError(f"mode='paper' label smoothing needs at least 2 classes, got {num_classes}")
        return 1.0, 0.0
    return 1.0 - smoothing, smoothing / (num_classes - 1)


def _smoothed_nll(
        logprobs: torch.Tensor,
        target: torch.Tensor,
        on: float,
        off: float,
        sum_logprobs: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample ``-sum_i q_i log p_i`` for q = ``off`` everywhere + ``on - off`` on the target, via gather + sum.

    ``-sum_i q_i log p_i = (on - off) * (-log p_y) - off * sum_i log p_i``.
    """
    nll = -logprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    if off == 0.0:
        return on * nll
    if sum_logprobs is None:
        sum_logprobs = logprobs.sum(dim=-1)
    return (on - off) * nll - off * sum_logprobs


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == 'mean':
        return loss.mean()
    if reduction == 'sum':
        return loss.sum()
    return loss


def label_smoothing_cross_entropy(
        logits: torch.Tensor,
        target: torch.Tensor,
        smoothing: float = 0.0,
        mode: str = 'paper',
        reduction: str = 'mean',
) -> torch.Tensor:
    """Cross entropy against the label-smoothed target of section 5.2.

    Args:
        logits: ``(..., K)`` unnormalized scores z.
        target: ``(...)`` class indices y.
        smoothing: eps in [0, 1).
        mode: ``'paper'`` -- q_y = 1 - eps, q_i = eps / (K - 1) for i != y (section 5.2);
            ``'uniform'`` -- q = (1 - eps) one_hot(y) + eps / K (timm / ``F.cross_entropy(label_smoothing=eps)``).
        reduction: ``'mean'``, ``'sum'`` or ``'none'``.

    Returns:
        ``-sum_i q_i log softmax(z)_i``, reduced over the batch.
    """
    _check_smoothing(smoothing, mode)
    if reduction not in _REDUCTIONS:
        raise ValueError(f'reduction must be one of {_REDUCTIONS}, got {reduction!r}')
    on, off = _on_off_values(smoothing, mode, logits.shape[-1])
    logprobs = F.log_softmax(logits, dim=-1)
    return _reduce(_smoothed_nll(logprobs, target, on, off), reduction)


class SmoothedCrossEntropy(nn.Module):
    """Label-smoothed cross entropy (section 5.2) that also takes a mixup :class:`MixedTarget` (section 5.4).

    ``forward(logits, target)`` with class indices returns :func:`label_smoothing_cross_entropy`; with a
    ``MixedTarget(a, b, lam)`` it returns ``lam * l(logits, a) + (1 - lam) * l(logits, b)`` (batch mean), i.e. the
    cross entropy against the mixed smoothed target ``lam q(a) + (1 - lam) q(b)``, from a single log-softmax.

    Args:
        smoothing: eps in [0, 1); 0 is the plain cross entropy.
        mode: ``'paper'`` (section 5.2, eps / (K - 1) on each wrong class) or ``'uniform'`` (timm/torch, eps / K).
    """

    def __init__(self, smoothing: float = 0.0, mode: str = 'paper') -> None:
        super().__init__()
        _check_smoothing(smoothing, mode)
        self.smoothing = float(smoothing)
        self.mode = mode

    def extra_repr(self) -> str:
        return f'smoothing={self.smoothing}, mode={self.mode!r}'

    def forward(self, logits: torch.Tensor, target: torch.Tensor | MixedTarget) -> torch.Tensor:
        on, off = _on_off_values(self.smoothing, self.mode, logits.shape[-1])
        logprobs = F.log_softmax(logits, dim=-1)
        if not isinstance(target, MixedTarget):
            return _smoothed_nll(logprobs, target, on, off).mean()
        sum_logprobs = logprobs.sum(dim=-1) if off else None
        lam = target.lam
        loss_a = _smoothed_nll(logprobs, target.target_a, on, off, sum_logprobs)
        loss_b = _smoothed_nll(logprobs, target.target_b, on, off, sum_logprobs)
        return (lam * loss_a + (1.0 - lam) * loss_b).mean()
