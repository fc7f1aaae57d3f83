"""Training augmentation of *Bag of Tricks* (section 2): timm's training transform plus the two steps timm lacks."""
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform
from torchvision import transforms

from .models import PAPER_MEAN, PAPER_STD

__all__ = ['IMAGENET_PCA_EIGVAL', 'IMAGENET_PCA_EIGVEC', 'PCALighting', 'RandomHueScale', 'scale_hue',
           'create_paper_train_transform']

# ImageNet RGB PCA of fb.resnet.torch / GluonCV for pixels in [0, 1] (AlexNet's 55.46, 4.794, 1.148 over 255),
# eigenvectors in the columns of IMAGENET_PCA_EIGVEC
IMAGENET_PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))


class PCALighting:
    """Section 2 step 5: add ``eigvec @ (alpha * eigval)``, ``alpha ~ N(0, alphastd)``, to a [0, 1] float tensor."""

    def __init__(self, alphastd: float = 0.1, eigval: Sequence[float] = IMAGENET_PCA_EIGVAL,
                 eigvec: Sequence[Sequence[float]] = IMAGENET_PCA_EIGVEC) -> None:
        self.alphastd = alphastd
        self.eigval, self.eigvec = (torch.tensor(v, dtype=torch.float32) for v in (eigval, eigvec))

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if not isinstance(img, torch.Tensor) or not img.is_floating_point() or img.shape[-3] != 3:
            raise TypeError('PCALighting expects a float (3, H, W) tensor in [0, 1]; put it after ToTensor.')
        if self.alphastd == 0:
            return img
        rgb = self.eigvec @ (torch.randn(3) * self.alphastd * self.eigval)  # torch's RNG
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


def create_paper_train_transform(img_size: int = 224, scale: tuple[float, float] = (0.08, 1.0),
                                 ratio: tuple[float, float] = (3 / 4, 4 / 3), hflip: float = 0.5,
                                 color_jitter: float = 0.4, hue: float = 0.4, contrast: float = 0.0,
                                 pca_lighting: float = 0.1, mean: Sequence[float] = PAPER_MEAN,
                                 std: Sequence[float] = PAPER_STD, interpolation: str = 'bilinear'
                                 ) -> transforms.Compose:
    """Section 2 on timm's ``create_transform(separate=True)``: crop 8-100% of aspect 3/4-4/3 (step 2), flip (3),
    saturation/brightness jitter + :class:`RandomHueScale` (4), :class:`PCALighting` (5), normalize (6); 0 turns a
    step off. GluonCV's recipe jitters contrast instead of hue: ``hue=0, contrast=0.4``."""
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
