"""Knowledge distillation, section 5.3 of *Bag of Tricks* (He et al., 2019; Hinton et al., 2015): a frozen teacher."""
import os
import warnings
from collections.abc import Sequence
from typing import Any

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import resolve_data_config

from .checkpoint import create_model_from_checkpoint, create_pretrained_model
from .data import check_same_classes
from .loss import SmoothedCrossEntropy

__all__ = ['DistillationLoss', 'load_teacher']


def load_teacher(spec: str, num_classes: int, label_names: Sequence[str] | None = None,
                 use_ema: bool = False) -> tuple[nn.Module, dict]:
    """Section 5.3 teacher ``(frozen eval model, data config)``: a train.py checkpoint or run folder (its
    model_best.pth.tar; ``use_ema``: its EMA weights), an export, ``hf-hub:``/``local-dir:`` or a timm name."""
    if os.path.exists(spec):
        try:
            teacher, info = create_model_from_checkpoint(spec, use_ema)
        except ValueError as e:
            raise ValueError(f'teacher {spec!r}: {e}'.replace('drop --use-ema', 'set teacher_ema: false')) from None
    elif use_ema:
        raise ValueError(f'teacher_ema: teacher {spec!r} is not a train.py checkpoint or run folder, which hold EMA '
                         'weights: set teacher_ema: false')
    elif spec.startswith(('hf-hub:', 'local-dir:')) or timm.is_model_pretrained(spec):
        teacher = create_pretrained_model(spec, key='teacher')
        info = teacher.pretrained_cfg  # like a checkpoint, it may hold label_names
    elif timm.is_model(spec):
        warnings.warn(f'teacher {spec!r} has no pretrained weights: distilling from a random teacher '
                      '(only useful for smoke tests)', stacklevel=2)
        with torch.random.fork_rng(devices=[]):  # the same random teacher when the run is resumed
            torch.manual_seed(0)
            teacher, info = timm.create_model(spec, num_classes=num_classes), {}
    else:
        raise ValueError(f'teacher {spec!r} is neither a checkpoint file, an export folder nor a timm model name '
                         "(for a Hub model use 'hf-hub:ORG/NAME')")
    if teacher.num_classes != num_classes:
        raise ValueError(f'teacher {spec!r} predicts {teacher.num_classes} classes but the student has {num_classes}')
    if label_names and info.get('label_names'):
        check_same_classes(label_names, info['label_names'], f'teacher {spec!r}')
    data_config = resolve_data_config(model=teacher)
    data_config.update({key: tuple(float(v) for v in data_config[key]) for key in ('mean', 'std')})
    return teacher.eval().requires_grad_(False), data_config


class DistillationLoss(nn.Module):
    """Section 5.3 loss ``base_loss(z, target) + T^2 KL(softmax(r/T) || softmax(z/T))``, batch mean (paper T = 20).

    ``teacher`` is frozen (eval mode, no gradients); ``base_loss`` defaults to :class:`SmoothedCrossEntropy` (the
    paper's smoothing 0.1). ``student_mean/std``: the normalization of the student's inputs, ``teacher_mean/std`` the
    teacher's (:func:`load_teacher` returns them); a statistic left ``None`` is the other side's, so by default the
    teacher sees the student's inputs unchanged. ``last_base_loss``/``last_distill_loss``: the parts, for logging.
    """

    def __init__(self, teacher: nn.Module, base_loss: nn.Module | None = None, temperature: float = 20.0,
                 student_mean: Sequence[float] | None = None, student_std: Sequence[float] | None = None,
                 teacher_mean: Sequence[float] | None = None, teacher_std: Sequence[float] | None = None) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f'distillation temperature must be > 0, got {temperature!r}')
        self.teacher = teacher.eval().requires_grad_(False)
        self.base_loss, self.temperature = base_loss or SmoothedCrossEntropy(), float(temperature)

        def stat(value: Sequence[float] | None, other: Sequence[float] | None, fill: float) -> torch.Tensor:
            value = value if value is not None else other if other is not None else fill
            return torch.as_tensor(value, dtype=torch.float32).view(1, -1, 1, 1)

        s_mean, t_mean = stat(student_mean, teacher_mean, 0.0), stat(teacher_mean, student_mean, 0.0)
        s_std, t_std = stat(student_std, teacher_std, 1.0), stat(teacher_std, student_std, 1.0)
        self.register_buffer('scale', s_std / t_std, persistent=False)  # x_t = (x std_s + mean_s - mean_t) / std_t
        self.register_buffer('shift', (s_mean - t_mean) / t_std, persistent=False)
        self.last_base_loss = self.last_distill_loss = None  # detached parts of the last call

    def train(self, mode: bool = True) -> nn.Module:
        """Train mode for the base loss only: the teacher stays in eval mode (its BatchNorm statistics are fixed)."""
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, student_logits: torch.Tensor, inputs: torch.Tensor, target: Any) -> torch.Tensor:
        """``student_logits`` ``(B, K)``: the student's output on ``inputs``, the very batch it saw (after mixup,
        normalized by ``student_mean/std``, at its resolution: the teacher gets it renormalized, not resized);
        ``target``: class indices or a :class:`MixedTarget`, for ``base_loss``."""
        with torch.no_grad():  # r: the frozen teacher's logits on the same inputs, in its own normalization
            teacher_logits = self.teacher(inputs * self.scale + self.shift)  # the same x when both match
        t = self.temperature  # KL: the paper's soft cross entropy minus the teacher's entropy, so the same gradients
        log_p_student, log_p_teacher = (F.log_softmax(z.float() / t, dim=-1) for z in (student_logits, teacher_logits))
        distill = F.kl_div(log_p_student, log_p_teacher, reduction='batchmean', log_target=True) * (t * t)
        base = self.base_loss(student_logits, target)
        self.last_base_loss, self.last_distill_loss = base.detach(), distill.detach()
        return base + distill
