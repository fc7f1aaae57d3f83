"""Label smoothing (section 5.2) and the mixup loss (section 5.4), timm_bot.loss."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from timm_bot.loss import BatchMixup, MixedTarget, SmoothedCrossEntropy


def dense_q(target: torch.Tensor, num_classes: int, eps: float) -> torch.Tensor:
    """Section 5.2 written out: 1 - eps on the label, eps / (K - 1) on every other class."""
    q = torch.full((len(target), num_classes), eps / (num_classes - 1), dtype=torch.float64)
    return q.scatter_(1, target[:, None], 1 - eps)


def dense_ce(logits: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return -(q * F.log_softmax(logits, -1)).sum(-1).mean()


def _data(batch=8, num_classes=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(batch, num_classes, generator=g, dtype=torch.float64) * 3).requires_grad_()
    a, b = torch.randint(0, num_classes, (2, batch), generator=g)
    return logits, a, b


@pytest.mark.parametrize('eps', [0.0, 0.1, 0.5])
def test_paper_mode_equals_dense_formula_value_and_gradient(eps):
    logits, a, b = _data()
    ours = SmoothedCrossEntropy(eps)(logits, MixedTarget(a, b, 0.3))
    ref = dense_ce(logits, 0.3 * dense_q(a, 7, eps) + 0.7 * dense_q(b, 7, eps))
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(torch.autograd.grad(ours, logits)[0], torch.autograd.grad(ref, logits)[0])
    torch.testing.assert_close(SmoothedCrossEntropy(eps)(logits, a), dense_ce(logits, dense_q(a, 7, eps)))


def test_optimal_logit_gap_is_the_papers():
    """Section 5.2: the minimizer puts the label's logit log((K-1)(1-eps)/eps) = 9.104 above all others (K=1000)."""
    gap = math.log(999 * 0.9 / 0.1)
    assert round(gap, 3) == 9.104
    z = torch.zeros(1, 1000, dtype=torch.float64)
    z[0, 0] = gap
    z.requires_grad_()
    label = torch.tensor([0])
    (grad,) = torch.autograd.grad(SmoothedCrossEntropy(0.1)(z, label), z)
    torch.testing.assert_close(grad, torch.zeros_like(grad), rtol=0, atol=1e-12)  # convex loss: global minimum
    (grad_uniform,) = torch.autograd.grad(SmoothedCrossEntropy(0.1, 'uniform')(z, label), z)
    assert grad_uniform.abs().max() > 1e-5  # timm/torch's eps/K form has another optimum


@pytest.mark.parametrize('eps', [0.0, 0.1, 0.3])
def test_uniform_mode_equals_timm(eps):
    logits, a, _ = _data(16, 10, seed=1)
    expected = LabelSmoothingCrossEntropy(eps)(logits, a)
    torch.testing.assert_close(SmoothedCrossEntropy(eps, 'uniform')(logits, a), expected)


@pytest.mark.parametrize('mode', ['paper', 'uniform'])
def test_mixed_loss_equals_timm_mixup(mode, monkeypatch):
    """Indices + lam == timm's Mixup (flip pairing, same lam) dense target + SoftTargetCrossEntropy."""
    batch, num_classes, eps = 8, 10, 0.1
    torch.manual_seed(3)
    x, y, logits = torch.randn(batch, 3, 4, 4), torch.randint(0, num_classes, (batch,)), torch.randn(batch, num_classes)
    x_ours, mixed = BatchMixup(0.2)(x, y, perm=torch.arange(batch).flip(0))
    monkeypatch.setattr(np.random, 'beta', lambda a, b: mixed.lam)  # timm draws lam from NumPy
    timm_eps = eps * num_classes / (num_classes - 1) if mode == 'paper' else eps
    mixup = Mixup(mixup_alpha=0.2, cutmix_alpha=0.0, label_smoothing=timm_eps, num_classes=num_classes)
    x_timm, y_dense = mixup(x.clone(), y)
    assert 0 < mixed.lam < 1
    torch.testing.assert_close(x_ours, x_timm, rtol=0, atol=1e-6)
    expected = SoftTargetCrossEntropy()(logits, y_dense)
    torch.testing.assert_close(SmoothedCrossEntropy(eps, mode)(logits, mixed), expected, rtol=0, atol=1e-5)


def test_bf16_logits():
    logits = torch.randn(4, 10).bfloat16().requires_grad_()
    target = MixedTarget(torch.tensor([1, 2, 3, 4]), torch.tensor([0, 0, 9, 9]), 0.6)
    loss = SmoothedCrossEntropy(0.1)(logits, target)
    loss.backward()
    assert loss.dtype == torch.float32 and logits.grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss, SmoothedCrossEntropy(0.1)(logits.detach().float(), target))


@pytest.mark.parametrize('kwargs', [dict(smoothing=-0.1), dict(smoothing=1.0), dict(mode='timm')])
def test_invalid_args(kwargs):
    with pytest.raises(ValueError, match='smoothing'):
        SmoothedCrossEntropy(**kwargs)


def test_paper_smoothing_above_uniform_is_refused():
    with pytest.raises(ValueError, match='wrong class'):
        SmoothedCrossEntropy(0.6)(torch.zeros(1, 2), torch.tensor([0]))
