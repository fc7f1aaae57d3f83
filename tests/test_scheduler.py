"""Section 3.1 (warmup), 5.1 (cosine) and 2 (step decay): timm_bot.scheduler against the paper's formulas."""
import io
import math

import pytest
import torch
import torch.nn as nn
from timm.scheduler import CosineLRScheduler

from timm_bot.optim import create_paper_optimizer
from timm_bot.scheduler import create_paper_scheduler

ETA = 0.4


def _optimizer(lr: float = ETA) -> torch.optim.Optimizer:
    """Two param groups (no bias decay), as in training: both must follow the schedule."""
    return create_paper_optimizer(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), lr=lr)


def _drive(sched, opt: torch.optim.Optimizer, num_batches: int) -> torch.Tensor:
    """lr of batches 1..num_batches with train.py's loop: step_update(num_updates) after each update."""
    lrs = []
    for step in range(1, num_batches + 1):
        assert opt.param_groups[0]['lr'] == opt.param_groups[1]['lr']
        lrs.append(opt.param_groups[0]['lr'])
        opt.step()
        sched.step_update(num_updates=step)
    return torch.tensor(lrs, dtype=torch.float64)


def _paper(i: int, m: int, total: int, per_epoch: int, milestones=None) -> float:
    """Batch i (1-based): warmup i * eta / m (3.1), then cosine (5.1) or / 10 after each milestone epoch (2)."""
    if i <= m:
        return i * ETA / m
    if milestones is None:
        return 0.5 * (1 + math.cos((i - m) * math.pi / (total - m))) * ETA
    return ETA * 0.1 ** sum(i > d * per_epoch for d in milestones)


def _expected(m: int, total: int, per_epoch: int, milestones=None) -> torch.Tensor:
    return torch.tensor([_paper(i, m, total, per_epoch, milestones) for i in range(1, total + 1)], dtype=torch.float64)


@pytest.mark.parametrize('epochs, per_epoch, warmup_epochs', [(6, 10, 2), (4, 5, 0), (3, 10, 0.5)])
def test_warmup_cosine(epochs, per_epoch, warmup_epochs):
    opt = _optimizer()
    total, m = epochs * per_epoch, round(warmup_epochs * per_epoch)
    lrs = _drive(create_paper_scheduler(opt, 'cosine', epochs, per_epoch, warmup_epochs=warmup_epochs), opt, total)
    torch.testing.assert_close(lrs, _expected(m, total, per_epoch), rtol=1e-9, atol=1e-12)
    if m:
        assert lrs[0] == pytest.approx(ETA / m) and lrs[m - 1] == pytest.approx(ETA)  # eta/m first, not 0
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)


def test_step_decay_at_epochs_30_60_90():
    per_epoch, epochs = 2, 120
    opt = _optimizer()
    lrs = _drive(create_paper_scheduler(opt, 'step', epochs, per_epoch), opt, epochs * per_epoch)
    torch.testing.assert_close(lrs, _expected(0, epochs * per_epoch, per_epoch, (30, 60, 90)), rtol=1e-9, atol=0)
    for k, d in enumerate((30, 60, 90)):  # the last batch of epoch d-1 vs the first of epoch d (0-based epochs)
        assert (lrs[d * per_epoch - 1], lrs[d * per_epoch]) == pytest.approx((ETA * 0.1 ** k, ETA * 0.1 ** (k + 1)))


def test_step_decay_with_warmup():
    opt = _optimizer()
    lrs = _drive(create_paper_scheduler(opt, 'step', 12, 3, warmup_epochs=2, decay_milestones=(4, 8)), opt, 36)
    torch.testing.assert_close(lrs, _expected(6, 36, 3, (4, 8)), rtol=1e-9, atol=0)


@pytest.mark.parametrize('sched_name', ['cosine', 'step'])
def test_resume_from_state_dict(sched_name):
    """Load the state into a scheduler created with other settings, step_update(global_step): same lrs onwards."""
    epochs, per_epoch, stop = 100, 3, 95
    opt_a = _optimizer()
    sched_a = create_paper_scheduler(opt_a, sched_name, epochs, per_epoch, warmup_epochs=5)
    _drive(sched_a, opt_a, stop)
    buf = io.BytesIO()
    torch.save(sched_a.state_dict(), buf)
    buf.seek(0)
    opt_b = _optimizer(lr=1.0)
    sched_b = create_paper_scheduler(opt_b, sched_name, 7, 1, decay_milestones=(2, 4))
    sched_b.load_state_dict(torch.load(buf, weights_only=True))
    for step in range(stop, epochs * per_epoch + 1):
        sched_a.step_update(num_updates=step)
        sched_b.step_update(num_updates=step)
        assert opt_b.param_groups[0]['lr'] == opt_a.param_groups[0]['lr']
    sched_b.step(3)  # per-epoch step is a no-op
    assert opt_b.param_groups[0]['lr'] == opt_a.param_groups[0]['lr']


@pytest.mark.parametrize('sched_name, milestones', [('cosine', ()), ('step', (2, 4))])
def test_torch_lr_scheduler_protocol(sched_name, milestones):
    """as_lr_scheduler(): torch's LambdaLR, step() after every optimizer step, gives the same lrs as step_update;
    step() on the timm scheduler itself says how to use it instead of timm's missing-epoch TypeError."""
    epochs, per_epoch, warmup = 6, 3, 1
    opt = _optimizer()
    sched = create_paper_scheduler(opt, sched_name, epochs, per_epoch, warmup, decay_milestones=milestones)
    with pytest.raises(TypeError, match=r'sets the lr per update: call step_update\(num_updates=.*as_lr_scheduler'):
        sched.step()
    torch_sched = sched.as_lr_scheduler()
    assert isinstance(torch_sched, torch.optim.lr_scheduler.LRScheduler)
    lrs = []
    for _ in range(epochs * per_epoch):
        assert opt.param_groups[0]['lr'] == opt.param_groups[1]['lr']
        lrs.append(opt.param_groups[0]['lr'])
        opt.step()
        torch_sched.step()
    expected = _expected(warmup * per_epoch, epochs * per_epoch, per_epoch, milestones or None)
    torch.testing.assert_close(torch.tensor(lrs, dtype=torch.float64), expected, rtol=1e-9, atol=1e-12)


def test_invalid_arguments_and_why_timm_is_subclassed():
    opt = _optimizer()
    with pytest.raises(ValueError):
        create_paper_scheduler(opt, 'poly', 10, 10)
    with pytest.raises(ValueError):
        create_paper_scheduler(opt, 'cosine', 2, 10, warmup_epochs=2)
    for milestones in ([10], [1, 2], [0]):  # issue 23 bug 2: at or past the last epoch (or 0) it never decays
        with pytest.raises(ValueError, match=r'decay_milestones .* must be epochs in 1\.\.1'):
            create_paper_scheduler(opt, 'step', 2, 10, decay_milestones=milestones)
    create_paper_scheduler(opt, 'cosine', 2, 10, decay_milestones=[10])  # milestones only matter to 'step'
    # timm's own warmup gives the first batch lr 0; the paper gives it eta / m
    CosineLRScheduler(opt, t_initial=10, warmup_t=4, warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False)
    assert opt.param_groups[0]['lr'] == 0.0
