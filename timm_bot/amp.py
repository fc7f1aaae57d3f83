"""Low-precision training (section 3.2): ``torch.autocast`` FP16 with timm's loss scaling, or BF16 (no scaling)."""
import contextlib
import functools
import logging
import timeit
from collections.abc import Callable

import torch
from timm.utils import NativeScaler

__all__ = ['autocast_slowdown', 'create_amp']

_logger = logging.getLogger(__name__)


def autocast_slowdown(device: torch.device, dtype: torch.dtype) -> float:
    """Measured time of a small conv step under autocast(``dtype``) relative to float32 on ``device`` (best of 4)."""
    conv, x = torch.nn.Conv2d(32, 32, 3, padding=1).to(device), torch.randn(16, 32, 32, 32, device=device)

    def step(low: bool) -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=low):
            conv(x).float().sum().backward()
    best = {low: min(timeit.repeat(functools.partial(step, low), number=1, repeat=4)) for low in (True, False)}
    return best[True] / best[False]


def create_amp(device: torch.device, enabled: bool, dtype: str = 'float16') -> tuple[Callable, NativeScaler | None]:
    """``(autocast context factory, loss scaler or None)``; on a CPU, logs how fast ``dtype`` is measured to be."""
    if not enabled:
        return contextlib.nullcontext, None
    amp_dtype = torch.bfloat16 if dtype == 'bfloat16' else torch.float16
    if device.type == 'cpu':
        slowdown = autocast_slowdown(device, amp_dtype)
        (_logger.warning if slowdown > 1.5 else _logger.info)(
            f'amp: {dtype} autocast measured at {slowdown:.1f}x the time of float32 on this CPU'
            + ('; it has no fast low-precision support: set amp: false' if slowdown > 1.5 else ''))
    scaler = NativeScaler(device=device.type) if amp_dtype == torch.float16 else None
    return (lambda: torch.autocast(device.type, dtype=amp_dtype)), scaler
