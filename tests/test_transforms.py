"""Section 2 training augmentation (timm_bot.transforms) and evaluation preprocessing (timm's, with the paper cfg)."""
import dataclasses
import inspect
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

from timm_bot.hparams import TrainHparams
from timm_bot.models import PAPER_MEAN, PAPER_STD
from timm_bot.transforms import (
    IMAGENET_PCA_EIGVAL,
    IMAGENET_PCA_EIGVEC,
    PCALighting,
    RandomHueScale,
    create_paper_train_transform,
    scale_hue,
)

CIFAR_TAR = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'cifar10-mini' / 'train.tar'


@pytest.fixture(scope='module')
def real_images() -> list[Image.Image]:
    """32 CIFAR-10 images from ../shared/data, else 32 of scikit-learn's digits (gray), else skip."""
    if CIFAR_TAR.is_file():
        ds = create_dataset('', root=str(CIFAR_TAR))
        return [ds[i][0].convert('RGB') for i in range(0, len(ds), len(ds) // 32)][:32]
    datasets = pytest.importorskip('sklearn.datasets', reason='no CIFAR-10 in ../shared/data and no scikit-learn')
    digits = datasets.load_digits().images[:32] * (255 / 16)
    return [Image.fromarray(d.astype(np.uint8)).resize((32, 32)).convert('RGB') for d in digits]


def _synthetic(w: int = 96, h: int = 96) -> Image.Image:
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([255 * x / w, 255 * y / h, 128 + 100 * np.sin(x / 7.0)], axis=-1)
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8), 'RGB')


def _step(tf: transforms.Compose, kind: type):
    return next(t for t in tf.transforms if isinstance(t, kind))


def test_pca_lighting_statistics(real_images):
    """Step 5: one RGB shift per image, eigvec @ (alpha * eigval) with alpha ~ N(0, 0.1) independent."""
    torch.manual_seed(0)
    lighting, n = PCALighting(0.1), 3000
    eigvec, eigval = torch.tensor(IMAGENET_PCA_EIGVEC), torch.tensor(IMAGENET_PCA_EIGVAL)
    shifts = []
    for k in range(n):
        x = TF.to_tensor(real_images[k % len(real_images)])
        delta = lighting(x) - x
        torch.testing.assert_close(delta, delta[:, :1, :1].expand_as(delta), rtol=0, atol=1e-6)
        shifts.append(delta[:, 0, 0])
    coeffs = torch.linalg.solve(eigvec, torch.stack(shifts).T).T  # alpha_j * eigval_j per draw
    std = 0.1 * eigval
    assert (coeffs.mean(0).abs() < 4 * std / n ** 0.5).all()
    torch.testing.assert_close(coeffs.std(0), std, rtol=0.06, atol=0)
    torch.testing.assert_close(torch.corrcoef(coeffs.T), torch.eye(3), rtol=0, atol=0.1)
    assert PCALighting(0.0)(x) is x
    with pytest.raises(TypeError):
        PCALighting()(real_images[0])  # PIL: must come after ToTensor


def test_hue_scaling(real_images):
    """Step 4: the hue angle is multiplied by c ~ U[0.6, 1.4] and wrapped; gray stays gray."""
    gray = Image.new('RGB', (8, 8), (90, 90, 90))
    assert np.array_equal(np.asarray(scale_hue(gray, 1.3)), np.asarray(gray))
    torch.manual_seed(0)
    factors = [RandomHueScale(0.4).get_params() for _ in range(2000)]
    assert 0.6 <= min(factors) < 0.62 and 1.38 < max(factors) <= 1.4
    with pytest.raises(ValueError):
        RandomHueScale(1.0)
    for factor in (0.6, 1.4):
        errors = []
        for img in real_images:
            hsv = np.asarray(img.convert('HSV')).astype(int)
            out = np.asarray(scale_hue(img, factor).convert('HSV')).astype(int)
            colourful = (hsv[..., 1] >= 96) & (hsv[..., 2] >= 96)  # hue well defined after RGB rounding
            err = np.abs(out[..., 0] - np.round(hsv[..., 0] * factor) % 256)
            errors.append(np.minimum(err, 256 - err)[colourful])
        errors = np.concatenate(errors)
        if errors.size == 0:
            pytest.skip('no colourful pixels in these images (the gray digits)')
        assert errors.max() <= 2


def test_brightness_and_saturation_range():
    jitter = _step(create_paper_train_transform(32), transforms.ColorJitter)
    assert tuple(jitter.brightness) == (0.6, 1.4) and tuple(jitter.saturation) == (0.6, 1.4)
    assert jitter.contrast is None and jitter.hue is None  # not in the paper
    torch.manual_seed(0)
    gray = Image.new('RGB', (4, 4), (100, 100, 100))  # saturation leaves gray alone: the brightness factor
    ratios = [np.asarray(jitter(gray), dtype=float).mean() / 100 for _ in range(500)]
    assert 0.59 <= min(ratios) < 0.65 and 1.35 < max(ratios) <= 1.41


def test_crop_and_flip():
    """Steps 2-3: crop area in [8%, 100%], aspect ratio in [3/4, 4/3]; flip with probability 0.5."""
    random.seed(0)
    torch.manual_seed(0)
    tf = create_paper_train_transform(32)
    crop, flip = _step(tf, RandomResizedCropAndInterpolation), _step(tf, transforms.RandomHorizontalFlip)
    img = _synthetic()
    params = [crop.get_params(img, crop.scale, crop.ratio) for _ in range(2000)]
    areas = np.array([h * w / 96 ** 2 for _, _, h, w in params])
    ratios = np.array([w / h for _, _, h, w in params])
    assert 0.08 - 0.03 <= areas.min() < 0.12 and 0.95 < areas.max() <= 1.0
    assert 3 / 4 * 0.97 <= ratios.min() and ratios.max() <= 4 / 3 * 1.03
    mirrored = np.asarray(img.transpose(Image.FLIP_LEFT_RIGHT))
    assert abs(sum(np.array_equal(np.asarray(flip(img)), mirrored) for _ in range(2000)) / 2000 - 0.5) < 0.04


def test_train_pipeline(real_images):
    tf = create_paper_train_transform(224)
    assert [type(t) for t in tf.transforms] == [
        RandomResizedCropAndInterpolation, transforms.RandomHorizontalFlip, transforms.ColorJitter, RandomHueScale,
        MaybeToTensor, PCALighting, transforms.Normalize]
    norm = tf.transforms[-1]
    torch.testing.assert_close(torch.as_tensor(norm.mean) * 255, torch.tensor([123.68, 116.779, 103.939]))
    torch.testing.assert_close(torch.as_tensor(norm.std) * 255, torch.tensor([58.393, 57.12, 57.375]))
    gluon = create_paper_train_transform(224, hue_jitter=False, contrast=0.4)  # the authors' GluonCV recipe
    assert tuple(_step(gluon, transforms.ColorJitter).contrast) == (0.6, 1.4)
    assert not any(isinstance(t, RandomHueScale) for t in gluon.transforms)
    # every random step an identity: the output is the paper's normalization of the image
    img = real_images[0]
    ident = create_paper_train_transform(32, scale=(1, 1), ratio=(1, 1), hflip=0, color_jitter=0, hue_jitter=False,
                                         pca_lighting=0)
    torch.testing.assert_close(ident(img), TF.normalize(TF.to_tensor(img), PAPER_MEAN, PAPER_STD))
    out = create_paper_train_transform(32)(img)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32


def test_eval_transform_resize_256_center_crop_224():
    """Section 2 evaluation is timm's eval transform with the paper models' pretrained cfg."""
    config = resolve_data_config(pretrained_cfg=get_pretrained_cfg('resnet50d_bot').to_dict())
    tf = create_transform(**config, is_training=False)
    img = _synthetic(400, 300)
    resized = TF.resize(img, 256, interpolation=transforms.InterpolationMode.BILINEAR)
    assert resized.size == (341, 256)
    torch.testing.assert_close(tf(img), TF.normalize(TF.to_tensor(TF.center_crop(resized, 224)), PAPER_MEAN, PAPER_STD))


def test_keywords_are_train_hparams_names():
    """One's own loop passes the YAML's keys: every keyword but contrast (GluonCV's) is a TrainHparams field."""
    fields = {f.name for f in dataclasses.fields(TrainHparams)}
    keywords = set(inspect.signature(create_paper_train_transform).parameters)
    assert keywords - fields == {'contrast'}
    hp = TrainHparams(img_size=32, hue_jitter=False, device_augment=False)
    tf = create_paper_train_transform(**{k: getattr(hp, k) for k in keywords & fields if k not in ('mean', 'std')})
    assert not any(isinstance(t, RandomHueScale) for t in tf.transforms)
    assert tuple(_step(tf, transforms.ColorJitter).saturation) == (0.6, 1.4)
