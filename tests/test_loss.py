"""Label smoothing (section 5.2) and the mixup loss (section 5.4)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.data.mixup import Mixup
from timm.loss import SoftTargetCrossEntropy

from timm_bot.loss import MixedTarget, SmoothedCrossEntropy, label_smoothing_cross_entropy
from timm_bot.mixup import BatchMixup


def dense_target(target: torch.Tensor, num_classes: int, smoothing: float, mode: str) -> torch.Tensor:
    """The section 5.2 target distribution q, written out densely (the reference our gather+sum must match)."""
    if mode == 'paper':
        on, off = 1 - smoothing, smoothing / (num_classes - 1)
    else:
        on, off = 1 - smoothing + smoothing / num_classes, smoothing / num_classes
    q = torch.full((target.numel(), num_classes), off, dtype=torch.float64)
    return q.scatter_(1, target.view(-1, 1), on)


def dense_ce(logits: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return -(q * F.log_softmax(logits, dim=-1)).sum(-1)


@pytest.mark.parametrize('mode', ['paper', 'uniform'])
@pytest.mark.parametrize('smoothing', [0.0, 0.1, 0.5])
def test_matches_dense_reference(mode, smoothing):
    torch.manual_seed(0)
    logits = torch.randn(8, 7, dtype=torch.float64) * 3
    target = torch.randint(0, 7, (8,))
    ref = dense_ce(logits, dense_target(target, 7, smoothing, mode))
    out = label_smoothing_cross_entropy(logits, target, smoothing, mode, reduction='none')
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(label_smoothing_cross_entropy(logits, target, smoothing, mode), ref.mean())
    torch.testing.assert_close(label_smoothing_cross_entropy(logits, target, smoothing, mode, 'sum'), ref.sum())
    torch.testing.assert_close(SmoothedCrossEntropy(smoothing, mode)(logits, target), ref.mean())


def test_paper_and_uniform_differ():
    torch.manual_seed(0)
    logits, target = torch.randn(4, 5), torch.randint(0, 5, (4,))
    paper = label_smoothing_cross_entropy(logits, target, 0.2, 'paper')
    uniform = label_smoothing_cross_entropy(logits, target, 0.2, 'uniform')
    assert not torch.allclose(paper, uniform)
    # paper eps == uniform eps * (K - 1) / K, i.e. uniform eps' = eps K / (K - 1)
    torch.testing.assert_close(paper, label_smoothing_cross_entropy(logits, target, 0.2 * 5 / 4, 'uniform'))


@pytest.mark.parametrize('smoothing', [0.0, 0.1, 0.3])
def test_uniform_equals_torch(smoothing):
    torch.manual_seed(1)
    logits, target = torch.randn(16, 10), torch.randint(0, 10, (16,))
    expected = F.cross_entropy(logits, target, label_smoothing=smoothing)
    torch.testing.assert_close(label_smoothing_cross_entropy(logits, target, smoothing, 'uniform'), expected)


def test_gradient_matches_dense_reference():
    torch.manual_seed(2)
    logits = torch.randn(6, 9, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 9, (6,))
    label_smoothing_cross_entropy(logits, target, 0.1, 'paper').backward()
    grad = logits.grad.clone()
    logits.grad = None
    dense_ce(logits, dense_target(target, 9, 0.1, 'paper')).mean().backward()
    torch.testing.assert_close(grad, logits.grad)


def _minimize_logits(num_classes: int, smoothing: float, mode: str) -> torch.Tensor:
    z = torch.zeros(1, num_classes, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0])
    opt = torch.optim.LBFGS([z], lr=1, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn='strong_wolfe')

    def closure():
        opt.zero_grad()
        loss = label_smoothing_cross_entropy(z, target, smoothing, mode)
        loss.backward()
        return loss

    opt.step(closure)
    return z.detach()[0]


def test_optimal_gap_paper_k1000():
    """Section 5.2: the optimum puts the true logit log((K-1)(1-eps)/eps) = 9.10 above every other one."""
    z = _minimize_logits(1000, 0.1, 'paper')
    expected = math.log(999 * 0.9 / 0.1)
    assert abs(expected - 9.104) < 1e-3
    gaps = z[0] - z[1:]
    assert abs(gaps.mean().item() - expected) < 1e-2
    assert gaps.std().item() < 1e-3  # every wrong class sits at the same distance


@pytest.mark.parametrize('mode, expected', [('paper', math.log(2.0)), ('uniform', math.log(4.0))])
def test_optimal_gap_distinguishes_modes(mode, expected):
    """With K = 3, eps = 0.5 the optimum gaps differ: log(2 * 0.5 / 0.5) (paper) vs log((1.5 + 0.5) / 0.5)."""
    z = _minimize_logits(3, 0.5, mode)
    assert abs((z[0] - z[1:]).mean().item() - expected) < 1e-4


@pytest.mark.parametrize('mode', ['paper', 'uniform'])
@pytest.mark.parametrize('smoothing', [0.0, 0.1])
def test_mixed_loss_equals_timm_mixup(mode, smoothing):
    """Ours (indices + lam) == timm's Mixup dense target + SoftTargetCrossEntropy for the same lam and pairing."""
    num_classes, batch = 10, 8
    torch.manual_seed(3)
    x = torch.randn(batch, 3, 4, 4)
    target = torch.randint(0, num_classes, (batch,))
    logits = torch.randn(batch, num_classes)
    # timm's smoothing is the uniform form; paper eps == uniform eps K / (K - 1)
    timm_smoothing = smoothing * num_classes / (num_classes - 1) if mode == 'paper' else smoothing
    mixup = Mixup(mixup_alpha=0.2, cutmix_alpha=0.0, label_smoothing=timm_smoothing, num_classes=num_classes)
    np.random.seed(0)
    lam, _ = mixup._params_per_batch()
    np.random.seed(0)
    x_timm, y_timm = mixup(x.clone(), target)
    assert 0.0 < lam < 1.0

    x_ours, mixed = BatchMixup.mix(x, target, lam, torch.arange(batch).flip(0))
    torch.testing.assert_close(x_ours, x_timm, rtol=0, atol=1e-6)
    expected = SoftTargetCrossEntropy()(logits, y_timm)
    actual = SmoothedCrossEntropy(smoothing, mode)(logits, mixed)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)


def test_mixed_loss_is_lam_weighted_sum():
    torch.manual_seed(4)
    logits = torch.randn(5, 6)
    a, b = torch.randint(0, 6, (5,)), torch.randint(0, 6, (5,))
    loss = SmoothedCrossEntropy(0.1)
    expected = 0.3 * loss(logits, a) + 0.7 * loss(logits, b)
    torch.testing.assert_close(loss(logits, MixedTarget(a, b, 0.3)), expected)
    torch.testing.assert_close(loss(logits, MixedTarget(a, b, 1.0)), loss(logits, a))


@pytest.mark.parametrize('kwargs', [dict(smoothing=-0.1), dict(smoothing=1.0), dict(mode='timm')])
def test_invalid_args(kwargs):
    with pytest.raises(ValueError, match='smoothing|mode'):
        SmoothedCrossEntropy(**kwargs)
    with pytest.raises(ValueError, match='smoothing|mode'):
        label_smoothing_cross_entropy(torch.zeros(1, 3), torch.zeros(1, dtype=torch.long), **kwargs)


def test_invalid_reduction():
    with pytest.raises(ValueError, match='reduction'):
        label_smoothing_cross_entropy(torch.zeros(1, 3), torch.zeros(1, dtype=torch.long), reduction='avg')


@pytest.mark.parametrize('mode', ['paper', 'uniform'])
def test_fused_mixed_gradient_passes_gradcheck(mode):
    """The hand-written backward (softmax - q, built in place) against finite differences, mixup target."""
    logits = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    target = MixedTarget(torch.tensor([0, 3, 6, 2, 2]), torch.tensor([1, 3, 0, 5, 2]), 0.37)
    assert torch.autograd.gradcheck(lambda z: SmoothedCrossEntropy(0.2, mode)(z, target), (logits,))
    assert torch.autograd.gradcheck(
        lambda z: label_smoothing_cross_entropy(z, target.target_a, 0.2, mode, reduction='none'), (logits,))


def test_low_precision_logits_are_computed_in_float32():
    logits = torch.randn(4, 10).bfloat16().requires_grad_()
    target = torch.tensor([1, 2, 3, 4])
    loss = SmoothedCrossEntropy(0.1)(logits, target)
    loss.backward()
    assert loss.dtype == torch.float32 and logits.grad.dtype == torch.bfloat16
    reference = SmoothedCrossEntropy(0.1)(logits.detach().float(), target)
    torch.testing.assert_close(loss, reference)
