"""Mixup training, paper section 5.4 (He et al., 2019; Zhang et al., 2018).

Each step two examples are mixed, ``x = lam x_i + (1 - lam) x_j`` and ``y = lam y_i + (1 - lam) y_j`` with
``lam ~ Beta(alpha, alpha)``; the paper uses alpha = 0.2 (and trains 200 instead of 120 epochs).

How this relates to timm's :class:`timm.data.mixup.Mixup`: ``Mixup(mixup_alpha=a, cutmix_alpha=0, mode='batch')``
does the same per-batch mixing, but (1) it pairs example i with ``x.flip(0)[i]`` (as the authors' GluonCV script
does) where we pair with a random permutation, (2) it samples lam with NumPy's global RNG where we use torch's, so
restoring ``torch.get_rng_state()`` from a checkpoint reproduces the exact mixing, (3) it mixes ``x`` in place, and
(4) it returns a dense B x K (smoothed) target for :class:`timm.loss.SoftTargetCrossEntropy`, where we keep class
indices in a :class:`~timm_bot.loss.MixedTarget` for :class:`~timm_bot.loss.SmoothedCrossEntropy`. With
``perm = flip`` and the same lam both give identical inputs and losses (see tests/test_loss.py).
"""
from __future__ import annotations

import torch
from torch.distributions import Beta

from .loss import MixedTarget

__all__ = ['BatchMixup']


class BatchMixup:
    """Per-batch mixup of section 5.4: one ``lam ~ Beta(alpha, alpha)`` and one random pairing per batch.

    ``mixup(x, target)`` returns ``(lam * x + (1 - lam) * x[perm], MixedTarget(target, target[perm], lam))``
    without modifying ``x``. lam and ``perm = torch.randperm(B)`` come from torch's global (CPU) generator.

    Args:
        alpha: Beta distribution parameter, > 0 (paper: 0.2). To disable mixup, don't create the object.
    """

    def __init__(self, alpha: float = 0.2) -> None:
        if not alpha > 0:  # also rejects NaN
            raise ValueError(f'mixup alpha must be > 0, got {alpha!r} (to disable mixup do not use BatchMixup)')
        self.alpha = float(alpha)
        concentration = torch.tensor(self.alpha, dtype=torch.float64)
        self._beta = Beta(concentration, concentration)

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(alpha={self.alpha})'

    def sample_lam(self) -> float:
        """Draw lam ~ Beta(alpha, alpha) from torch's global CPU generator."""
        return float(self._beta.sample())

    @staticmethod
    def mix(x: torch.Tensor, target: torch.Tensor, lam: float, perm: torch.Tensor) -> tuple[torch.Tensor, MixedTarget]:
        """Deterministic mixing with a given lam and pairing: ``x_mixed = lam x + (1 - lam) x[perm]``."""
        batch_size = x.shape[0]
        if target.shape[0] != batch_size:
            raise ValueError(f'batch of {batch_size} inputs but {target.shape[0]} targets')
        if perm.shape != (batch_size,):
            raise ValueError(f'perm must have shape ({batch_size},), got {tuple(perm.shape)}')
        x_mixed = x.mul(lam).add_(x[perm.to(x.device)], alpha=1.0 - lam)
        return x_mixed, MixedTarget(target, target[perm.to(target.device)], lam)

    def __call__(
            self,
            x: torch.Tensor,
            target: torch.Tensor,
            perm: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, MixedTarget]:
        """Mix a batch (section 5.4).

        Args:
            x: ``(B, ...)`` inputs; not modified.
            target: ``(B,)`` class indices.
            perm: pairing, a permutation of ``range(B)``; ``torch.randperm(B)`` when None.

        Returns:
            ``(x_mixed, MixedTarget(target, target[perm], lam))``.
        """
        lam = self.sample_lam()
        if perm is None:
            perm = torch.randperm(x.shape[0])
        return self.mix(x, target, lam, perm)
