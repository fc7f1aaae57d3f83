"""Weight initialization of *Bag of Tricks*: the baseline's Xavier init (section 2) and zero-gamma (section 3.1)."""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ['WEIGHT_INITS', 'xavier_init_', 'zero_gamma_']

WEIGHT_INITS = ('xavier', 'timm')

# Attribute names residual blocks use for their shortcut (path B): timm and torchvision use ``downsample``.
_SHORTCUT_NAMES = ('downsample', 'shortcut')


def xavier_init_(model: nn.Module) -> nn.Module:
    """Section 2: conv and FC weights ~ U[-a, a], a = sqrt(6 / (d_in + d_out)); biases 0; BN gamma 1, beta 0.

    torch's ``xavier_uniform_`` counts fan-in/fan-out with the kernel area, as MXNet's Xavier (the paper's) does.
    """
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def _last_branch_bn(block: nn.Module) -> nn.modules.batchnorm._BatchNorm | None:
    """The last BN (in registration order) of a block's residual branch, ignoring its shortcut."""
    last = None
    for name, m in block.named_modules():
        if name.split('.')[0] in _SHORTCUT_NAMES:
            continue
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m is not block:
            last = m
    return last


@torch.no_grad()
def zero_gamma_(model: nn.Module) -> int:
    """Zero-gamma (section 3.1): set gamma = 0 in the last BN of every residual block, in place.

    A residual block is a module with a ``downsample`` or ``shortcut`` attribute (even ``None``), the convention of
    timm's and torchvision's ResNet family; its residual branch is everything but that shortcut. After this every
    block outputs ``act(shortcut(x))`` at init, which makes the network easier to train early on.

    Returns:
        how many BN layers were zeroed.

    Raises:
        ValueError: if the model has no such residual block with a BN in its branch.
    """
    touched = 0
    for m in model.modules():
        if not any(hasattr(m, n) for n in _SHORTCUT_NAMES):
            continue
        bn = _last_branch_bn(m)
        if bn is not None and bn.weight is not None:
            bn.weight.zero_()
            touched += 1
    if touched == 0:
        raise ValueError(
            f'zero_gamma_: found no residual block with a BatchNorm in its branch in {type(model).__name__}. '
            'It looks for modules with a `downsample` or `shortcut` attribute (timm/torchvision ResNets); '
            'for other architectures zero the last norm of each residual branch by hand.')
    return touched
