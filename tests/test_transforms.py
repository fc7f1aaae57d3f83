"""Section 2 training augmentation and evaluation preprocessing: timm_bot.transforms + timm's eval transform."""
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from timm.data import create_dataset, create_transform, resolve_data_config
from timm.data.transforms import MaybeToTensor, RandomResizedCropAndInterpolation
from timm.models import get_pretrained_cfg
from torchvision import transforms

from timm_bot.models import PAPER_MEAN, PAPER_STD
from timm_bot.transforms import (
    IMAGENET_PCA_EIGVAL,
    IMAGENET_PCA_EIGVEC,
    PCALighting,
    RandomHueScale,
    create_paper_train_transform,
    scale_hue,
)

CIFAR_TAR = Path(__file__).parents[2] / 'shared' / 'data' / 'cifar10-mini' / 'train.tar'


@pytest.fixture(scope='module')
def real_images() -> list[Image.Image]:
    if not CIFAR_TAR.is_file():
        pytest.skip(f'{CIFAR_TAR} not found')
    ds = create_dataset('', root=str(CIFAR_TAR))
    return [ds[i][0].convert('RGB') for i in range(0, len(ds), len(ds) // 32)][:32]


def _synthetic(w: int = 96, h: int = 96) -> Image.Image:
    """A colourful, non-symmetric RGB image."""
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([255 * x / w, 255 * y / h, 128 + 100 * np.sin(x / 7.0)], axis=-1)
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8), 'RGB')


@pytest.fixture(params=['synthetic', 'real'])
def images(request: pytest.FixtureRequest) -> list[Image.Image]:
    """Every statistical test runs on a synthesized image and on real CIFAR-10 images (skipped if absent)."""
    if request.param == 'real':
        return request.getfixturevalue('real_images')[:4]
    return [_synthetic()]


def _step(tf: transforms.Compose, kind: type):
    return next(t for t in tf.transforms if isinstance(t, kind))


# ---- PCA lighting (section 2, step 5) ------------------------------------------------------------------------------

def test_pca_lighting_statistics(images: list[Image.Image]) -> None:
    torch.manual_seed(0)
    lighting = PCALighting(0.1)
    eigvec, eigval = torch.tensor(IMAGENET_PCA_EIGVEC), torch.tensor(IMAGENET_PCA_EIGVAL)
    n = 3000
    shifts = []
    for k in range(n):
        x = TF.to_tensor(images[k % len(images)])
        delta = lighting(x) - x
        # One RGB shift for every pixel
        assert (delta - delta[:, :1, :1]).abs().max() < 1e-6
        shifts.append(delta[:, 0, 0])
    coeffs = torch.linalg.solve(eigvec, torch.stack(shifts).T).T  # alpha_j * eigval_j, per draw
    std = 0.1 * eigval
    assert (coeffs.mean(0).abs() < 4 * std / n ** 0.5).all()
    torch.testing.assert_close(coeffs.std(0), std, rtol=0.06, atol=0)
    corr = torch.corrcoef(coeffs.T)
    assert (corr - torch.eye(3)).abs().max() < 0.1  # independent per eigenvector
    # Shift covariance is eigvec diag(std^2) eigvec^T: the noise lives along the eigenvectors.
    cov = torch.cov(torch.stack(shifts).T)
    torch.testing.assert_close(cov, eigvec @ torch.diag(std ** 2) @ eigvec.T, rtol=0, atol=0.06 * std[0] ** 2)


def test_pca_lighting_input_checks_and_off_switch() -> None:
    x = torch.rand(3, 8, 8)
    assert PCALighting(0.0)(x) is x
    with pytest.raises(TypeError):
        PCALighting()(_synthetic())
    with pytest.raises(TypeError):
        PCALighting()((x * 255).to(torch.uint8))


def test_pca_eigvec_columns_are_orthonormal() -> None:
    v = torch.tensor(IMAGENET_PCA_EIGVEC)
    torch.testing.assert_close(v.T @ v, torch.eye(3), atol=2e-3, rtol=0)


# ---- hue / saturation / brightness (section 2, step 4) -------------------------------------------------------------

def _pure_hue(h: int) -> Image.Image:
    return Image.merge('HSV', [Image.new('L', (8, 8), v) for v in (h, 255, 255)]).convert('RGB')


def _hue_of(img: Image.Image) -> int:
    return int(np.asarray(img.convert('HSV'))[..., 0].mean().round())


@pytest.mark.parametrize('hue, factor', [(60, 1.4), (60, 0.6), (200, 1.4), (170, 1.0)])
def test_scale_hue_multiplies_angle(hue: int, factor: float) -> None:
    got = _hue_of(scale_hue(_pure_hue(hue), factor))
    want = round(hue * factor) % 256
    assert min(abs(got - want), 256 - abs(got - want)) <= 2


def test_scale_hue_keeps_gray_and_is_near_identity_at_1(images: list[Image.Image]) -> None:
    gray = Image.new('RGB', (8, 8), (90, 90, 90))
    assert np.array_equal(np.asarray(scale_hue(gray, 1.3)), np.asarray(gray))
    img = images[0]
    diff = np.abs(np.asarray(scale_hue(img, 1.0), dtype=int) - np.asarray(img, dtype=int))
    assert diff.mean() < 1.5  # only PIL's HSV round-trip quantization


def test_random_hue_scale_range() -> None:
    torch.manual_seed(0)
    factors = [RandomHueScale(0.4).get_params() for _ in range(2000)]
    assert 0.6 <= min(factors) < 0.62 and 1.38 < max(factors) <= 1.4
    assert np.mean(factors) == pytest.approx(1.0, abs=0.02)
    with pytest.raises(ValueError):
        RandomHueScale(1.0)


def test_brightness_and_saturation_factor_range() -> None:
    tf = create_paper_train_transform(32)
    jitter = _step(tf, transforms.ColorJitter)
    assert tuple(jitter.brightness) == (0.6, 1.4) and tuple(jitter.saturation) == (0.6, 1.4)
    assert jitter.contrast is None and jitter.hue is None  # contrast / hue shift are not in the paper
    torch.manual_seed(0)
    gray = Image.new('RGB', (4, 4), (100, 100, 100))  # saturation leaves gray alone: pure brightness factor
    ratios = [np.asarray(jitter(gray), dtype=float).mean() / 100 for _ in range(500)]
    assert 0.59 <= min(ratios) < 0.65 and 1.35 < max(ratios) <= 1.41


# ---- crop and flip (section 2, steps 2-3) --------------------------------------------------------------------------

def _paper_crop_area_mean(n: int = 200_000, attempts: int = 10) -> float:
    """Mean area fraction of the paper's crop on a square image: area ~ U[0.08, 1], ratio in [3/4, 4/3], redrawn
    while the rectangle does not fit (whole image after ``attempts`` misses, as torchvision / timm do)."""
    rng = np.random.default_rng(0)
    area = rng.uniform(0.08, 1.0, (n, attempts))
    ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3), (n, attempts)))
    fits = area * np.maximum(ratio, 1 / ratio) <= 1.0
    first = fits.argmax(1)
    return float(np.where(fits.any(1), area[np.arange(n), first], 1.0).mean())


def test_random_resized_crop_area_and_ratio(images: list[Image.Image]) -> None:
    random.seed(0)
    crop = _step(create_paper_train_transform(32), RandomResizedCropAndInterpolation)
    assert crop.scale == (0.08, 1.0) and crop.ratio == pytest.approx((3 / 4, 4 / 3))
    areas, ratios = [], []
    for k in range(2000):
        img = images[k % len(images)]
        w, h = img.size
        _, _, ch, cw = crop.get_params(img, crop.scale, crop.ratio)
        areas.append(ch * cw / (w * h))
        ratios.append(cw / ch)
    tol = 2 / min(images[0].size)  # rounding of crop sides on small images
    assert min(areas) >= 0.08 - 2 * tol and max(areas) <= 1.0
    assert min(areas) < 0.12 and max(areas) > 0.95
    assert np.mean(areas) == pytest.approx(_paper_crop_area_mean(), abs=0.025)
    assert min(ratios) >= 3 / 4 * (1 - 2 * tol) and max(ratios) <= 4 / 3 * (1 + 2 * tol)


def test_hflip_rate(images: list[Image.Image]) -> None:
    torch.manual_seed(0)
    flip = _step(create_paper_train_transform(32), transforms.RandomHorizontalFlip)
    img = images[0]
    mirrored = np.asarray(img.transpose(Image.FLIP_LEFT_RIGHT))
    n = 2000
    flips = sum(np.array_equal(np.asarray(flip(img)), mirrored) for _ in range(n))
    assert abs(flips / n - 0.5) < 0.04


# ---- full pipelines -------------------------------------------------------------------------------------------------

def test_train_transform_pipeline_order_and_constants() -> None:
    tf = create_paper_train_transform(224)
    kinds = [type(t) for t in tf.transforms]
    assert kinds == [RandomResizedCropAndInterpolation, transforms.RandomHorizontalFlip, transforms.ColorJitter,
                     RandomHueScale, MaybeToTensor, PCALighting, transforms.Normalize]
    norm = tf.transforms[-1]
    torch.testing.assert_close(torch.as_tensor(norm.mean), torch.tensor(PAPER_MEAN))
    torch.testing.assert_close(torch.as_tensor(norm.std), torch.tensor(PAPER_STD))
    torch.testing.assert_close(torch.as_tensor(norm.mean) * 255, torch.tensor([123.68, 116.779, 103.939]))
    torch.testing.assert_close(torch.as_tensor(norm.std) * 255, torch.tensor([58.393, 57.12, 57.375]))
    # switches: the GluonCV recipe (contrast, no hue), everything off
    gluon = create_paper_train_transform(224, hue=0, contrast=0.4, pca_lighting=0.1)
    assert tuple(_step(gluon, transforms.ColorJitter).contrast) == (0.6, 1.4)
    assert not any(isinstance(t, RandomHueScale) for t in gluon.transforms)
    bare = create_paper_train_transform(224, color_jitter=0, hue=0, pca_lighting=0)
    assert [type(t) for t in bare.transforms] == [RandomResizedCropAndInterpolation, transforms.RandomHorizontalFlip,
                                                  MaybeToTensor, transforms.Normalize]


def test_train_transform_output(images: list[Image.Image]) -> None:
    torch.manual_seed(0)
    random.seed(0)
    tf = create_paper_train_transform(32)
    for img in images:
        out = tf(img)
        assert out.shape == (3, 32, 32) and out.dtype == torch.float32 and torch.isfinite(out).all()
    # With every random step made an identity, the output is the paper's normalization of the image.
    img = images[0].resize((32, 32))
    ident = create_paper_train_transform(32, scale=(1, 1), ratio=(1, 1), hflip=0, color_jitter=0, hue=0,
                                         pca_lighting=0)
    want = (TF.to_tensor(img) - torch.tensor(PAPER_MEAN).view(3, 1, 1)) / torch.tensor(PAPER_STD).view(3, 1, 1)
    torch.testing.assert_close(ident(img), want)


def test_eval_transform_resize_256_center_crop_224() -> None:
    """Section 2 evaluation is timm's eval transform with the paper models' pretrained cfg."""
    config = resolve_data_config(pretrained_cfg=get_pretrained_cfg('resnet50d_bot').to_dict())
    assert config['crop_pct'] == 0.875 and config['input_size'] == (3, 224, 224)
    tf = create_transform(**config, is_training=False)
    resize = _step(tf, transforms.Resize)
    assert resize.size == 256  # shorter side
    img = _synthetic(400, 300)  # non-square
    out = tf(img)
    assert out.shape == (3, 224, 224)
    resized = TF.resize(img, 256, interpolation=transforms.InterpolationMode.BILINEAR)
    assert resized.size == (341, 256)
    want = TF.normalize(TF.to_tensor(TF.center_crop(resized, 224)), PAPER_MEAN, PAPER_STD)
    torch.testing.assert_close(out, want)
