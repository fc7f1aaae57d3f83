"""Label smoothing (section 5.2) and mixup (section 5.4) of *Bag of Tricks* (He et al., 2019) on torch's fused loss."""
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['BatchMixup', 'MixedTarget', 'SmoothedCrossEntropy']


class MixedTarget(NamedTuple):
    """Section 5.4 target ``lam * onehot(target_a) + (1 - lam) * onehot(target_b)``, kept as class indices."""
    target_a: torch.Tensor
    target_b: torch.Tensor
    lam: float


class SmoothedCrossEntropy(nn.Module):
    """Section 5.2 label smoothing, the paper's epsilon 0.1 by default (0: plain cross entropy); ``mode``: the YAML's
    ``smoothing_mode``, ``'paper'`` or ``'uniform'`` (torch's); a :class:`MixedTarget` gives section 5.4's loss."""

    def __init__(self, smoothing: float = 0.1, mode: str = 'paper') -> None:
        super().__init__()
        if not 0.0 <= smoothing < 1.0 or mode not in ('paper', 'uniform'):
            raise ValueError(f"smoothing must be in [0, 1), mode 'paper' or 'uniform'; got {smoothing!r}, {mode!r}")
        self.smoothing, self.mode = float(smoothing), mode

    def forward(self, logits: torch.Tensor, target: torch.Tensor | MixedTarget) -> torch.Tensor:
        """Mean cross entropy of ``(B, K)`` logits; ``lam CE(a) + (1 - lam) CE(b)`` for a :class:`MixedTarget`."""
        if isinstance(target, MixedTarget):
            a, b, lam = target
            return lam * self(logits, a) + (1.0 - lam) * self(logits, b) if lam != 1.0 else self(logits, a)
        num_classes, smoothing = logits.shape[-1], self.smoothing
        if self.mode == 'paper' and smoothing:  # 1 - eps on the label, eps/(K-1) elsewhere: torch's eps' = eps K/(K-1)
            if smoothing > (num_classes - 1) / num_classes:
                raise ValueError(f'paper smoothing {smoothing} > (K-1)/K, K={num_classes}: a wrong class outweighs '
                                 'the label')
            smoothing = smoothing * num_classes / (num_classes - 1)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # fp16/bf16 logits: the loss in float32
        return F.cross_entropy(logits, target, label_smoothing=smoothing)


class BatchMixup:
    """Section 5.4 mixup: ``lam ~ Beta(alpha, alpha)`` per batch, ``x -> lam x + (1 - lam) x[perm]`` (paper alpha 0.2);
    ``alpha=0`` (the YAML's ``mixup: 0``) is off: ``x`` itself and ``MixedTarget(target, target, 1.0)``."""

    def __init__(self, alpha: float = 0.2) -> None:
        if not alpha >= 0:  # also rejects NaN
            raise ValueError(f'mixup alpha must be >= 0 (0: off), got {alpha!r}')
        concentration = torch.tensor(float(alpha), dtype=torch.float64)
        self.beta = torch.distributions.Beta(concentration, concentration) if alpha > 0 else None

    def __call__(self, x: torch.Tensor, target: torch.Tensor,
                 perm: torch.Tensor | None = None) -> tuple[torch.Tensor, MixedTarget]:
        """``(mixed x, MixedTarget)`` for a batch ``x`` of class indices ``target``; ``perm``: the pairing (random)."""
        if self.beta is None:
            return x, MixedTarget(target, target, 1.0)
        lam = float(self.beta.sample())  # lam and perm from torch's CPU RNG: a checkpointed rng state replays them
        perm = torch.randperm(len(x)) if perm is None else perm
        x_mixed = x.mul(lam).add_(x[perm.to(x.device)], alpha=1.0 - lam)
        return x_mixed, MixedTarget(target, target[perm.to(target.device)], lam)
