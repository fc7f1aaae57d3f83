"""Batch mixup, section 5.4 (timm_bot.loss.BatchMixup)."""
import pytest
import torch

from timm_bot.loss import BatchMixup


@pytest.mark.parametrize('alpha', [0.2, 1.0])
def test_lam_follows_beta(alpha):
    """lam ~ Beta(alpha, alpha): mean 1/2, variance 1 / (4 (2 alpha + 1)) (0.179 for the paper's 0.2, 1/12 for 1)."""
    torch.manual_seed(0)
    mixup, x, y = BatchMixup(alpha), torch.zeros(2, 1), torch.tensor([0, 1])
    lams = torch.tensor([mixup(x, y)[1].lam for _ in range(4000)], dtype=torch.float64)
    assert 0 <= lams.min() and lams.max() <= 1
    assert abs(lams.mean().item() - 0.5) < 0.03
    assert abs(lams.var().item() - 1 / (4 * (2 * alpha + 1))) < 0.01


def test_random_perm_formula_and_input_untouched():
    torch.manual_seed(2)
    x, target = torch.randn(8, 3, 4, 4), torch.arange(8)
    x_before = x.clone()
    x_mixed, mixed = BatchMixup(0.2)(x, target)
    assert torch.equal(x, x_before)
    perm = mixed.target_b  # target = arange: target[perm] is perm
    assert sorted(perm.tolist()) == list(range(8)) and not torch.equal(perm, target)
    assert torch.equal(mixed.target_a, target) and isinstance(mixed.lam, float)
    torch.testing.assert_close(x_mixed, mixed.lam * x + (1 - mixed.lam) * x[perm])


def test_given_perm():
    x, target, perm = torch.randn(4, 2), torch.tensor([3, 1, 4, 1]), torch.tensor([2, 0, 3, 1])
    x_mixed, mixed = BatchMixup(0.4)(x, target, perm=perm)
    assert mixed.target_b.tolist() == [4, 3, 1, 1]
    torch.testing.assert_close(x_mixed, mixed.lam * x + (1 - mixed.lam) * x[perm])


def test_reproducible_from_torch_rng_state():
    """A checkpoint's torch.get_rng_state() reproduces lam and the pairing exactly."""
    mixup, x, target = BatchMixup(0.2), torch.randn(16, 3), torch.arange(16)
    torch.manual_seed(4)
    state = torch.get_rng_state()
    x1, m1 = mixup(x, target)
    _, m_next = mixup(x, target)
    torch.set_rng_state(state)
    x2, m2 = mixup(x, target)
    assert m1.lam == m2.lam and torch.equal(m1.target_b, m2.target_b) and torch.equal(x1, x2)
    assert m_next.lam != m1.lam and not torch.equal(m_next.target_b, m1.target_b)  # a new pairing each batch


@pytest.mark.parametrize('alpha', [-1.0, float('nan')])
def test_invalid_alpha(alpha):
    with pytest.raises(ValueError, match='alpha'):
        BatchMixup(alpha)


def test_alpha_zero_is_off():
    """Issue 23: BatchMixup(0), the YAML's `mixup: 0`, is the identity with lam 1 (no RNG drawn), not an error."""
    x, target = torch.randn(4, 3), torch.tensor([3, 1, 4, 1])
    state = torch.get_rng_state()
    x_out, mixed = BatchMixup(0)(x, target)
    assert x_out is x and mixed.lam == 1.0 and torch.equal(mixed.target_a, target)
    assert torch.equal(mixed.target_b, target) and torch.equal(torch.get_rng_state(), state)
