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


class _SmoothedCrossEntropyFn(torch.autograd.Function):
    """Per-sample ``-sum_k q_k log softmax(z)_k`` for the (mixed) smoothed target, with a hand-written backward.

    q = off + (on - off) (lam 1[a] + (1 - lam) 1[b]) sums to 1, so the loss is ``lse(z) - sum_k q_k z_k`` =
    ``lse(z) - off sum_k z_k - (on - off)(lam z_a + (1 - lam) z_b)``: only per-row reductions, and
    ``d loss / dz = softmax(z) - q`` is built in place in the one B x K buffer that becomes the gradient. Nothing
    B x K is kept for backward (the logits are the caller's; only the B log-sum-exps are saved), where a dense
    target (timm's Mixup + SoftTargetCrossEntropy) builds several B x K tensors. float16/bfloat16 logits (AMP) are
    computed in float32.
    """

    @staticmethod
    def forward(ctx, logits, target_a, target_b, lam, on, off):  # noqa: ANN001, ANN205
        z = _upcast(logits)
        lse = torch.logsumexp(z, dim=-1)
        z_a = z.gather(1, target_a[:, None]).squeeze(1)
        z_b = z_a if target_b is target_a else z.gather(1, target_b[:, None]).squeeze(1)
        loss = lse - (on - off) * (lam * z_a + (1.0 - lam) * z_b)
        if off:
            loss = loss - off * z.sum(dim=-1)
        ctx.save_for_backward(logits, lse, target_a, target_b)
        ctx.consts = (lam, on, off)
        return loss

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001, ANN205
        logits, lse, target_a, target_b = ctx.saved_tensors
        lam, on, off = ctx.consts
        grad = torch.sub(_upcast(logits), lse[:, None]).exp_()  # softmax(z)
        if off:
            grad.sub_(off)
        weight = torch.full((grad.shape[0], 1), -(on - off), dtype=grad.dtype, device=grad.device)
        grad.scatter_add_(1, target_a[:, None], weight * lam)
        if lam != 1.0:
            grad.scatter_add_(1, target_b[:, None], weight * (1.0 - lam))
        return grad.mul_(grad_out[:, None]).to(logits.dtype), None, None, None, None, None


def _upcast(logits: torch.Tensor) -> torch.Tensor:
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def _smoothed_ce(logits: torch.Tensor, target_a: torch.Tensor, target_b: torch.Tensor, lam: float,
                 on: float, off: float) -> torch.Tensor:
    """Per-sample loss for ``(..., K)`` logits (flattened to rows for the fused function)."""
    shape = logits.shape[:-1]
    flat = logits.reshape(-1, logits.shape[-1])
    target_a = target_a.reshape(-1)
    target_b = target_a if target_b is None else target_b.reshape(-1)
    return _SmoothedCrossEntropyFn.apply(flat, target_a, target_b, float(lam), on, off).reshape(shape)


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
    return _reduce(_smoothed_ce(logits, target, None, 1.0, on, off), reduction)


class SmoothedCrossEntropy(nn.Module):
    """Label-smoothed cross entropy (section 5.2) that also takes a mixup :class:`MixedTarget` (section 5.4).

    ``forward(logits, target)`` with class indices returns :func:`label_smoothing_cross_entropy`; with a
    ``MixedTarget(a, b, lam)`` it returns ``lam * l(logits, a) + (1 - lam) * l(logits, b)`` (batch mean), i.e. the
    cross entropy against the mixed smoothed target ``lam q(a) + (1 - lam) q(b)``, computed from the class indices
    in one fused pass with no B x K target (see ``benchmarks/loss.py`` for its speed and memory against timm).

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
        if not isinstance(target, MixedTarget):
            return _smoothed_ce(logits, target, None, 1.0, on, off).mean()
        return _smoothed_ce(logits, target.target_a, target.target_b, target.lam, on, off).mean()
