"""Per-batch lr schedules of *Bag of Tricks* on timm's schedulers: warmup (3.1), cosine (5.1), step decay (2).

Batch ``i`` (1-based) of ``N`` gets ``i eta / m`` during ``m`` warmup batches, then cosine
``0.5 (1 + cos((i - m) pi / (N - m))) eta`` or step ``eta * decay_rate ** #{d : i > d U}`` (``U`` updates per epoch).
timm evaluates these at ``t`` = updates done (first batch at lr 0); the subclasses below evaluate one batch ahead.

The lr changes per update: call ``scheduler.step_update(num_updates=updates done)`` after every optimizer step
(``step(epoch)``, timm's per-epoch hook, does nothing). Loops built on torch's ``LRScheduler`` (Lightning with
``interval: 'step'``, Accelerate, ...) use ``scheduler.as_lr_scheduler()``, a ``LambdaLR`` stepped after every update.
"""
import bisect
from collections.abc import Sequence
from typing import Any

import torch
from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler
from timm.scheduler.scheduler import Scheduler

__all__ = ['PaperCosineLRScheduler', 'PaperMultiStepLRScheduler', 'create_paper_scheduler']


class _PaperBatchIndex:
    """Evaluate timm's schedule at the 1-based number of the batch about to run (``num_updates + 1``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.update_groups(self._get_lr(0))  # the lr of batch 1, used before any step_update

    def _get_lr(self, t: int) -> list[float]:
        return super()._get_lr(t + 1)

    def lr_per_batch(self, num_batches: int) -> list[float]:
        """The lr of batches 1..``num_batches`` (of the first param group), for the plot of the schedule."""
        return [self._get_lr(t)[0] for t in range(num_batches)]

    def step(self, epoch: int | None = None, metric: float | None = None) -> None:
        """timm's per-epoch hook, a no-op: the lr changes per update (:meth:`step_update`). ``step()`` raises."""
        if epoch is None:
            raise TypeError(f'{type(self).__name__} sets the lr per update: call step_update(num_updates=updates '
                            'done) after every optimizer step, or use .as_lr_scheduler(), a torch LambdaLR whose '
                            'step() you call after every optimizer step')
        super().step(epoch, metric)

    def as_lr_scheduler(self) -> torch.optim.lr_scheduler.LambdaLR:
        """This schedule as torch's ``LambdaLR`` on the same optimizer: call its ``step()`` after every optimizer step
        (not per epoch), and stop using this scheduler. Its ``last_epoch`` counts updates."""
        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, [
            lambda t, i=i, base=base: self._get_lr(t)[i] / base if base else 0.0
            for i, base in enumerate(self.base_values)])


class PaperCosineLRScheduler(_PaperBatchIndex, CosineLRScheduler):
    """timm's warmup + cosine at the paper's batch number (sections 3.1, 5.1)."""


class PaperMultiStepLRScheduler(_PaperBatchIndex, MultiStepLRScheduler):
    """timm's warmup + multi-step decay at the paper's batch number; batch ``i`` is decayed once per ``d*U < i``."""

    def get_curr_decay_steps(self, t: int) -> int:
        return bisect.bisect_left(self.decay_t, t)


def create_paper_scheduler(optimizer: torch.optim.Optimizer, sched: str, epochs: int, updates_per_epoch: int,
                           warmup_epochs: float = 0, decay_milestones: Sequence[int] = (30, 60, 90),
                           decay_rate: float = 0.1) -> Scheduler:
    """Warmup then ``'cosine'`` or ``'step'`` decay (at epochs ``decay_milestones``); ``eta``: the lr at creation.
    ``updates_per_epoch``: optimizer steps per epoch, ``ceil(batches per epoch / grad_accum_steps)`` (per process).
    Call ``step_update(num_updates=updates done)`` after every update and after loading a ``state_dict``; for torch's
    ``LRScheduler`` protocol, ``.as_lr_scheduler()``."""
    total, warmup_t = epochs * updates_per_epoch, round(warmup_epochs * updates_per_epoch)  # m; may be fractional
    if updates_per_epoch <= 0 or not 0 <= warmup_t < total:
        raise ValueError(f'{warmup_t} warmup updates must be < {epochs} epochs x {updates_per_epoch} updates')
    common = dict(warmup_t=warmup_t, warmup_lr_init=0.0, t_in_epochs=False)
    if sched == 'cosine':
        return PaperCosineLRScheduler(optimizer, t_initial=total - warmup_t, warmup_prefix=True, **common)
    if sched == 'step':
        if not all(0 < d < epochs for d in decay_milestones):
            raise ValueError(f'decay_milestones {list(decay_milestones)} must be epochs in 1..{epochs - 1}: a decay at '
                             f'or after the last of {epochs} epochs never happens')
        decay_t = sorted(int(d * updates_per_epoch) for d in decay_milestones)
        return PaperMultiStepLRScheduler(optimizer, decay_t=decay_t, decay_rate=decay_rate, warmup_prefix=False,
                                         **common)
    raise ValueError(f"sched must be 'cosine' or 'step', got {sched!r}")
