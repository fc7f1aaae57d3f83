"""Learning-rate schedules of *Bag of Tricks* (He et al., 2019), stepped per batch, built on timm's schedulers.

* Linear warmup (section 3.1 "Large-batch training"): "if we use the first m batches (e.g. 5 data epochs) to warm
  up, and the initial learning rate is eta, then at batch i, 1 <= i <= m, we will set the learning rate to be
  i*eta/m".
* Cosine decay (section 5.1): "eta_t = 1/2 (1 + cos(t*pi/T)) eta, where T is the total number of batches (ignoring
  the warmup stage), then at batch t".
* Step decay (section 2, baseline): the lr "is divided by 10 at the 30th, 60th, and 90th epochs".

Batches are numbered from 1 as in the paper: batch ``i`` is the ``i``-th optimizer update of the run, ``m`` the
number of warmup batches, ``U`` the updates per epoch, ``N = epochs * U``, ``T = N - m``. The lr of batch ``i`` is

* ``i <= m``:  ``i * eta / m``
* cosine, ``i > m``: ``0.5 * (1 + cos((i - m) * pi / T)) * eta``   (the last batch, ``i = N``, has lr 0)
* step,   ``i > m``: ``eta * decay_rate ** #{d in decay_epochs : i > d * U}``  (epoch ``d`` is the first decayed one)

Why timm's schedulers are subclassed (one line each): timm evaluates its schedule at ``t`` = number of updates
*done* (its ``train.py`` calls ``step_update(num_updates)`` after each update, and the value set at construction
serves the first batch), so with any options its linear warmup gives batch ``i`` the lr ``(i - 1) * eta / m``
(the first batch trains with lr 0, the last warmup batch with ``(m-1)/m * eta``). Matching the paper needs the
batch about to run, ``t + 1``; ``warmup_t`` / ``warmup_lr_init`` can fake that for the warmup but then the cosine
phase is off by one whenever ``m = 0``, and timm's ``MultiStepLRScheduler`` additionally applies milestone ``d`` at
``t = d - 1`` (kept on purpose upstream, see its docstring). So :class:`PaperCosineLRScheduler` and
:class:`PaperMultiStepLRScheduler` only evaluate timm's formulas one batch ahead (and the latter counts milestones
strictly before the batch). Everything else -- warmup, cosine, ``state_dict`` -- is timm's.
"""
from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import Any

import torch
from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler
from timm.scheduler.scheduler import Scheduler

__all__ = ['PaperCosineLRScheduler', 'PaperMultiStepLRScheduler', 'create_paper_scheduler', 'warmup_updates']


class _PaperBatchIndex:
    """Mixin: evaluate timm's schedule at the 1-based number of the batch about to run (``num_updates + 1``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.update_groups(self._get_lr(0))  # the lr of batch 1, used before any step_update call

    def _get_lr(self, t: int) -> list[float]:
        return super()._get_lr(t + 1)


class PaperCosineLRScheduler(_PaperBatchIndex, CosineLRScheduler):
    """timm's cosine schedule with linear warmup, evaluated at the paper's batch number (sections 3.1, 5.1).

    Use with ``warmup_t=m, warmup_lr_init=0, warmup_prefix=True, t_initial=T, lr_min=0, cycle_limit=1``.
    """


class PaperMultiStepLRScheduler(_PaperBatchIndex, MultiStepLRScheduler):
    """timm's multi-step schedule evaluated at the paper's batch number (section 2 step decay, 3.1 warmup).

    ``decay_t`` are update counts ``d * U``: batch ``i`` is decayed once for every ``d * U < i``.
    """

    def get_curr_decay_steps(self, t: int) -> int:
        return bisect.bisect_left(self.decay_t, t)


def warmup_updates(warmup_epochs: float, updates_per_epoch: int) -> int:
    """Number of warmup batches ``m`` for ``warmup_epochs`` (may be fractional) epochs (section 3.1)."""
    return int(round(warmup_epochs * updates_per_epoch))


def create_paper_scheduler(
        optimizer: torch.optim.Optimizer,
        sched: str,
        epochs: int,
        updates_per_epoch: int,
        warmup_epochs: float = 0,
        decay_epochs: Sequence[int] = (30, 60, 90),
        decay_rate: float = 0.1,
) -> Scheduler:
    """Per-batch lr schedule of the paper: warmup (3.1) then cosine (5.1) or step decay (section 2).

    The base lr ``eta`` is each param group's ``lr`` when the scheduler is created (timm stores it as
    ``initial_lr``). Creating the scheduler already sets the lr of batch 1.

    Calling convention (per update, nothing per epoch)::

        global_step = 0  # optimizer updates done so far in the whole run
        scheduler = create_paper_scheduler(optimizer, 'cosine', epochs, updates_per_epoch, warmup_epochs=5)
        for epoch in range(epochs):
            for x, y in loader:          # len(loader) == updates_per_epoch (one update per batch)
                ...; optimizer.step()
                global_step += 1
                scheduler.step_update(num_updates=global_step)   # sets the lr of the next batch

    ``scheduler.step(epoch)`` is a no-op (``t_in_epochs=False``), so timm-style loops calling it are harmless.
    With gradient accumulation, count optimizer updates, not loader batches, in both ``global_step`` and
    ``updates_per_epoch``. On resume load ``scheduler.state_dict()`` back with ``load_state_dict`` and call
    ``scheduler.step_update(num_updates=global_step)`` once before the first batch (creating the scheduler reset
    the lr to that of batch 1). The lr for the batch after ``k`` updates is
    ``scheduler._get_values(k, on_epoch=False)`` (timm's own lookup).

    Args:
        optimizer: optimizer whose param groups' ``lr`` is the base lr ``eta``.
        sched: ``'cosine'`` (section 5.1) or ``'step'`` (section 2).
        epochs: total epochs, warmup included (the paper: 120 with step decay / cosine).
        updates_per_epoch: optimizer updates per epoch ``U``.
        warmup_epochs: warmup length (section 3.1 uses 5), ``m = round(warmup_epochs * U)`` batches.
        decay_epochs: ``'step'`` only: epochs (counted from the start of training, warmup included) whose first
            batch has the lr divided by ``1 / decay_rate`` again.
        decay_rate: ``'step'`` only: multiplicative decay, 0.1 in the paper.

    Returns:
        A timm :class:`~timm.scheduler.scheduler.Scheduler` stepped per update; its ``state_dict`` /
        ``load_state_dict`` are timm's.
    """
    if updates_per_epoch <= 0 or epochs <= 0:
        raise ValueError(f'epochs ({epochs}) and updates_per_epoch ({updates_per_epoch}) must be positive')
    total = epochs * updates_per_epoch
    warmup_t = warmup_updates(warmup_epochs, updates_per_epoch)
    if not 0 <= warmup_t < total:
        raise ValueError(f'warmup of {warmup_t} updates does not fit in {total} updates')
    warmup_args = dict(warmup_t=warmup_t, warmup_lr_init=0.0, t_in_epochs=False)
    if sched == 'cosine':
        return PaperCosineLRScheduler(
            optimizer, t_initial=total - warmup_t, lr_min=0.0, cycle_mul=1.0, cycle_decay=1.0, cycle_limit=1,
            warmup_prefix=True, **warmup_args)
    if sched == 'step':
        decay_t = sorted(int(math.floor(d * updates_per_epoch)) for d in decay_epochs)
        return PaperMultiStepLRScheduler(
            optimizer, decay_t=decay_t, decay_rate=decay_rate, warmup_prefix=False, **warmup_args)
    raise ValueError(f"sched must be 'cosine' or 'step', got {sched!r}")
