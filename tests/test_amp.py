"""Section 3.2 low-precision training: steps under autocast with the paper's loss, as timm's train.py runs them.

bfloat16 needs no loss scaling (float32's exponent range); float16 uses ``timm.utils.NativeScaler``. Parameters,
gradients and optimizer state stay float32 (the paper's FP32 master copy).
"""
import pytest
import timm
import torch
from timm.utils import NativeScaler

from timm_bot.distill import DistillationLoss
from timm_bot.loss import SmoothedCrossEntropy

NARROW = dict(num_classes=10, layers=(1, 1, 1, 1), stem_width=8, channels=(8, 16, 32, 64))


def _train(device: str, dtype: torch.dtype, scaler: NativeScaler | None = None, steps: int = 6) -> list[float]:
    torch.manual_seed(0)
    model = timm.create_model('resnet18d', **NARROW).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    g = torch.Generator().manual_seed(1)
    # 32 px: at 16 px layer4 sees 1x1 maps, where torch 2.14's CPU bf16 conv backward sometimes returns NaN weight
    # gradients (uninitialized memory: the same seeds give NaN in some processes only)
    x, y = torch.randn(8, 3, 32, 32, generator=g).to(device), torch.arange(8).to(device)
    criterion, losses = SmoothedCrossEntropy(0.1), []
    for _ in range(steps):
        with torch.autocast(device, dtype=dtype):
            logits = model(x)
            loss = criterion(logits, y)
        assert logits.dtype == dtype and loss.dtype == torch.float32
        opt.zero_grad()
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler(loss, opt)
        losses.append(loss.item())
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.7 * losses[0], losses
    return losses


def test_bf16_autocast_cpu_lowers_loss() -> None:
    _train('cpu', torch.bfloat16)


def test_bf16_distillation_teacher_runs_in_low_precision() -> None:
    torch.manual_seed(0)
    teacher, student = timm.create_model('resnet18d', **NARROW), timm.create_model('resnet18d', **NARROW)
    dtypes = []
    teacher.fc.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    stats = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    loss_fn = DistillationLoss(teacher, SmoothedCrossEntropy(0.1), 20.0, *stats, *stats)
    x = torch.randn(4, 3, 32, 32)  # 32 px: see _train
    with torch.autocast('cpu', dtype=torch.bfloat16):
        loss = loss_fn(student(x), x, torch.arange(4))
    loss.backward()
    assert dtypes == [torch.bfloat16] and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in student.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason='float16 with loss scaling is tested on CUDA')
def test_fp16_loss_scaling_cuda_lowers_loss() -> None:
    scaler = NativeScaler(device='cuda')
    _train('cuda', torch.float16, scaler)
    assert scaler.state_dict()['scale'] > 1.0  # the loss really was scaled
