"""Training augmentation of *Bag of Tricks* (He et al., 2019), section 2 "Baseline Training Procedure", as timm's
training transform plus the two pieces timm lacks.

Section 2, steps 1-6 (training) and where each comes from here:

1. decode to float32 [0, 255]                                   -- PIL image, ``MaybeToTensor`` later gives [0, 1]
2. random crop, aspect ratio in [3/4, 4/3], area in [8%, 100%],
   resized to 224x224                                           -- timm ``RandomResizedCropAndInterpolation``
3. horizontal flip with probability 0.5                         -- timm (``RandomHorizontalFlip``)
4. scale hue, saturation and brightness by U[0.6, 1.4]          -- torchvision ``ColorJitter`` (brightness,
                                                                   saturation) + :class:`RandomHueScale` (hue)
5. PCA noise with coefficient ~ N(0, 0.1)                       -- :class:`PCALighting`
6. normalize with mean (123.68, 116.779, 103.939) and
   std (58.393, 57.12, 57.375)                                  -- timm ``Normalize`` with ``PAPER_MEAN/STD``

Hue: torchvision's (and timm's) ``hue`` jitter *shifts* the hue; the paper says *scale*. :class:`RandomHueScale`
takes it literally: the hue angle is multiplied by c ~ U[0.6, 1.4] and wrapped around the colour circle. The
authors' GluonCV recipe (``train_imagenet.py``) instead jitters brightness, *contrast* and saturation by 0.4 and
has no hue term; ``create_paper_train_transform(hue=0, contrast=0.4)`` reproduces that recipe.

Evaluation (section 2: resize the shorter edge to 256, center-crop 224, normalize) needs no code here: it is
timm's ``create_transform(**resolve_data_config(model=model), is_training=False)``, the paper models' pretrained
cfgs carry ``crop_pct=0.875``, ``crop_mode='center'`` and the paper's mean/std.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform
from torchvision import transforms

from .models import PAPER_MEAN, PAPER_STD

__all__ = [
    'IMAGENET_PCA_EIGVAL', 'IMAGENET_PCA_EIGVEC', 'PCALighting', 'RandomHueScale', 'scale_hue',
    'create_paper_train_transform',
]

# ImageNet RGB PCA as used by fb.resnet.torch and GluonCV (mxnet's RandomLighting), for pixels in [0, 1]:
# the eigenvalues are AlexNet's 0-255 values (55.46, 4.794, 1.148) divided by 255. Eigenvectors are the COLUMNS.
IMAGENET_PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_PCA_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


class PCALighting:
    """AlexNet-style PCA lighting noise (section 2, step 5: "Add PCA noise with a coefficient sampled from a normal
    distribution N(0, 0.1)").

    Draws ``alpha ~ N(0, alphastd)`` per eigenvector (torch's RNG, so DataLoader workers are seeded by torch) and
    adds ``eigvec @ (alpha * eigval)`` to the RGB value of every pixel, like fb.resnet.torch's ``Lighting``. The
    input is a float ``(3, H, W)`` tensor in [0, 1] *before* normalization (place it after ``ToTensor`` /
    ``MaybeToTensor``); the eigenvalues are for that scale. Values are not clipped (nor are they in the references).

    Args:
        alphastd: standard deviation of the coefficients; 0 disables.
        eigval: PCA eigenvalues, [0, 1] pixel scale.
        eigvec: 3x3 matrix whose columns are the eigenvectors, RGB order.
    """

    def __init__(
            self,
            alphastd: float = 0.1,
            eigval: Sequence[float] = IMAGENET_PCA_EIGVAL,
            eigvec: Sequence[Sequence[float]] = IMAGENET_PCA_EIGVEC,
    ) -> None:
        self.alphastd = alphastd
        self.eigval = torch.tensor(eigval, dtype=torch.float32)
        self.eigvec = torch.tensor(eigvec, dtype=torch.float32)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if not isinstance(img, torch.Tensor) or not img.is_floating_point() or img.shape[-3] != 3:
            raise TypeError('PCALighting expects a float (3, H, W) tensor in [0, 1]; put it after ToTensor.')
        if self.alphastd == 0:
            return img
        alpha = torch.randn(3) * self.alphastd
        rgb = self.eigvec @ (alpha * self.eigval)
        return img + rgb.to(dtype=img.dtype, device=img.device).view(3, 1, 1)

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(alphastd={self.alphastd})'


def scale_hue(img: Image.Image, factor: float) -> Image.Image:
    """Multiply the hue angle of an RGB PIL image by ``factor``, wrapping around the colour circle (section 2).

    PIL's HSV mode stores the hue as 0..255 for 0..360 degrees, so the scaling is a 256-entry lookup table
    (``round(h * factor) mod 256``), cheap enough for data-loader workers.
    """
    if img.mode != 'RGB':
        raise TypeError(f'scale_hue expects an RGB PIL image, got mode {img.mode!r}')
    h, s, v = img.convert('HSV').split()
    lut = (np.round(np.arange(256) * factor) % 256).astype(np.uint8)  # np.round halves to even, like round()
    h = Image.fromarray(lut[np.asarray(h)])
    return Image.merge('HSV', (h, s, v)).convert('RGB')


class RandomHueScale:
    """Scale the hue by a coefficient drawn uniformly from ``[1 - hue, 1 + hue]`` (section 2, step 4; the paper's
    [0.6, 1.4] is ``hue=0.4``). Saturation and brightness scaling are torchvision's ``ColorJitter``.

    Uses torch's RNG. Operates on RGB PIL images (before ``ToTensor``, where timm's ``ColorJitter`` also runs).
    """

    def __init__(self, hue: float = 0.4) -> None:
        if not 0 <= hue < 1:
            raise ValueError(f'hue must be in [0, 1), got {hue}')
        self.hue = hue

    def get_params(self) -> float:
        """Draw the hue coefficient."""
        return float(torch.empty(1).uniform_(1 - self.hue, 1 + self.hue))

    def __call__(self, img: Image.Image) -> Image.Image:
        if self.hue == 0:
            return img
        return scale_hue(img, self.get_params())

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(hue=({1 - self.hue:g}, {1 + self.hue:g}))'


def create_paper_train_transform(
        img_size: int = 224,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        color_jitter: float = 0.4,
        hue: float = 0.4,
        contrast: float = 0.0,
        pca_lighting: float = 0.1,
        mean: Sequence[float] = PAPER_MEAN,
        std: Sequence[float] = PAPER_STD,
        interpolation: str = 'bilinear',
) -> transforms.Compose:
    """The baseline training augmentation of section 2, built by timm's ``create_transform(is_training=True)``.

    timm builds crop, flip, color jitter, ``MaybeToTensor`` and ``Normalize`` (no auto-augment, no random erasing,
    no vertical flip); :class:`RandomHueScale` is appended to timm's color stage and :class:`PCALighting` is
    inserted right before ``Normalize``.

    Args:
        img_size: output size (224 in the paper).
        scale: crop area fraction range.
        ratio: crop aspect ratio range.
        hflip: horizontal flip probability.
        color_jitter: brightness and saturation factors are drawn from ``[1 - color_jitter, 1 + color_jitter]``.
        hue: hue scale range ``[1 - hue, 1 + hue]`` (:class:`RandomHueScale`); 0 disables it.
        contrast: contrast jitter, not in the paper (0); 0.4 with ``hue=0`` is the authors' GluonCV recipe.
        pca_lighting: ``alphastd`` of :class:`PCALighting`; 0 disables it.
        mean: normalization mean, [0, 1] scale (the paper's by default).
        std: normalization std, [0, 1] scale (the paper's by default).
        interpolation: resize interpolation of the random crop.

    Returns:
        A ``Compose`` mapping a PIL image to a normalized float32 ``(3, img_size, img_size)`` tensor.
    """
    jitter = (color_jitter, contrast, color_jitter) if (color_jitter or contrast) else None
    primary, secondary, final = create_transform(
        img_size, is_training=True, scale=scale, ratio=ratio, hflip=hflip, vflip=0.0, color_jitter=jitter,
        auto_augment=None, re_prob=0.0, interpolation=interpolation, mean=tuple(mean), std=tuple(std),
        separate=True)
    color = list(secondary.transforms) + ([RandomHueScale(hue)] if hue else [])
    final_tfl = list(final.transforms)
    if pca_lighting:
        norm_idx = next(i for i, t in enumerate(final_tfl) if isinstance(t, transforms.Normalize))
        final_tfl.insert(norm_idx, PCALighting(pca_lighting))
    return transforms.Compose(list(primary.transforms) + color + final_tfl)
