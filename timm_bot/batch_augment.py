"""Device half of the split section 2 augmentation: steps 4-6 on a whole uint8 batch on the training device.

The loader workers only crop and flip, and ship uint8 images with each sample's :class:`AugmentParams` (drawn from
the sample's seed, see ``create_paper_train_transform(device_augment=True)``); :class:`BatchPaperAugment` then applies
the colour jitter, the hue scaling, PCA lighting and normalization in one batched step, as timm's ``PrefetchLoader``
normalizes on the GPU.
"""
import functools
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn
from torchvision.transforms.v2.functional import rgb_to_grayscale

from .models import PAPER_MEAN, PAPER_STD

__all__ = ['IMAGENET_PCA_EIGVAL', 'IMAGENET_PCA_EIGVEC', 'AugmentParams', 'ImageWithParams', 'BatchPaperAugment',
           'BatchNormalize', 'scale_hue_batch']

# ImageNet RGB PCA of fb.resnet.torch / GluonCV for pixels in [0, 1] (AlexNet's 55.46, 4.794, 1.148 over 255),
# eigenvectors in the columns of IMAGENET_PCA_EIGVEC
IMAGENET_PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))

_JITTER_STEPS = ('brightness', 'contrast', 'saturation')  # torchvision ColorJitter's op ids 0, 1, 2


class AugmentParams(NamedTuple):
    """One sample's (or, collated, a batch's) section 2 colour parameters; factor 1 and alpha 0 leave a step off."""
    brightness: torch.Tensor  # () float32 factor
    contrast: torch.Tensor  # () float32 factor (not in the paper; GluonCV's recipe)
    saturation: torch.Tensor  # () float32 factor
    hue: torch.Tensor  # () float32 hue scale factor
    order: torch.Tensor  # (4,) int64: ColorJitter's op order (0 brightness, 1 contrast, 2 saturation, 3 hue)
    lighting: torch.Tensor  # (3,) float32 PCA coefficients alpha

    def to(self, device: torch.device | str, non_blocking: bool = False) -> 'AugmentParams':
        return AugmentParams(*(t.to(device, non_blocking=non_blocking) for t in self))


class ImageWithParams(NamedTuple):
    """What the loader side returns per sample: a uint8 (3, H, W) crop and its :class:`AugmentParams`."""
    image: torch.Tensor
    params: AugmentParams


@functools.cache
def _pure_colour_constants(device: torch.device) -> tuple[torch.Tensor, ...]:
    """Created once per device: a tensor made per call would be a blocking host-to-device copy on CUDA."""
    return tuple(torch.tensor(v, device=device).view(1, 3, 1, 1)
                 for v in ((3.0, 2.0, 4.0), (1.0, -1.0, -1.0), (-1.0, 2.0, 2.0)))


def scale_hue_batch(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Section 2 step 4 on a batch: multiply the HSV hue of float (N, 3, H, W) RGB in [0, 1] by ``factor`` (N,)."""
    r, g, b = x.unbind(dim=1)
    value = torch.maximum(torch.maximum(r, g), b)
    low = torch.minimum(torch.minimum(r, g), b)
    chroma = value - low
    # hue in sextants [0, 6): (g - b) / chroma if r is the max, else 2 + (b - r) / chroma if g is, else 4 + (r - g) /
    # chroma (the branches picked by lerp with 0/1 weights: exact, and faster than torch.where on a CPU)
    is_r, is_g = (r == value).float(), (g == value).float()
    hue = torch.lerp(torch.lerp((r - g).add_(chroma, alpha=4), (b - r).add_(chroma, alpha=2), is_g), g - b, is_r)
    hue = hue.div_(chroma.clamp_min(1e-12)).add_(6).remainder_(6)
    hue = hue.mul_(factor.view(-1, 1, 1)).remainder_(6).unsqueeze(1)
    # HSV -> RGB: low + chroma * the hue's pure colour, R = |h - 3| - 1, G = 2 - |h - 2|, B = 2 - |h - 4| in [0, 1]
    centre, sign, offset = _pure_colour_constants(x.device)
    pure = (hue - centre).abs_().mul_(sign).add_(offset).clamp_(0, 1)
    return pure.mul_(chroma.unsqueeze(1)).add_(low.unsqueeze(1))


def _jitter_step(x: torch.Tensor, step: str, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's ``adjust_{brightness,contrast,saturation}`` with one factor per image, in place, clamped."""
    factor = factor.view(-1, 1, 1, 1)
    if step == 'brightness':
        return x.mul_(factor).clamp_(0, 1)
    gray = rgb_to_grayscale(x)
    if step == 'contrast':
        gray = gray.mean(dim=(-3, -2, -1), keepdim=True)
    return torch.lerp(gray, x, factor).clamp_(0, 1)


def _jitter_schedule(steps: Sequence[str]) -> tuple[str, ...]:
    """The steps, forward then backward, ``len(steps)`` times, repeats merged: every order is a subsequence of it."""
    schedule: list[str] = []
    for r in range(len(steps)):
        schedule += [s for s in (steps if r % 2 == 0 else steps[::-1]) if not schedule or schedule[-1] != s]
    return tuple(schedule)


class BatchPaperAugment(nn.Module):
    """Section 2 steps 4-6 on the device: (uint8 (N, 3, H, W), :class:`AugmentParams`) -> normalized float32."""

    cpu_chunk_bytes = 2 ** 21  # on a CPU, images go through in chunks of ~2 MB of float32: every pass stays in cache

    def __init__(self, jitter_steps: Sequence[str] = ('brightness', 'saturation'), hue: bool = True,
                 pca_lighting: bool = True, mean: Sequence[float] = PAPER_MEAN,
                 std: Sequence[float] = PAPER_STD, eigval: Sequence[float] = IMAGENET_PCA_EIGVAL,
                 eigvec: Sequence[Sequence[float]] = IMAGENET_PCA_EIGVEC) -> None:
        super().__init__()
        unknown = set(jitter_steps) - set(_JITTER_STEPS)
        if unknown:
            raise ValueError(f'jitter_steps must be among {_JITTER_STEPS}, got {sorted(unknown)}')
        self.jitter_steps = tuple(s for s in _JITTER_STEPS if s in jitter_steps)
        self.hue, self.pca_lighting = hue, pca_lighting
        self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('eigval', torch.tensor(eigval, dtype=torch.float32), persistent=False)
        self.register_buffer('eigvec', torch.tensor(eigvec, dtype=torch.float32), persistent=False)

    def jitter_factors(self, params: AugmentParams) -> list[tuple[str, torch.Tensor]]:
        """ColorJitter's per-image order as one step sequence for the batch: (step, (N,) factors, 1 where skipped)."""
        if not self.jitter_steps:
            return []
        n = len(self.jitter_steps)  # no tensor from the host here: on CUDA that would be a blocking copy
        enabled = sum(params.order == _JITTER_STEPS.index(s) for s in self.jitter_steps).to(torch.uint8)
        todo = params.order.gather(1, enabled.argsort(dim=1, descending=True, stable=True)[:, :n])
        done = torch.zeros_like(todo[:, 0])  # per image: how many of its steps are applied
        factors = []
        for step in _jitter_schedule(self.jitter_steps):
            nxt = todo.gather(1, done.clamp(max=n - 1).unsqueeze(1)).squeeze(1)
            now = (nxt == _JITTER_STEPS.index(step)) & (done < n)
            factor = getattr(params, step)
            factors.append((step, torch.where(now, factor, torch.ones_like(factor))))
            done = done + now.long()
        return factors

    def forward(self, images: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise TypeError(f'BatchPaperAugment expects uint8 (N, 3, H, W) images, got {images.dtype} '
                            f'{tuple(images.shape)}: use the loader side of create_paper_train_transform(...,'
                            ' device_augment=True)')
        params = params.to(images.device, non_blocking=True)
        factors = self.jitter_factors(params)
        shift = self.mean.expand(len(images), 3, 1, 1)
        if self.pca_lighting:  # step 5: + eigvec @ (alpha * eigval) per image, not clipped (fb.resnet.torch)
            shift = shift - ((params.lighting * self.eigval) @ self.eigvec.T).view(-1, 3, 1, 1)
        scale = 1 / self.std  # step 6: (x - shift) / std = x * scale - shift * scale
        bias = -shift * scale
        channels_last = images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()
        out = torch.empty(images.shape, device=images.device,
                          memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        chunk = max(1, self.cpu_chunk_bytes // (4 * images[0].numel())) if images.is_cpu else len(images)
        for i in range(0, len(images), chunk):
            part = slice(i, i + chunk)
            x = images[part].float().div_(255)
            for step, factor in factors:
                x = _jitter_step(x, step, factor[part])
            if self.hue:
                x = scale_hue_batch(x, params.hue[part])
            torch.add(x.mul_(scale), bias[part], out=out[part])
        return out

    def extra_repr(self) -> str:
        return f'jitter_steps={self.jitter_steps}, hue={self.hue}, pca_lighting={self.pca_lighting}'


class BatchNormalize(nn.Module):
    """Section 2 step 6 (evaluation) on the device: uint8 (N, 3, H, W) -> float32 ``(x / 255 - mean) / std``."""

    def __init__(self, mean: Sequence[float] = PAPER_MEAN, std: Sequence[float] = PAPER_STD) -> None:
        super().__init__()
        self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(f'BatchNormalize expects uint8 images, got {images.dtype}: use the loader side of '
                            'create_paper_eval_transform(..., device_augment=True)')
        return images.float().div_(255).sub_(self.mean).div_(self.std)
