"""Knowledge distillation, section 5.3 (timm_bot.distill)."""
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import save_for_hf
from timm.task import LogitDistillationTask

import timm_bot  # noqa: F401
from timm_bot.checkpoint import save_checkpoint
from timm_bot.distill import DistillationLoss, load_teacher
from timm_bot.loss import MixedTarget, SmoothedCrossEntropy
from timm_bot.models import PAPER_MEAN, PAPER_STD

ARCH = 'resnet18d_tiny_bot'
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Recorder(nn.Module):
    """A linear 'teacher' on flattened images that remembers what it was fed."""

    def __init__(self, in_features=3 * 4 * 4, num_classes=5):
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x)
        return self.fc(x.flatten(1))


def _batch(batch=4, num_classes=5):
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 4, 4)
    return x, torch.randint(0, num_classes, (batch,)), torch.randn(batch, num_classes, requires_grad=True)


@pytest.mark.parametrize('mixed', [False, True])
def test_loss_equals_formula(mixed):
    x, y, z = _batch()
    teacher = Recorder()
    base = SmoothedCrossEntropy(0.1)
    target = MixedTarget(y, y.flip(0), 0.3) if mixed else y
    loss_fn = DistillationLoss(teacher, base, temperature=4.0)
    loss = loss_fn(z, x, target)

    with torch.no_grad():
        r = teacher.fc(x.flatten(1))
    soft = -(F.softmax(r / 4, -1) * F.log_softmax(z / 4, -1)).sum(-1).mean()
    expected = base(z, target) + 16 * soft
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(loss_fn.last_distill_loss, 16 * soft.detach())
    assert torch.equal(teacher.inputs[-1], x)  # no renormalization requested


def test_same_gradients_as_timm_logit_distillation():
    """timm's KL form (weights 1/1) differs by the constant T^2 H(softmax(r/T)): same gradients."""
    torch.manual_seed(0)
    student, teacher = timm.create_model(ARCH), timm.create_model(ARCH).eval()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    base, temp = SmoothedCrossEntropy(0.1), 3.0

    task = LogitDistillationTask(student, teacher, criterion=base, temperature=temp, verbose=False)
    timm_loss = task(x, y)['loss']
    timm_grads = torch.autograd.grad(timm_loss, list(student.parameters()))

    ours_fn = DistillationLoss(teacher, base, temperature=temp)
    ours = ours_fn(student(x), x, y)
    ours_grads = torch.autograd.grad(ours, list(student.parameters()))

    with torch.no_grad():
        p_t = F.softmax(teacher(x) / temp, -1)
        entropy = -(p_t * p_t.log()).sum(-1).mean()
    torch.testing.assert_close(ours - timm_loss, temp ** 2 * entropy, rtol=1e-4, atol=1e-5)
    for g_ours, g_timm in zip(ours_grads, timm_grads):
        torch.testing.assert_close(g_ours, g_timm, rtol=1e-4, atol=1e-6)


def test_teacher_frozen_eval_and_hidden():
    torch.manual_seed(0)
    student, teacher = timm.create_model(ARCH), timm.create_model(ARCH)
    teacher.train()
    loss_fn = DistillationLoss(teacher, SmoothedCrossEntropy(0.1), temperature=20.0)
    assert not teacher.training
    loss_fn.train()
    teacher_bn = teacher.bn1.running_mean.clone()
    assert not teacher.training and loss_fn.training

    student_keys = set(student.state_dict())
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    loss = loss_fn(student(x), x, y)
    loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    torch.testing.assert_close(teacher.bn1.running_mean, teacher_bn, rtol=0, atol=0)  # eval: BN stats frozen
    assert list(loss_fn.parameters()) == [] and loss_fn.state_dict() == {}
    assert set(student.state_dict()) == student_keys

    loss_fn.to(torch.float64)  # .to() still reaches the teacher
    assert teacher.fc.weight.dtype == torch.float64


def test_renormalization_exact():
    x, y, z = _batch()
    teacher = Recorder()
    loss_fn = DistillationLoss(teacher, SmoothedCrossEntropy(), 2.0, PAPER_MEAN, PAPER_STD, IMAGENET_MEAN, [0.5] * 3)
    assert loss_fn.renormalize
    loss_fn(z, x, y)
    s_mean, s_std = torch.tensor(PAPER_MEAN).view(1, 3, 1, 1), torch.tensor(PAPER_STD).view(1, 3, 1, 1)
    t_mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    expected = (x * s_std + s_mean - t_mean) / 0.5
    torch.testing.assert_close(teacher.inputs[-1], expected, rtol=0, atol=1e-6)
    # the teacher sees the same pixels: un-normalizing both gives the same image
    torch.testing.assert_close(teacher.inputs[-1] * 0.5 + t_mean, x * s_std + s_mean, rtol=0, atol=1e-6)

    same = DistillationLoss(teacher, SmoothedCrossEntropy(), 2.0, PAPER_MEAN, PAPER_STD, PAPER_MEAN, PAPER_STD)
    assert not same.renormalize
    same(z, x, y)
    assert torch.equal(teacher.inputs[-1], x)
    with pytest.raises(ValueError, match='all of'):
        DistillationLoss(teacher, SmoothedCrossEntropy(), 2.0, student_mean=PAPER_MEAN)


def test_teacher_runs_under_active_autocast():
    x, y, z = _batch()
    teacher = Recorder()
    out_dtypes = []
    teacher.fc.register_forward_hook(lambda m, i, o: out_dtypes.append(o.dtype))
    loss_fn = DistillationLoss(teacher, SmoothedCrossEntropy(), 2.0)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        loss = loss_fn(z, x, y)
    assert out_dtypes == [torch.bfloat16] and loss.dtype == torch.float32 and torch.isfinite(loss)


def test_load_teacher_from_name():
    with pytest.warns(UserWarning, match='no pretrained weights'):
        teacher, cfg = load_teacher(ARCH, num_classes=10)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert cfg['mean'] == PAPER_MEAN and cfg['std'] == PAPER_STD and cfg['input_size'] == (3, 32, 32)


def test_load_teacher_from_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model(ARCH, num_classes=10).eval()
    path = tmp_path / 'teacher.pth'
    save_checkpoint({
        'arch': ARCH, 'num_classes': 10, 'state_dict': model.state_dict(), 'epoch': 1, 'args': {},
        'data_config': {'mean': list(IMAGENET_MEAN), 'std': list(IMAGENET_STD), 'input_size': [3, 32, 32],
                        'crop_pct': 1.0, 'interpolation': 'bilinear'},
    }, path)
    teacher, cfg = load_teacher(str(path), num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(teacher(x), model(x), rtol=0, atol=0)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert cfg['mean'] == IMAGENET_MEAN and cfg['std'] == IMAGENET_STD

    with pytest.raises(ValueError, match=r'10 classes.*student has 5'):
        load_teacher(str(path), num_classes=5)


def test_load_teacher_from_local_dir(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model(ARCH, num_classes=10).eval()
    save_for_hf(model, tmp_path / 'hf')
    teacher, cfg = load_teacher(f'local-dir:{tmp_path / "hf"}', num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(teacher(x), model(x), rtol=0, atol=0)
    assert not teacher.training and cfg['mean'] == PAPER_MEAN
    with pytest.raises(ValueError, match=r'10 classes.*student has 100'):
        load_teacher(f'local-dir:{tmp_path / "hf"}', num_classes=100)


def test_load_teacher_bad_specs(tmp_path):
    with pytest.raises(FileNotFoundError, match='not found'):
        load_teacher(str(tmp_path / 'missing' / 'teacher.pth'))
    with pytest.raises(FileNotFoundError, match='not found'):
        load_teacher('teacher.pth')
    with pytest.raises(ValueError, match='neither a checkpoint file nor a timm model'):
        load_teacher('no_such_model_bot')
    with pytest.raises(ValueError, match='local-dir:'):
        load_teacher(str(tmp_path))
