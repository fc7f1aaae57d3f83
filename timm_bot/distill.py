"""Knowledge distillation, paper section 5.3 (He et al., 2019; Hinton et al., 2015).

The student (logits z) is trained with

    loss = l(p, softmax(z)) + T^2 * l(softmax(r / T), softmax(z / T))

where p is the true (possibly smoothed / mixed) label distribution, r the teacher's logits on the *same* input,
l the cross entropy and T the temperature (the paper: T = 20, a ResNet-152-D teacher trained with cosine decay and
label smoothing, a ResNet-50-D student; with mixup the teacher sees the mixed images, Table 6).

How this relates to timm's :mod:`timm.task.distillation`:

* We reuse :class:`timm.task.DistillationTeacher` to hold the teacher (frozen, eval mode, ``mean_kd``/``std_kd``
  buffers, ``compile()``), and its re-normalization ``x_t = (x * std_s + mean_s - mean_t) / std_t`` for a teacher
  trained with different normalization than the student (computed inline, without its per-call ``torch.equal``,
  which would synchronize the GPU every step).
* We do not use :class:`timm.task.LogitDistillationTask`: it owns the student forward and the criterion in a
  task-based training loop and reads the normalization from the models' ``pretrained_cfg`` (not from a train.py
  checkpoint's ``data_config``). Its soft term is ``T^2 * KL(softmax(r/T) || softmax(z/T))`` (batch mean) with
  weights ``task_loss_weight * task + distill_loss_weight * kd`` (default 1 and 1, default T = 1). The paper's soft
  term is the cross entropy; ``CE = KL + H(softmax(r/T))`` and the teacher entropy does not depend on the student,
  so with weights 1/1 and the same T the two losses differ by a constant and have identical gradients (see
  tests/test_distill.py). Reported loss values are larger than timm's by ``T^2 * H``.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import resolve_data_config
from timm.models import get_pretrained_cfg, parse_model_name
from timm.task import DistillationTeacher

from . import models as _models  # noqa: F401  (registers the '_bot' architectures)
from .checkpoint import create_model_from_checkpoint

__all__ = ['DistillationLoss', 'load_teacher']

_PATH_SEPARATORS = ('/', '\\')
_CHECKPOINT_SUFFIXES = ('.pth', '.pt', '.tar', '.ckpt', '.bin', '.safetensors')


def _has_pretrained_weights(name: str) -> bool:
    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError as e:  # invalid pretrained tag
        raise ValueError(f'teacher {name!r}: {e}') from e
    return cfg is not None and cfg.has_weights


def _create_named_teacher(spec: str) -> nn.Module:
    """A teacher from the timm registry or an ``hf-hub:`` / ``local-dir:`` source."""
    try:
        source, _ = parse_model_name(spec)
    except ValueError as e:
        if any(s in spec for s in _PATH_SEPARATORS) or spec.endswith(_CHECKPOINT_SUFFIXES):
            raise FileNotFoundError(
                f"teacher checkpoint not found: {spec} (for a model folder or Hub repo use 'local-dir:{spec}' "
                f"or 'hf-hub:{spec}')") from e
        raise
    if source is not None:
        return timm.create_model(spec, pretrained=True)
    if spec.endswith(_CHECKPOINT_SUFFIXES):
        raise FileNotFoundError(f'teacher checkpoint not found: {spec}')
    if not timm.is_model(spec):
        raise ValueError(f'teacher {spec!r} is neither a checkpoint file nor a timm model name')
    if _has_pretrained_weights(spec):
        return timm.create_model(spec, pretrained=True)
    warnings.warn(
        f'teacher {spec!r} has no pretrained weights: distilling from a randomly initialized teacher '
        f'(only useful for smoke tests); pass a train.py checkpoint, a local-dir: or hf-hub: source instead',
        stacklevel=3)
    return timm.create_model(spec, pretrained=False)


def load_teacher(spec: str, num_classes: int | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Load the section 5.3 teacher.

    Args:
        spec: a train.py checkpoint file (see :mod:`timm_bot.checkpoint`), a timm model name (incl. the ``_bot``
            models; created with its pretrained weights when it has any, else randomly with a warning), or
            ``'hf-hub:ORG/NAME'`` / ``'local-dir:DIR'`` (created with ``pretrained=True``).
        num_classes: the student's class count; a teacher with another count is an error.

    Returns:
        ``(teacher, data_config)``: the teacher in eval mode with ``requires_grad=False``, and its preprocessing
        (``timm.data.resolve_data_config``; a checkpoint's own ``data_config``), incl. ``'mean'`` and ``'std'``.

    Raises:
        ValueError: the teacher predicts a different number of classes than ``num_classes``, or ``spec`` is unknown.
        FileNotFoundError: ``spec`` looks like a file path but there is no such file.
    """
    if Path(spec).is_file():
        teacher, _ = create_model_from_checkpoint(spec)  # puts the checkpoint's data_config into pretrained_cfg
    elif Path(spec).is_dir():
        raise ValueError(f"teacher {spec!r} is a directory; for a model folder use 'local-dir:{spec}'")
    else:
        teacher = _create_named_teacher(spec)
    teacher_classes = getattr(teacher, 'num_classes', None)
    if num_classes is not None and teacher_classes != num_classes:
        raise ValueError(
            f'teacher {spec!r} predicts {teacher_classes} classes but the student has {num_classes}; '
            f'distillation needs both to predict the same classes')
    teacher.eval().requires_grad_(False)
    data_config = resolve_data_config(model=teacher)
    data_config['mean'] = tuple(float(v) for v in data_config['mean'])
    data_config['std'] = tuple(float(v) for v in data_config['std'])
    return teacher, data_config


def _stats(values: Sequence[float] | torch.Tensor, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.float32).reshape(1, -1, 1, 1).to(device)


def _module_device(module: nn.Module) -> torch.device:
    tensor = next(iter(module.parameters()), None)
    if tensor is None:
        tensor = next(iter(module.buffers()), None)
    return tensor.device if tensor is not None else torch.device('cpu')


class DistillationLoss(nn.Module):
    """Section 5.3 loss: ``base_loss(z, target) + T^2 * CE(softmax(r / T), softmax(z / T))``.

    The soft term is ``-sum_i softmax(r/T)_i log softmax(z/T)_i``, averaged over the batch; it differs from
    ``KL(softmax(r/T) || softmax(z/T))`` only by the teacher's entropy, a constant for the student, so the gradients
    are those of the KL form. r are the teacher's logits on the same (e.g. mixed, section 5.4) inputs, computed
    under ``torch.no_grad()`` and whatever autocast is active.

    The teacher is held outside the module tree: it is not in ``parameters()`` or ``state_dict()`` of this loss
    (nor, of course, of the student), yet ``.to()`` / ``.cuda()`` / ``.half()`` move it. It is frozen and stays in
    eval mode even when ``.train()`` is called.

    Args:
        teacher: teacher model (e.g. from :func:`load_teacher`).
        base_loss: loss against the labels, e.g. :class:`timm_bot.loss.SmoothedCrossEntropy`.
        temperature: T (paper: 20).
        student_mean, student_std, teacher_mean, teacher_std: per-channel normalizations. When all four are given
            and differ, the teacher gets ``(x * std_s + mean_s - mean_t) / std_t``; when none are given the teacher
            gets the student's inputs unchanged.
    """

    def __init__(
            self,
            teacher: nn.Module,
            base_loss: nn.Module,
            temperature: float = 20.0,
            student_mean: Sequence[float] | None = None,
            student_std: Sequence[float] | None = None,
            teacher_mean: Sequence[float] | None = None,
            teacher_std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f'distillation temperature must be > 0, got {temperature!r}')
        self.base_loss = base_loss
        self.temperature = float(temperature)
        holder = teacher if isinstance(teacher, DistillationTeacher) else DistillationTeacher(teacher)
        holder.eval().requires_grad_(False)
        object.__setattr__(self, '_teacher', holder)  # not a registered submodule (see class docstring)

        stats = (student_mean, student_std, teacher_mean, teacher_std)
        if any(s is None for s in stats) and any(s is not None for s in stats):
            raise ValueError('give all of student_mean, student_std, teacher_mean, teacher_std, or none of them')
        self.renormalize = False
        if student_mean is not None:
            device = _module_device(holder.model)
            s_mean, s_std, t_mean, t_std = (_stats(s, device) for s in stats)
            holder.register_buffer('mean_kd', t_mean, persistent=False)
            holder.register_buffer('std_kd', t_std, persistent=False)
            self.register_buffer('student_mean', s_mean, persistent=False)
            self.register_buffer('student_std', s_std, persistent=False)
            self.renormalize = not (torch.equal(s_mean, t_mean) and torch.equal(s_std, t_std))
        self.last_base_loss: torch.Tensor | None = None
        self.last_distill_loss: torch.Tensor | None = None

    @property
    def teacher(self) -> nn.Module:
        """The frozen teacher model."""
        return self._teacher.model

    @property
    def teacher_holder(self) -> DistillationTeacher:
        """timm's :class:`~timm.task.DistillationTeacher` wrapping the teacher (e.g. to ``.compile()`` it)."""
        return self._teacher

    def extra_repr(self) -> str:
        return f'temperature={self.temperature}, renormalize={self.renormalize}, teacher={type(self.teacher).__name__}'

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> DistillationLoss:
        super()._apply(fn, *args, **kwargs)
        self._teacher._apply(fn, *args, **kwargs)
        return self

    def train(self, mode: bool = True) -> DistillationLoss:
        """Set training mode on the base loss only; the teacher stays in eval mode (section 5.3: it is fixed)."""
        super().train(mode)
        self._teacher.eval()
        return self

    def teacher_inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        """Inputs re-normalized for the teacher: ``(x * std_s + mean_s - mean_t) / std_t`` (identity if same)."""
        if not self.renormalize:
            return inputs
        t = self._teacher
        return (inputs * self.student_std + self.student_mean - t.mean_kd) / t.std_kd

    @torch.no_grad()
    def teacher_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """Teacher logits r on ``inputs`` (student-normalized), without grad, under the active autocast."""
        if self._teacher.training:
            self._teacher.eval()
        return self._teacher(self.teacher_inputs(inputs.detach()))

    def distill_loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """``T^2 * mean_b CE(softmax(r/T), softmax(z/T))``, in float32."""
        t = self.temperature
        soft_target = F.softmax(teacher_logits.float() / t, dim=-1)
        log_prob = F.log_softmax(student_logits.float() / t, dim=-1)
        return -(soft_target * log_prob).sum(dim=-1).mean() * (t * t)

    def forward(self, student_logits: torch.Tensor, inputs: torch.Tensor, target: Any) -> torch.Tensor:
        """Section 5.3 loss of the student logits for ``inputs`` (the student's, possibly mixed, batch)."""
        base = self.base_loss(student_logits, target)
        distill = self.distill_loss(student_logits, self.teacher_logits(inputs))
        self.last_base_loss, self.last_distill_loss = base.detach(), distill.detach()
        return base + distill
