"""Knowledge distillation, section 5.3 (timm_bot.distill)."""
import os

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import save_for_hf

from timm_bot.checkpoint import save_checkpoint
from timm_bot.distill import DistillationLoss, load_teacher
from timm_bot.loss import MixedTarget, SmoothedCrossEntropy

ARCH = 'resnet18d'  # any timm model; narrowed below so the tests stay fast
NARROW = dict(layers=(1, 1, 1, 1), stem_width=8, channels=(8, 16, 32, 64))
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
TEACHER_MEAN, TEACHER_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LABELS = [f'class_{i}' for i in range(5)]


class Recorder(nn.Linear):
    """A linear 'teacher' on flattened 3x4x4 images that remembers its inputs."""

    def __init__(self):
        super().__init__(48, 5)
        self.inputs, self.grad_enabled = [], []

    def forward(self, x):
        self.inputs.append(x)
        self.grad_enabled.append(torch.is_grad_enabled())
        return super().forward(x.flatten(1))


def _loss_fn(teacher, temperature=20.0, teacher_mean=MEAN, teacher_std=STD):
    return DistillationLoss(teacher, SmoothedCrossEntropy(0.1), temperature, MEAN, STD, teacher_mean, teacher_std)


def _batch():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 3, 4, 4, generator=g), torch.randint(0, 5, (4,), generator=g)
    return x, y, (torch.randn(4, 5, generator=g) * 3).requires_grad_()


@pytest.mark.parametrize('mixed', [False, True])
def test_loss_is_base_plus_t2_kl(mixed):
    x, y, z = _batch()
    teacher = Recorder()
    target = MixedTarget(y, y.flip(0), 0.3) if mixed else y
    loss_fn = _loss_fn(teacher, temperature=4.0)
    loss = loss_fn(z, x, target)
    with torch.no_grad():
        p_t = F.softmax(teacher(x) / 4, -1)
    kl = (p_t * (p_t.log() - F.log_softmax(z / 4, -1))).sum(-1).mean()
    torch.testing.assert_close(loss, SmoothedCrossEntropy(0.1)(z, target) + 16 * kl)
    torch.testing.assert_close(loss_fn.last_distill_loss, 16 * kl.detach())
    torch.testing.assert_close(loss_fn.last_base_loss, SmoothedCrossEntropy(0.1)(z, target).detach())
    assert not loss_fn.last_distill_loss.requires_grad and torch.equal(teacher.inputs[0], x)  # same normalization
    assert teacher.grad_enabled[0] is False  # the teacher ran under no_grad


def test_same_gradient_as_the_papers_cross_entropy_form():
    """Paper: T^2 CE(softmax(r/T), softmax(z/T)) = T^2 KL + T^2 H(teacher): a constant (~T^2 log K) apart."""
    x, y, z = _batch()
    teacher = Recorder()
    loss_fn = _loss_fn(teacher)
    ours = loss_fn(z, x, y)
    with torch.no_grad():
        p_t = F.softmax(teacher(x) / 20, -1)
    ce_form = SmoothedCrossEntropy(0.1)(z, y) - 400 * (p_t * F.log_softmax(z / 20, -1)).sum(-1).mean()
    entropy = -(p_t * p_t.log()).sum(-1).mean()
    torch.testing.assert_close(ce_form - ours, 400 * entropy)
    assert 400 * entropy > 100 * loss_fn.last_distill_loss  # the constant would swamp the reported number
    torch.testing.assert_close(torch.autograd.grad(ours, z)[0], torch.autograd.grad(ce_form, z)[0])


def test_teacher_frozen_in_eval_and_apart_from_student():
    torch.manual_seed(0)
    student = timm.create_model(ARCH, num_classes=10, **NARROW)
    teacher = timm.create_model(ARCH, num_classes=10, **NARROW).train()
    loss_fn = _loss_fn(teacher).train()
    assert not teacher.training and loss_fn.training
    running_mean = teacher.bn1.running_mean.clone()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    loss_fn(student(x), x, y).backward()
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    assert torch.equal(teacher.bn1.running_mean, running_mean)  # eval mode: BatchNorm statistics untouched
    assert not {id(p) for p in student.parameters()} & {id(p) for p in teacher.parameters()}
    loss_fn.to(torch.float64)  # .to() reaches the teacher
    assert teacher.fc.weight.dtype == torch.float64


def test_teacher_gets_renormalized_inputs():
    x, y, z = _batch()
    teacher = Recorder()
    loss_fn = _loss_fn(teacher, teacher_mean=TEACHER_MEAN, teacher_std=TEACHER_STD)
    loss_fn(z, x, y)
    view = lambda v: torch.tensor(v).view(1, 3, 1, 1)  # noqa: E731
    # un-normalizing both gives the same pixels
    torch.testing.assert_close(teacher.inputs[0] * view(TEACHER_STD) + view(TEACHER_MEAN), x * view(STD) + view(MEAN))


def test_keyword_arguments_and_paper_defaults():
    """Issue 23: DistillationLoss(teacher) alone is T = 20 on the paper's label smoothing (0.1), the inputs passed to
    the teacher unchanged; normalizations by keyword, a side left out being the other side's."""
    x, y, z = _batch()
    teacher = Recorder()
    loss_fn = DistillationLoss(teacher)
    assert loss_fn.temperature == 20.0 and loss_fn.base_loss.smoothing == 0.1 and loss_fn.base_loss.mode == 'paper'
    torch.testing.assert_close(loss_fn(z, x, y), _loss_fn(teacher)(z, x, y), rtol=0, atol=0)
    assert torch.equal(teacher.inputs[0], x) and torch.equal(teacher.inputs[1], x)
    DistillationLoss(teacher, student_mean=MEAN, student_std=STD)(z, x, y)
    assert torch.equal(teacher.inputs[2], x)  # only the student's given: nothing to convert
    DistillationLoss(teacher, temperature=4.0, student_mean=MEAN, student_std=STD, teacher_mean=TEACHER_MEAN,
                     teacher_std=TEACHER_STD)(z, x, y)
    _loss_fn(teacher, 4.0, TEACHER_MEAN, TEACHER_STD)(z, x, y)
    torch.testing.assert_close(teacher.inputs[3], teacher.inputs[4], rtol=0, atol=0)
    assert not torch.allclose(teacher.inputs[3], x)


def _save_teacher(path, label_names=LABELS, **extra):
    torch.manual_seed(0)
    model = timm.create_model(ARCH, num_classes=len(label_names), **NARROW).eval()
    data_config = {'input_size': [3, 32, 32], 'crop_pct': 1.0, 'interpolation': 'bilinear',
                   'mean': list(TEACHER_MEAN), 'std': list(TEACHER_STD), 'crop_mode': 'center'}
    save_checkpoint({'arch': ARCH, 'model_args': dict(NARROW), 'source': None, 'num_classes': len(label_names),
                     'label_names': label_names, 'state_dict': model.state_dict(), 'data_config': data_config,
                     'args': {}, 'epoch': 1, 'batch_in_epoch': 0, 'global_step': 10, **extra}, path)
    return model


def test_load_teacher_from_checkpoint(tmp_path):
    path = tmp_path / 'teacher.pth.tar'
    model = _save_teacher(path)
    teacher, cfg = load_teacher(str(path), num_classes=5, label_names=LABELS)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(teacher(x), model(x), rtol=0, atol=0)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert cfg['mean'] == TEACHER_MEAN and cfg['std'] == TEACHER_STD and cfg['input_size'] == (3, 32, 32)
    with pytest.raises(ValueError, match='predicts 5 classes but the student has 10'):
        load_teacher(str(path), num_classes=10)
    other = LABELS[:3] + ['dog', 'cat']  # the student's: the teacher lacks dog/cat, adds class_3/4
    with pytest.raises(ValueError, match=r"teacher .*teacher\.pth\.tar' has other classes than expected: "
                                         r"missing \['dog', 'cat'\], extra \['class_3', 'class_4'\]$") as e:
        load_teacher(str(path), num_classes=5, label_names=other)
    assert '\n' not in str(e.value)
    with pytest.raises(ValueError, match='same names, other order'):
        load_teacher(str(path), num_classes=5, label_names=LABELS[::-1])


def test_load_teacher_from_run_folder_and_its_ema(tmp_path, caplog):
    """Issue 23: a run folder means its model_best.pth.tar (logged); teacher_ema takes its EMA weights."""
    weights = _save_teacher(tmp_path / 'x.pth').state_dict()
    ema = {k: v + 0.1 if v.is_floating_point() else v for k, v in weights.items()}
    model = _save_teacher(tmp_path / 'run' / 'model_best.pth.tar', state_dict_ema=ema)
    x = torch.randn(2, 3, 32, 32)
    with caplog.at_level('INFO'):
        teacher, _ = load_teacher(str(tmp_path / 'run'), num_classes=5, label_names=LABELS)
    assert f"{tmp_path / 'run'} is a run folder: using its model_best.pth.tar" in caplog.text
    torch.testing.assert_close(teacher(x), model(x), rtol=0, atol=0)
    ema_teacher, _ = load_teacher(str(tmp_path / 'run'), num_classes=5, use_ema=True)
    model.load_state_dict(ema)
    torch.testing.assert_close(ema_teacher(x), model(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"teacher '.*x\.pth': .* has no EMA weights .*: set teacher_ema: false$"):
        load_teacher(str(tmp_path / 'x.pth'), num_classes=5, use_ema=True)
    with pytest.raises(ValueError, match="teacher_ema: teacher 'resnet18d_tiny_bot' is not a train.py checkpoint"):
        load_teacher('resnet18d_tiny_bot', num_classes=5, use_ema=True)
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match='neither model_best.pth.tar .* nor config.json'):
        load_teacher(str(tmp_path / 'empty'), num_classes=5)


def test_load_teacher_from_export_folder_and_local_dir(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model(ARCH, num_classes=5, **NARROW).eval()
    save_for_hf(model, tmp_path / 'hf', model_config={'label_names': LABELS}, model_args=dict(NARROW),
                safe_serialization=True)
    x = torch.randn(2, 3, 32, 32)
    for spec in (str(tmp_path / 'hf'), f'local-dir:{tmp_path / "hf"}'):
        teacher, cfg = load_teacher(spec, num_classes=5, label_names=LABELS)
        torch.testing.assert_close(teacher(x), model(x), rtol=0, atol=0)
        assert not teacher.training and cfg['mean'] == TEACHER_MEAN
        with pytest.raises(ValueError, match=r"other classes than expected: missing \['zero'\], extra \['class_0'\]"):
            load_teacher(spec, num_classes=5, label_names=['zero'] + LABELS[1:])


def test_load_teacher_refuses_pickled_code(tmp_path):
    marker = tmp_path / 'pwned'

    class Payload:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    path = tmp_path / 'evil.pth'
    torch.save({'arch': ARCH, 'num_classes': 5, 'state_dict': {}, 'x': Payload()}, path)
    with pytest.raises(ValueError, match='arbitrary code'):
        load_teacher(str(path), num_classes=5)
    assert not marker.exists()


def test_load_teacher_by_name():
    with pytest.warns(UserWarning, match='no pretrained weights'):
        teacher, cfg = load_teacher('resnet18d_tiny_bot', num_classes=10)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert cfg['input_size'] == (3, 32, 32) and len(cfg['mean']) == 3
    with pytest.raises(ValueError, match='neither a checkpoint file'):
        load_teacher('missing/teacher.pth', num_classes=10)
