"""Training augmentation of *Bag of Tricks* (section 2): timm's training transform plus the two steps timm lacks,
per image (PIL) or split into a loader side and a batched device side (:mod:`timm_bot.batch_augment`)."""
from collections.abc import Sequence

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from timm.data import create_transform
from torchvision import transforms

from .batch_augment import (
    IMAGENET_PCA_EIGVAL,
    IMAGENET_PCA_EIGVEC,
    AugmentParams,
    BatchNormalize,
    BatchPaperAugment,
    ImageWithParams,
)
from .models import PAPER_MEAN, PAPER_STD

__all__ = ['IMAGENET_PCA_EIGVAL', 'IMAGENET_PCA_EIGVEC', 'PCALighting', 'RandomHueScale', 'scale_hue',
           'SampleAugmentParams', 'create_paper_train_transform', 'create_paper_eval_transform']


class PCALighting:
    """Section 2 step 5: add ``eigvec @ (alpha * eigval)``, ``alpha ~ N(0, alphastd)``, to a [0, 1] float tensor."""

    def __init__(self, alphastd: float = 0.1, eigval: Sequence[float] = IMAGENET_PCA_EIGVAL,
                 eigvec: Sequence[Sequence[float]] = IMAGENET_PCA_EIGVEC) -> None:
        self.alphastd = alphastd
        self.eigval, self.eigvec = (torch.tensor(v, dtype=torch.float32) for v in (eigval, eigvec))

    def get_params(self) -> torch.Tensor:
        """alpha, (3,) ~ N(0, alphastd) from torch's RNG."""
        return torch.randn(3) * self.alphastd

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if not isinstance(img, torch.Tensor) or not img.is_floating_point() or img.shape[-3] != 3:
            raise TypeError('PCALighting expects a float (3, H, W) tensor in [0, 1]; put it after ToTensor.')
        if self.alphastd == 0:
            return img
        rgb = self.eigvec @ (self.get_params() * self.eigval)
        return img + rgb.to(dtype=img.dtype, device=img.device).view(3, 1, 1)  # not clipped, as in fb.resnet.torch

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(alphastd={self.alphastd})'


def scale_hue(img: Image.Image, factor: float) -> Image.Image:
    """Multiply the hue of an RGB image by ``factor``, mod 360 degrees (a lookup table on PIL's 0..255 hue)."""
    if img.mode != 'RGB':
        raise TypeError(f'scale_hue expects an RGB PIL image, got mode {img.mode!r}')
    h, s, v = img.convert('HSV').split()
    lut = (np.round(np.arange(256) * factor) % 256).astype(np.uint8)  # np.round halves to even, like round()
    return Image.merge('HSV', (Image.fromarray(lut[np.asarray(h)]), s, v)).convert('RGB')


class RandomHueScale:
    """Section 2 step 4: scale (torchvision shifts) the hue by c ~ U[1 - hue, 1 + hue] (torch's RNG); PIL RGB in/out."""

    def __init__(self, hue: float = 0.4) -> None:
        if not 0 <= hue < 1:
            raise ValueError(f'hue must be in [0, 1), got {hue}')
        self.hue = hue

    def get_params(self) -> float:
        return float(torch.empty(1).uniform_(1 - self.hue, 1 + self.hue))

    def __call__(self, img: Image.Image) -> Image.Image:
        return scale_hue(img, self.get_params()) if self.hue else img

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(hue=({1 - self.hue:g}, {1 + self.hue:g}))'


class SampleAugmentParams:
    """Loader side of the split section 2 augmentation: a cropped PIL image -> :class:`ImageWithParams` (uint8 CHW).

    Draws the colour parameters from torch's RNG exactly as the per-image ``jitter``, ``hue`` and ``lighting``
    transforms would (same calls, same order), so a seeded sample gets the same augmentation on either path.
    """

    def __init__(self, jitter: transforms.ColorJitter | None = None, hue: RandomHueScale | None = None,
                 lighting: PCALighting | None = None) -> None:
        self.jitter, self.hue, self.lighting = jitter, hue, lighting

    def __call__(self, img: Image.Image) -> ImageWithParams:
        order, factors = torch.arange(4), [1.0, 1.0, 1.0]
        if self.jitter is not None:
            j = self.jitter
            order, *drawn = j.get_params(j.brightness, j.contrast, j.saturation, j.hue)
            factors = [1.0 if f is None else f for f in drawn[:3]]
        hue = self.hue.get_params() if self.hue is not None and self.hue.hue else 1.0
        alpha = self.lighting.get_params() if self.lighting is not None and self.lighting.alphastd else torch.zeros(3)
        params = AugmentParams(*torch.tensor(factors + [hue], dtype=torch.float32), order, alpha)
        return ImageWithParams(TF.pil_to_tensor(img), params)

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(jitter={self.jitter}, hue={self.hue}, lighting={self.lighting})'


def create_paper_train_transform(img_size: int = 224, scale: Sequence[float] = (0.08, 1.0),
                                 ratio: Sequence[float] = (3 / 4, 4 / 3), hflip: float = 0.5,
                                 color_jitter: float = 0.4, hue_jitter: bool = True, contrast: float = 0.0,
                                 pca_lighting: float = 0.1, mean: Sequence[float] = PAPER_MEAN,
                                 std: Sequence[float] = PAPER_STD, interpolation: str = 'bilinear', *,
                                 device_augment: bool = False
                                 ) -> transforms.Compose | tuple[transforms.Compose, BatchPaperAugment]:
    """Section 2 augmentation, keywords named as the hparams: PIL -> normalized float (3, H, W); ``device_augment``:
    ``(loader_transform, batch_augment)``, PIL -> :class:`ImageWithParams`, then (uint8 batch, params) -> float.

    timm's crop 8-100% of aspect 3/4-4/3 (step 2) and flip (3); brightness and saturation x U[1 - color_jitter,
    1 + color_jitter], the hue too with ``hue_jitter`` (4); PCA lighting (5); normalize (6); 0 turns a step off.
    GluonCV's recipe: ``hue_jitter=False, contrast=0.4``.
    """
    hue_range = color_jitter if hue_jitter else 0.0
    jitter_range = (color_jitter, contrast, color_jitter) if (color_jitter or contrast) else None
    primary, secondary, final = create_transform(
        img_size, is_training=True, scale=tuple(scale), ratio=tuple(ratio), hflip=hflip, vflip=0.0,
        color_jitter=jitter_range, auto_augment=None, re_prob=0.0, interpolation=interpolation, mean=tuple(mean),
        std=tuple(std), separate=True)
    jitter = next((t for t in secondary.transforms if isinstance(t, transforms.ColorJitter)), None)
    hue_step = RandomHueScale(hue_range) if hue_range else None
    lighting = PCALighting(pca_lighting) if pca_lighting else None
    if device_augment:
        steps = [s for s in ('brightness', 'contrast', 'saturation') if getattr(jitter, s, None) is not None]
        return (transforms.Compose(list(primary.transforms) + [SampleAugmentParams(jitter, hue_step, lighting)]),
                BatchPaperAugment(steps, hue_step is not None, lighting is not None, mean, std))
    final_tfl = list(final.transforms)
    if lighting is not None:
        norm_idx = next(i for i, t in enumerate(final_tfl) if isinstance(t, transforms.Normalize))
        final_tfl.insert(norm_idx, lighting)
    color = list(secondary.transforms) + ([hue_step] if hue_step is not None else [])
    return transforms.Compose(list(primary.transforms) + color + final_tfl)


def create_paper_eval_transform(input_size: int | Sequence[int] = 224, crop_pct: float = 0.875,
                                interpolation: str = 'bilinear', mean: Sequence[float] = PAPER_MEAN,
                                std: Sequence[float] = PAPER_STD, crop_mode: str = 'center', *,
                                device_augment: bool = False) -> transforms.Compose | tuple[transforms.Compose,
                                                                                           BatchNormalize]:
    """Section 2 evaluation, timm's (resize to size / crop_pct, center crop): PIL -> normalized float (3, H, W);
    ``device_augment``: ``(loader_transform, normalize)``, PIL -> uint8 (3, H, W), then uint8 batch -> float.
    Takes a timm data config: ``create_paper_eval_transform(**resolve_data_config(model=model))``."""
    tf = create_transform(input_size, is_training=False, crop_pct=crop_pct, crop_mode=crop_mode,
                          interpolation=interpolation, mean=tuple(mean), std=tuple(std), use_prefetcher=device_augment)
    return (tf, BatchNormalize(mean, std)) if device_augment else tf
