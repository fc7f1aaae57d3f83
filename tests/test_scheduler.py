"""Section 3.1 (warmup), 5.1 (cosine) and 2 (step decay): timm_bot.scheduler against the paper's formulas."""
import io
import math

import pytest
import torch
import torch.nn as nn
from timm.scheduler import CosineLRScheduler

from timm_bot.optim import create_paper_optimizer
from timm_bot.scheduler import create_paper_scheduler, warmup_updates

ETA = 0.4


def _optimizer(lr: float = ETA) -> torch.optim.Optimizer:
    """Two param groups (no-bias-decay), like training: both must follow the schedule."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 3, 5, 5))
    return create_paper_optimizer(model, lr=lr)


def _drive(sched, opt: torch.optim.Optimizer, num_batches: int) -> list[float]:
    """lr of batches 1..num_batches with the documented loop: step_update(global_step) after each update."""
    lrs = []
    for step in range(1, num_batches + 1):
        group_lrs = {g['lr'] for g in opt.param_groups}
        assert len(group_lrs) == 1
        lrs.append(group_lrs.pop())
        opt.step()
        sched.step_update(num_updates=step)
    return lrs


def _paper_cosine(i: int, m: int, total: int) -> float:
    if i <= m:
        return i * ETA / m
    return 0.5 * (1 + math.cos((i - m) * math.pi / (total - m))) * ETA


def _paper_step(i: int, m: int, per_epoch: int, decay_epochs=(30, 60, 90)) -> float:
    if i <= m:
        return i * ETA / m
    return ETA * 0.1 ** sum(i > d * per_epoch for d in decay_epochs)


def test_cosine_with_warmup_matches_formulas() -> None:
    epochs, per_epoch, warmup_epochs = 6, 10, 2
    m, total = 20, 60
    opt = _optimizer()
    lrs = _drive(create_paper_scheduler(opt, 'cosine', epochs, per_epoch, warmup_epochs=warmup_epochs), opt, total)
    # lrs[i - 1] is batch i
    assert lrs[0] == pytest.approx(ETA / m)  # first warmup batch: eta/m, not 0
    assert lrs[9] == pytest.approx(ETA / 2)  # middle of warmup
    assert lrs[m - 1] == pytest.approx(ETA)  # last warmup batch reaches eta
    assert lrs[m] == pytest.approx(0.5 * (1 + math.cos(math.pi / 40)) * ETA)  # t = 1
    assert lrs[m + 20 - 1] == pytest.approx(ETA / 2)  # t = T/2
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)  # t = T, last batch
    assert lrs == pytest.approx([_paper_cosine(i, m, total) for i in range(1, total + 1)])
    assert all(a >= b for a, b in zip(lrs[m - 1:], lrs[m:]))  # monotone after warmup


def test_cosine_without_warmup() -> None:
    opt = _optimizer()
    lrs = _drive(create_paper_scheduler(opt, 'cosine', 4, 5), opt, 20)
    assert lrs == pytest.approx([_paper_cosine(i, 0, 20) for i in range(1, 21)], abs=1e-12)


def test_fractional_warmup_epochs() -> None:
    assert warmup_updates(0.5, 7) == 4 and warmup_updates(5, 100) == 500
    opt = _optimizer()
    lrs = _drive(create_paper_scheduler(opt, 'cosine', 3, 10, warmup_epochs=0.5), opt, 30)
    assert lrs == pytest.approx([_paper_cosine(i, 5, 30) for i in range(1, 31)])


def test_step_decay_at_epochs_30_60_90() -> None:
    per_epoch, epochs = 2, 120
    opt = _optimizer()
    lrs = _drive(create_paper_scheduler(opt, 'step', epochs, per_epoch), opt, epochs * per_epoch)
    assert lrs[0] == pytest.approx(ETA)
    # Epoch e (0-based) holds batches e*U+1 .. (e+1)*U. Epoch 29's last batch vs epoch 30's first batch, etc.
    for d, k in ((30, 1), (60, 2), (90, 3)):
        assert lrs[d * per_epoch - 1] == pytest.approx(ETA * 0.1 ** (k - 1))
        assert lrs[d * per_epoch] == pytest.approx(ETA * 0.1 ** k)
    assert lrs[-1] == pytest.approx(ETA * 1e-3)
    assert lrs == pytest.approx([_paper_step(i, 0, per_epoch) for i in range(1, epochs * per_epoch + 1)])


def test_step_decay_with_warmup_and_custom_epochs() -> None:
    per_epoch = 3
    opt = _optimizer()
    sched = create_paper_scheduler(opt, 'step', 12, per_epoch, warmup_epochs=2, decay_epochs=(8, 4), decay_rate=0.1)
    lrs = _drive(sched, opt, 36)
    assert lrs[:6] == pytest.approx([i * ETA / 6 for i in range(1, 7)])
    assert lrs == pytest.approx([_paper_step(i, 6, per_epoch, (4, 8)) for i in range(1, 37)])


def test_epoch_step_is_a_no_op() -> None:
    opt = _optimizer()
    sched = create_paper_scheduler(opt, 'cosine', 3, 10, warmup_epochs=1)
    sched.step_update(num_updates=4)
    lr = opt.param_groups[0]['lr']
    sched.step(1)
    assert opt.param_groups[0]['lr'] == lr == pytest.approx(5 * ETA / 10)


@pytest.mark.parametrize('sched_name', ['cosine', 'step'])
def test_state_dict_round_trip(sched_name: str) -> None:
    """Resume: load state into a scheduler created with other settings, then step_update(global_step)."""
    epochs, per_epoch, stop = 100, 3, 95
    opt_a = _optimizer()
    sched_a = create_paper_scheduler(opt_a, sched_name, epochs, per_epoch, warmup_epochs=5)
    _drive(sched_a, opt_a, stop)
    buf = io.BytesIO()
    torch.save(sched_a.state_dict(), buf)
    buf.seek(0)
    opt_b = _optimizer(lr=1.0)
    sched_b = create_paper_scheduler(opt_b, sched_name, 7, 1)
    sched_b.load_state_dict(torch.load(buf, weights_only=False))
    sched_b.step_update(num_updates=stop)
    assert opt_b.param_groups[0]['lr'] == pytest.approx(opt_a.param_groups[0]['lr'])
    for step in range(stop + 1, epochs * per_epoch + 1):
        sched_a.step_update(num_updates=step)
        sched_b.step_update(num_updates=step)
        assert opt_b.param_groups[0]['lr'] == pytest.approx(opt_a.param_groups[0]['lr'])


def test_invalid_arguments() -> None:
    opt = _optimizer()
    with pytest.raises(ValueError):
        create_paper_scheduler(opt, 'poly', 10, 10)
    with pytest.raises(ValueError):
        create_paper_scheduler(opt, 'cosine', 2, 10, warmup_epochs=2)


def test_plain_timm_warmup_starts_at_zero() -> None:
    """Why the schedulers are subclassed: timm's own warmup gives the first batch lr 0, the paper eta/m."""
    opt = _optimizer()
    CosineLRScheduler(opt, t_initial=10, warmup_t=4, warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False)
    assert opt.param_groups[0]['lr'] == 0.0
