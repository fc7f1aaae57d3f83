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


def create_amp(device: torch.device, enabled: bool, dtype: str = 'float16',
               off_if_slow: bool = False) -> tuple[Callable, NativeScaler | None]:
    """``(autocast context factory, loss scaler or None)``; on a CPU, logs how fast ``dtype`` is measured to be and,
    with ``off_if_slow`` (a GPU recipe that landed on a CPU), turns AMP off when it is slower than float32."""
    if not enabled:
        return contextlib.nullcontext, None
    amp_dtype = torch.bfloat16 if dtype == 'bfloat16' else torch.float16
    if device.type == 'cuda' and amp_dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ValueError(f'amp_dtype bfloat16: {torch.cuda.get_device_name(device)} has no bfloat16 support: use '
                         'amp_dtype: float16 (with loss scaling)')
    if device.type == 'cpu':
        slowdown = autocast_slowdown(device, amp_dtype)
        measured = f'amp: {dtype} autocast measured at {slowdown:.1f}x the time of float32 on this CPU'
        if slowdown > 1.5 and off_if_slow:
            _logger.warning(f'{measured}: amp turned off (device auto resolved to the CPU; device: cpu keeps it on)')
            return contextlib.nullcontext, None
        (_logger.warning if slowdown > 1.5 else _logger.info)(
            measured + ('; it has no fast low-precision support: set amp: false' if slowdown > 1.5 else ''))
    scaler = NativeScaler(device=device.type) if amp_dtype == torch.float16 else None
    return (lambda: torch.autocast(device.type, dtype=amp_dtype)), scaler
