"""Section 3.2 "Low-precision training": a training step of a `_bot` model under autocast.

As timm's train.py does it: ``torch.autocast(device_type, dtype)`` around the forward and loss; for float16 the
loss is scaled by ``timm.utils.NativeScaler`` (``torch.amp.GradScaler``), for bfloat16 no scaler is used (bfloat16
has float32's exponent range, so gradients do not underflow). Parameters, gradients and optimizer state stay in
float32 -- the paper's "FP32 copy of the parameters" for the update.
"""
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.utils import NativeScaler

import timm_bot  # noqa: F401  (registers the *_bot models)
from timm_bot.optim import create_paper_optimizer

STEPS = 6


@pytest.fixture
def one_thread():
    """CPU autocast kernels on a tiny model are fastest (and far less sensitive to a busy machine) single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny_model() -> nn.Module:
    """resnet18d_tiny_bot narrowed further (same ResNet-D blocks and init) so that CPU bfloat16 stays fast."""
    torch.manual_seed(0)
    return timm.create_model('resnet18d_tiny_bot', num_classes=10, layers=(1, 1, 1, 1), stem_width=8,
                             channels=(8, 16, 32, 64))


def _batch(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 16, 16, generator=g).to(device), torch.arange(8).to(device)


def _train(model: nn.Module, device: str, dtype: torch.dtype, scaler: NativeScaler | None) -> list[float]:
    model.to(device).train()
    opt = create_paper_optimizer(model, lr=0.1, weight_decay=1e-4)
    x, y = _batch(device)
    losses = []
    for _ in range(STEPS):
        with torch.autocast(device, dtype=dtype):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        assert logits.dtype == dtype  # the convolutions really ran in low precision
        opt.zero_grad()
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler(loss, opt)
        losses.append(loss.item())
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
    return losses


def test_bf16_autocast_cpu_lowers_loss(one_thread: None) -> None:
    losses = _train(_tiny_model(), 'cpu', torch.bfloat16, scaler=None)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.skipif(not torch.cuda.is_available(), reason='FP16 with loss scaling is tested on CUDA')
def test_fp16_loss_scaling_cuda_lowers_loss() -> None:
    scaler = NativeScaler(device='cuda')
    losses = _train(_tiny_model(), 'cuda', torch.float16, scaler=scaler)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.7 * losses[0], losses
    assert scaler.state_dict()['scale'] > 1.0  # the loss really was scaled
