"""The paper's initialization for any timm or torchvision model: Xavier (section 2) and zero-gamma (section 3.1)."""
import torch
import torch.nn as nn

__all__ = ['paper_init_', 'xavier_init_', 'zero_gamma_']

_BN = nn.modules.batchnorm._BatchNorm
_SKIP_FLAGS = ('has_skip', 'use_res_connect')  # timm EfficientNet/MobileNet blocks, torchvision MobileNet blocks
_SHORTCUTS = ('downsample', 'shortcut')  # timm/torchvision ResNet, timm RegNet, ConvNeXt (no BN: left alone)


@torch.no_grad()
def xavier_init_(model: nn.Module) -> nn.Module:
    """Section 2: conv and FC weights ~ U[-a, a], a = sqrt(6 / (fan_in + fan_out)), biases 0; norms gamma 1, beta 0."""
    for m in model.modules():
        norm = isinstance(m, (_BN, nn.GroupNorm, nn.LayerNorm)) and m.weight is not None
        if norm or isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            # torch's Xavier fans count the kernel area, as MXNet's (the paper's)
            (nn.init.ones_ if norm else nn.init.xavier_uniform_)(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def _last_bn(block: nn.Module) -> nn.Module | None:
    """The BN ending the branch of an innermost residual ``block`` (``has_skip`` / ``use_res_connect`` true or a
    ``downsample`` / ``shortcut`` module or None) if as wide as the block's output; else None (ConvNeXt, GhostNet)."""
    if hasattr(block, 'blocks'):  # a timm stage, whose ``downsample`` precedes its blocks
        return None
    flags = [getattr(block, f) for f in _SKIP_FLAGS if hasattr(block, f)]
    shortcuts = [getattr(block, a) for a in _SHORTCUTS if isinstance(getattr(block, a, 0), (nn.Module, type(None)))]
    if (flags and not flags[0]) or not (flags or shortcuts):
        return None  # no skip connection, or not a residual block
    shortcut = [] if flags or shortcuts[0] is None else list(shortcuts[0].modules())
    branch = [m for m in block.modules() if m not in shortcut]
    if any(hasattr(m, a) for m in branch[1:] for a in _SKIP_FLAGS + _SHORTCUTS):
        return None  # holds residual blocks itself
    bns = [m for m in branch if isinstance(m, _BN) and m.weight is not None]
    convs = [m for m in branch if isinstance(m, nn.Conv2d)]
    proj = [m for m in shortcut if isinstance(m, nn.Conv2d)]
    unstrided = convs and all(max(c.stride) == 1 for c in convs)
    width = proj[-1].out_channels if proj else convs[0].in_channels if unstrided else None
    return bns[-1] if bns and bns[-1].num_features == width else None


@torch.no_grad()
def zero_gamma_(model: nn.Module, value: float = 0.0) -> int:
    """Section 3.1: gamma of the last BN of every residual branch := ``value`` (0: the block starts as its shortcut,
    1 undoes timm's ``zero_init_last``); returns how many (0: none found; :func:`_last_bn` says which)."""
    bns = [bn for bn in map(_last_bn, model.modules()) if bn is not None]
    for bn in bns:
        bn.weight.fill_(value)
    return len(bns)


def paper_init_(model: nn.Module, weight_init: str = 'xavier', zero_init_last: bool = True) -> str:
    """Xavier (section 2, or ``'timm'``: the model's own) and zero-gamma (3.1) on any model; returns a log line."""
    if weight_init == 'xavier':
        xavier_init_(model)
    count = zero_gamma_(model, 0.0 if zero_init_last else 1.0)
    found = f'{count} residual branches end at gamma 0' if count else 'not applied: no residual branch ends in a BN'
    return f'{weight_init} init' + (f', zero-gamma (3.1): {found}' if zero_init_last else '')
