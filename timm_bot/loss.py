"""Label smoothing (section 5.2) and mixup (section 5.4) of *Bag of Tricks* (He et al., 2019) on torch's fused loss."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['BatchMixup', 'MixedTarget', 'SmoothedCrossEntropy', 'label_smoothing_cross_entropy']


class MixedTarget(NamedTuple):
    """Section 5.4 target ``lam * onehot(target_a) + (1 - lam) * onehot(target_b)``, kept as class indices."""
    target_a: torch.Tensor
    target_b: torch.Tensor
    lam: float


def _check(smoothing: float, mode: str) -> None:
    if not 0.0 <= smoothing < 1.0 or mode not in ('paper', 'uniform'):
        raise ValueError(f"label smoothing needs 0 <= smoothing < 1 and mode 'paper' or 'uniform', "
                         f'got {smoothing!r}, {mode!r}')


def label_smoothing_cross_entropy(logits: torch.Tensor, target: torch.Tensor, smoothing: float = 0.0,
                                  mode: str = 'paper', reduction: str = 'mean') -> torch.Tensor:
    """Cross entropy of ``(B, K)`` logits against the smoothed target of section 5.2, in float32 or wider.

    ``mode='paper'``: ``1 - eps`` on the label, ``eps / (K - 1)`` on each other class, which is torch's uniform
    smoothing with ``eps' = eps K / (K - 1)``; ``mode='uniform'``: torch/timm's ``(1 - eps) onehot + eps / K``.
    """
    _check(smoothing, mode)
    num_classes = logits.shape[-1]
    if mode == 'paper' and smoothing:
        if smoothing > (num_classes - 1) / num_classes:
            raise ValueError(f"mode='paper' smoothing {smoothing} > (K-1)/K for K={num_classes} classes would put "
                             'more mass on each wrong class than on the label')
        smoothing = smoothing * num_classes / (num_classes - 1)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return F.cross_entropy(logits, target, reduction=reduction, label_smoothing=smoothing)


class SmoothedCrossEntropy(nn.Module):
    """Section 5.2 label smoothing; a :class:`MixedTarget` gives ``lam CE(a) + (1 - lam) CE(b)`` (section 5.4)."""

    def __init__(self, smoothing: float = 0.0, mode: str = 'paper') -> None:
        super().__init__()
        _check(smoothing, mode)
        self.smoothing, self.mode = float(smoothing), mode

    def forward(self, logits: torch.Tensor, target: torch.Tensor | MixedTarget) -> torch.Tensor:
        if not isinstance(target, MixedTarget):
            return label_smoothing_cross_entropy(logits, target, self.smoothing, self.mode)
        a, b, lam = target
        return lam * self(logits, a) + (1.0 - lam) * self(logits, b) if lam != 1.0 else self(logits, a)


class BatchMixup:
    """Section 5.4 mixup: ``lam ~ Beta(alpha, alpha)`` per batch, ``x -> lam x + (1 - lam) x[perm]`` (paper alpha 0.2).

    lam and ``perm = torch.randperm(B)`` come from torch's global CPU generator, so a checkpointed
    ``torch.get_rng_state()`` reproduces the mixing. The caller's ``x`` is not modified.
    """

    def __init__(self, alpha: float = 0.2) -> None:
        if not alpha > 0:  # also rejects NaN
            raise ValueError(f'mixup alpha must be > 0, got {alpha!r}')
        self.alpha = float(alpha)
        concentration = torch.tensor(self.alpha, dtype=torch.float64)
        self.beta = torch.distributions.Beta(concentration, concentration)

    def __call__(self, x: torch.Tensor, target: torch.Tensor,
                 perm: torch.Tensor | None = None) -> tuple[torch.Tensor, MixedTarget]:
        lam = float(self.beta.sample())
        if perm is None:
            perm = torch.randperm(len(x))
        if perm.shape != (len(x),) or len(target) != len(x):
            raise ValueError(f'mixup: {len(x)} inputs, {len(target)} targets, perm of shape {tuple(perm.shape)}')
        x_mixed = x.mul(lam).add_(x[perm.to(x.device)], alpha=1.0 - lam)
        return x_mixed, MixedTarget(target, target[perm.to(target.device)], lam)
