"""Optimizer of *Bag of Tricks* on timm's factory: NAG (section 2), no bias decay and linear lr scaling (3.1)."""
import torch
import torch.nn as nn
from timm.optim import create_optimizer_v2, list_optimizers
from timm.optim._optim_factory import default_registry  # timm has no public way to register an optimizer

__all__ = ['PAPER_BASE_LR', 'PAPER_BASE_BATCH_SIZE', 'create_paper_optimizer', 'resolve_lr']

PAPER_BASE_LR, PAPER_BASE_BATCH_SIZE = 0.1, 256  # section 3.1: lr 0.1 for batch size 256

if 'nag' not in list_optimizers():  # NAG: timm's 'nesterov' (SGD with nesterov=True)
    default_registry.register_alias('nag', 'nesterov')


def create_paper_optimizer(model: nn.Module, opt: str = 'nag', lr: float = PAPER_BASE_LR, weight_decay: float = 1e-4,
                           momentum: float = 0.9, no_bias_decay: bool = True) -> torch.optim.Optimizer:
    """timm's ``create_optimizer_v2``; ``no_bias_decay`` is its ``filter_bias_and_bn`` (no decay for 1-d params)."""
    return create_optimizer_v2(model, opt=opt, lr=lr, weight_decay=weight_decay, momentum=momentum,
                               filter_bias_and_bn=no_bias_decay)


def resolve_lr(lr: float | None, batch_size: int, world_size: int = 1, grad_accum_steps: int = 1,
               lr_base: float = PAPER_BASE_LR, lr_base_size: int = PAPER_BASE_BATCH_SIZE) -> tuple[float, str]:
    """``(lr, log line)``: ``lr`` if given, else section 3.1's ``lr_base x global batch / lr_base_size`` (the YAML's
    keys); the global batch is ``batch_size x world_size x grad_accum_steps``."""
    if lr is not None:
        return lr, f'lr {lr:g} (explicit)'
    global_batch = batch_size * world_size * grad_accum_steps  # sizes checked >= 1 by TrainHparams
    scaled = lr_base * global_batch / lr_base_size  # 0.1 x 1024 / 256 = 0.4
    return scaled, f'lr {scaled:g} = {lr_base:g} x {global_batch}/{lr_base_size} (linear scaling, section 3.1)'
