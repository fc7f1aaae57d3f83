"""Optimizer side of *Bag of Tricks* (He et al., 2019): the baseline's NAG (section 2), "no bias decay" and linear
learning-rate scaling (section 3.1 "Large-batch training"). Everything is built through timm's optimizer factory.

* **NAG** (section 2: "Nesterov Accelerated Gradient (NAG) descent", momentum 0.9) *is* timm's ``'sgd'`` /
  ``'nesterov'``: ``torch.optim.SGD`` with ``nesterov=True`` and momentum defaulting to 0.9. Importing this module
  only adds the alias ``'nag'`` to timm's registry (no new optimizer class), so
  ``timm.optim.create_optimizer_v2(model, 'nag', ...)`` works.
* **No bias decay** (section 3.1): weight decay only on conv and FC weights; biases and BN gamma/beta get none.
  timm's factory already does this with ``filter_bias_and_bn=True``: its ``param_groups_weight_decay`` excludes
  ``param.ndim <= 1 or name.endswith('.bias')``. For the ResNets of this package (conv weights 4-d, FC weight 2-d,
  every BN / bias 1-d) that is exactly the paper's rule, so nothing is re-implemented here.
  :func:`decayed_parameter_names` reads timm's own groups to report which parameters are decayed.
* **Linear scaling** (section 3.1): lr = 0.1 x b / 256 for a (global) batch of b images.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.optim import create_optimizer_v2, list_optimizers, param_groups_weight_decay
from timm.optim._optim_factory import default_registry

__all__ = [
    'PAPER_BASE_LR', 'PAPER_BASE_BATCH_SIZE', 'create_paper_optimizer', 'decayed_parameter_names',
    'linear_scaled_lr', 'resolve_lr',
]

# Section 3.1: "choosing 0.1 as the initial learning rate for batch size 256".
PAPER_BASE_LR = 0.1
PAPER_BASE_BATCH_SIZE = 256


def _register_nag() -> None:
    """Alias the paper's NAG (section 2) to timm's ``'nesterov'`` (SGD, ``nesterov=True``, momentum 0.9)."""
    if 'nag' not in list_optimizers():
        default_registry.register_alias('nag', 'nesterov')


_register_nag()


def decayed_parameter_names(model: nn.Module, no_bias_decay: bool = True) -> tuple[list[str], list[str]]:
    """Names of the parameters with and without weight decay (section 3.1 "No bias decay").

    Computed by timm's own ``param_groups_weight_decay`` with the arguments ``create_optimizer_v2`` passes it
    (``weight_decay_exclude_1d=filter_bias_and_bn`` and the model's ``no_weight_decay()`` list), so what is
    logged is what the optimizer does. Frozen parameters (``requires_grad=False``) are in neither list.

    Args:
        model: the model the optimizer will be built for.
        no_bias_decay: the paper's trick; ``False`` is the baseline (every parameter decayed).

    Returns:
        ``(decayed, not_decayed)`` parameter names, in ``model.named_parameters()`` order.
    """
    no_weight_decay = getattr(model, 'no_weight_decay', lambda: set())()
    # Any nonzero weight decay: with 0, timm puts every parameter into the no-decay group.
    groups = param_groups_weight_decay(
        model, weight_decay=1.0, weight_decay_exclude_1d=no_bias_decay, no_weight_decay_list=no_weight_decay)
    decayed_ids = {id(p) for g in groups if g['weight_decay'] > 0 for p in g['params']}
    decayed, not_decayed = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (decayed if id(param) in decayed_ids else not_decayed).append(name)
    return decayed, not_decayed


def create_paper_optimizer(
        model: nn.Module,
        opt: str = 'nag',
        lr: float = PAPER_BASE_LR,
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        no_bias_decay: bool = True,
) -> torch.optim.Optimizer:
    """The paper's optimizer through ``timm.optim.create_optimizer_v2`` (sections 2 and 3.1).

    Args:
        model: model to optimize.
        opt: any name in timm's registry; ``'nag'`` (= timm's ``'nesterov'``) is the paper's NAG.
        lr: learning rate (see :func:`resolve_lr` for linear scaling).
        weight_decay: the paper uses 1e-4.
        momentum: 0.9 in the paper; ignored by optimizers without momentum.
        no_bias_decay: section 3.1: decay only conv and FC weights (timm's ``filter_bias_and_bn``); ``False``
            decays every parameter, the baseline.

    Returns:
        The optimizer. With ``no_bias_decay`` its param groups are timm's: one with ``weight_decay=0`` (biases,
        BN gamma/beta), one with ``weight_decay`` (conv / FC weights).
    """
    return create_optimizer_v2(
        model, opt=opt, lr=lr, weight_decay=weight_decay, momentum=momentum, filter_bias_and_bn=no_bias_decay)


def linear_scaled_lr(
        batch_size: int,
        world_size: int = 1,
        grad_accum_steps: int = 1,
        base_lr: float = PAPER_BASE_LR,
        base_batch_size: int = PAPER_BASE_BATCH_SIZE,
) -> float:
    """Linear scaling learning rate (section 3.1): ``base_lr x global_batch / base_batch_size``.

    The global batch is ``batch_size x world_size x grad_accum_steps`` images per optimizer step; the paper's
    batch 1024 gives 0.1 x 1024 / 256 = 0.4.
    """
    global_batch = batch_size * world_size * grad_accum_steps
    if global_batch <= 0 or base_batch_size <= 0:
        raise ValueError(f'batch sizes must be positive, got global batch {global_batch}, base {base_batch_size}')
    return base_lr * global_batch / base_batch_size


def resolve_lr(
        lr: float | None,
        batch_size: int,
        world_size: int = 1,
        grad_accum_steps: int = 1,
        base_lr: float = PAPER_BASE_LR,
        base_batch_size: int = PAPER_BASE_BATCH_SIZE,
) -> tuple[float, str]:
    """The learning rate to use and a log line saying where it comes from (section 3.1 linear scaling).

    An explicit ``lr`` wins; ``None`` applies :func:`linear_scaled_lr`.

    Returns:
        ``(lr, message)``, e.g. ``(0.4, 'lr 0.4 = 0.1 x 1024/256 (linear scaling, section 3.1)')`` or
        ``(0.05, 'lr 0.05 (explicit)')``.
    """
    if lr is not None:
        return lr, f'lr {lr:g} (explicit)'
    scaled = linear_scaled_lr(batch_size, world_size, grad_accum_steps, base_lr, base_batch_size)
    global_batch = batch_size * world_size * grad_accum_steps
    return scaled, f'lr {scaled:g} = {base_lr:g} x {global_batch}/{base_batch_size} (linear scaling, section 3.1)'
