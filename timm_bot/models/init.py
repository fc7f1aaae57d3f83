"""The paper's initialization for any timm or torchvision model: Xavier (section 2) and zero-gamma (section 3.1)."""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ['xavier_init_', 'zero_gamma_']

_BN = nn.modules.batchnorm._BatchNorm
_SKIP_FLAGS = ('has_skip', 'use_res_connect')  # timm EfficientNet/MobileNet blocks, torchvision MobileNet blocks
_SHORTCUTS = ('downsample', 'shortcut')  # timm/torchvision ResNet, timm RegNet, ConvNeXt (no BN: left alone)


@torch.no_grad()
def xavier_init_(model: nn.Module) -> nn.Module:
    """Section 2: conv and FC weights ~ U[-a, a], a = sqrt(6 / (fan_in + fan_out)), biases 0; norms gamma 1, beta 0."""
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)  # torch's fans count the kernel area, as MXNet's Xavier (the paper's)
        elif isinstance(m, (_BN, nn.GroupNorm, nn.LayerNorm)) and m.weight is not None:
            nn.init.ones_(m.weight)
        else:
            continue
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    return model


def _branch(block: nn.Module) -> tuple[list[nn.Module], list[nn.Module]] | None:
    """``(residual branch, shortcut)`` modules of a residual block; None if ``block`` is not one or has no skip."""
    if hasattr(block, 'blocks'):  # a timm stage, whose ``downsample`` precedes its blocks
        return None
    for flag in _SKIP_FLAGS:
        if hasattr(block, flag):
            return (list(block.modules()), []) if getattr(block, flag) else None
    for attr in _SHORTCUTS:
        shortcut = getattr(block, attr, False)
        if shortcut is None or isinstance(shortcut, nn.Module):
            shortcut = list(shortcut.modules()) if shortcut is not None else []
            return [m for m in block.modules() if m not in shortcut], shortcut
    return None


@torch.no_grad()
def zero_gamma_(model: nn.Module, value: float = 0.0) -> int:
    """Section 3.1: set gamma of the last BatchNorm of every residual branch to ``value`` (0: each block starts as
    its shortcut; 1 undoes timm's ``zero_init_last``). Returns how many were set, 0 when none were found.

    Residual blocks: innermost modules with ``has_skip`` / ``use_res_connect`` true (timm EfficientNet/MobileNet,
    torchvision MobileNet) or a ``downsample`` / ``shortcut`` module or None (timm/torchvision ResNet, timm RegNet),
    not timm stages (``blocks``). The branch's last registered BN counts only if it is as wide as the block's output
    (the shortcut's last conv, else the unstrided input): a ``None`` shortcut meaning "no skip" (timm RegNet-Z) and
    branches not ending in a BN (ConvNeXt: LayerNorm and layer scale; GhostNet: a concatenation) are left alone.
    """
    count = 0
    for block in model.modules():
        found = _branch(block)
        if found is None or any(hasattr(m, a) for m in found[0][1:] for a in _SKIP_FLAGS + _SHORTCUTS):
            continue
        bns = [m for m in found[0] if isinstance(m, _BN) and m.weight is not None]
        convs = [m for m in found[0] if isinstance(m, nn.Conv2d)]
        proj = [m for m in found[1] if isinstance(m, nn.Conv2d)]
        unstrided = convs and all(max(c.stride) == 1 for c in convs)
        width = proj[-1].out_channels if proj else convs[0].in_channels if unstrided else None
        if bns and bns[-1].num_features == width:
            bns[-1].weight.fill_(value)
            count += 1
    return count
