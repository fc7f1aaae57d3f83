"""The ResNets of *Bag of Tricks* (He et al., 2019), section 4, Figure 2, Table 5, as timm's own ``ResNet``.

============  =====================================================  ===========================
paper         change                                                 timm ``ResNet`` kwargs
============  =====================================================  ===========================
ResNet        stride 2 on the first 1x1 conv of path A               ``block=BottleneckV1``
ResNet-B      stride 2 on the 3x3 conv of path A (4.1)               ``block=Bottleneck``
ResNet-C      7x7 stem -> three 3x3 convs (4.2)                      ``stem_type='deep'``
ResNet-D      C + 2x2 avg pool before the shortcut's 1x1 conv (4.2)  ``stem_type='deep', avg_down=True``
============  =====================================================  ===========================

Basic blocks (18, 34) already stride their 3x3 conv, so no ``*b_bot`` is registered for them. Initialization is
not a constructor kwarg: train.py applies :func:`~timm_bot.models.init.xavier_init_` / ``zero_gamma_``.
The ``*_tiny_bot`` models are not from the paper: 1/4 width, 2 blocks per stage, for 32x32 CPU experiments.
"""
from __future__ import annotations

from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

__all__ = ['BottleneckV1', 'PAPER_MEAN', 'PAPER_STD']

# Section 2: subtract 123.68, 116.779, 103.939 and divide by 58.393, 57.12, 57.375 (here on the [0, 1] scale).
PAPER_MEAN = (123.68 / 255, 116.779 / 255, 103.939 / 255)
PAPER_STD = (58.393 / 255, 57.12 / 255, 57.375 / 255)


class BottleneckV1(Bottleneck):
    """The original bottleneck (Figure 2a, left): a downsampling block strides its first 1x1 conv, not the 3x3.

    Same parameters and state-dict keys as timm's ``Bottleneck`` (which is ResNet-B).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get('aa_layer') is not None:
            raise ValueError('BottleneckV1 does not support anti-aliasing (aa_layer)')
        super().__init__(*args, **kwargs)
        self.conv1.stride, self.conv2.stride = (self.stride, self.stride), (1, 1)


_DEEP_STEM = dict(stem_width=32, stem_type='deep')
_TWEAKS = {'': {}, 'b': {}, 'c': _DEEP_STEM, 'd': dict(_DEEP_STEM, avg_down=True)}
_LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
_TINY_ARGS = dict(channels=(16, 32, 64, 128), layers=(2, 2, 2, 2))


def _create(variant: str, pretrained: bool, depth: int, tweak: str, **kwargs: Any) -> ResNet:
    block = BasicBlock if depth in (18, 34) else BottleneckV1 if tweak == '' else Bottleneck
    args = {'block': block, 'layers': _LAYERS.get(depth), **_TWEAKS[tweak], **(_TINY_ARGS if 'tiny' in variant else {})}
    return build_model_with_cfg(ResNet, variant, pretrained, **{**args, **kwargs})


def _cfg(**kwargs: Any) -> dict[str, Any]:
    """Section 2 evaluation: resize the shorter side to 256, center-crop 224, the paper's mean/std."""
    return {
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7), 'crop_pct': 0.875,
        'crop_mode': 'center', 'interpolation': 'bilinear', 'mean': PAPER_MEAN, 'std': PAPER_STD,
        'first_conv': 'conv1', 'classifier': 'fc', 'paper_ids': 'arXiv:1812.01187', 'license': 'apache-2.0',
        **kwargs}


def _gluon(arch: str, **kwargs: Any) -> dict[str, Any]:
    """The authors' GluonCV weights, as ported to the Hub by timm."""
    return _cfg(hf_hub_id=f'timm/{arch}.gluon_in1k', origin_url='https://cv.gluon.ai/model_zoo/classification.html',
                **kwargs)


_DEEP = dict(first_conv='conv1.0')
_TINY = dict(input_size=(3, 32, 32), pool_size=(1, 1), crop_pct=1.0, num_classes=10)

default_cfgs = generate_default_cfgs({
    'resnet18_bot.gluon_in1k': _gluon('resnet18'), 'resnet18c_bot': _cfg(**_DEEP), 'resnet18d_bot': _cfg(**_DEEP),
    'resnet34_bot.gluon_in1k': _gluon('resnet34'), 'resnet34c_bot': _cfg(**_DEEP), 'resnet34d_bot': _cfg(**_DEEP),
    # The original (v1) GluonCV weights were never ported to timm.
    'resnet50_bot': _cfg(), 'resnet101_bot': _cfg(), 'resnet152_bot': _cfg(),
    'resnet50b_bot.gluon_in1k': _gluon('resnet50'), 'resnet101b_bot.gluon_in1k': _gluon('resnet101'),
    'resnet152b_bot.gluon_in1k': _gluon('resnet152'),
    **{f'resnet{d}{t}_bot.gluon_in1k': _gluon(f'resnet{d}{t}', **_DEEP) for t in 'cd' for d in (50, 101, 152)},
    'resnet18d_tiny_bot': _cfg(**_DEEP, **_TINY),
    'resnet26_tiny_bot': _cfg(**_TINY), 'resnet26b_tiny_bot': _cfg(**_TINY),
    'resnet26c_tiny_bot': _cfg(**_DEEP, **_TINY), 'resnet26d_tiny_bot': _cfg(**_DEEP, **_TINY),
})


@register_model
def resnet18_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-18 (basic blocks: original = ResNet-B, section 4.1)."""
    return _create('resnet18_bot', pretrained, 18, '', **kwargs)

@register_model
def resnet18c_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-18-C: three 3x3 stem convs (section 4.2)."""
    return _create('resnet18c_bot', pretrained, 18, 'c', **kwargs)

@register_model
def resnet18d_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-18-D: C + avg-pool shortcut downsampling (section 4.2)."""
    return _create('resnet18d_bot', pretrained, 18, 'd', **kwargs)

@register_model
def resnet34_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-34 (basic blocks: original = ResNet-B, section 4.1)."""
    return _create('resnet34_bot', pretrained, 34, '', **kwargs)

@register_model
def resnet34c_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-34-C (section 4.2)."""
    return _create('resnet34c_bot', pretrained, 34, 'c', **kwargs)

@register_model
def resnet34d_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-34-D (section 4.2)."""
    return _create('resnet34d_bot', pretrained, 34, 'd', **kwargs)

@register_model
def resnet50_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-50, original bottleneck (Table 5: 25M params, 3.8 GFLOPs, 76.21%)."""
    return _create('resnet50_bot', pretrained, 50, '', **kwargs)

@register_model
def resnet50b_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-50-B: stride on the 3x3 conv (Table 5: 76.66%)."""
    return _create('resnet50b_bot', pretrained, 50, 'b', **kwargs)

@register_model
def resnet50c_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-50-C: deep stem (Table 5: 76.87%)."""
    return _create('resnet50c_bot', pretrained, 50, 'c', **kwargs)

@register_model
def resnet50d_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-50-D: C + avg-pool shortcut (Table 5: 4.3 GFLOPs, 77.16%)."""
    return _create('resnet50d_bot', pretrained, 50, 'd', **kwargs)

@register_model
def resnet101_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-101, original bottleneck (section 4)."""
    return _create('resnet101_bot', pretrained, 101, '', **kwargs)

@register_model
def resnet101b_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-101-B (section 4.1)."""
    return _create('resnet101b_bot', pretrained, 101, 'b', **kwargs)

@register_model
def resnet101c_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-101-C (section 4.2)."""
    return _create('resnet101c_bot', pretrained, 101, 'c', **kwargs)

@register_model
def resnet101d_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-101-D (section 4.2)."""
    return _create('resnet101d_bot', pretrained, 101, 'd', **kwargs)

@register_model
def resnet152_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-152, original bottleneck (section 4)."""
    return _create('resnet152_bot', pretrained, 152, '', **kwargs)

@register_model
def resnet152b_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-152-B (section 4.1)."""
    return _create('resnet152b_bot', pretrained, 152, 'b', **kwargs)

@register_model
def resnet152c_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-152-C (section 4.2)."""
    return _create('resnet152c_bot', pretrained, 152, 'c', **kwargs)

@register_model
def resnet152d_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-152-D, the distillation teacher (section 5.3)."""
    return _create('resnet152d_bot', pretrained, 152, 'd', **kwargs)

@register_model
def resnet18d_tiny_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """Not in the paper: ResNet-18-D at 1/4 width for 32x32 CPU runs."""
    return _create('resnet18d_tiny_bot', pretrained, 18, 'd', **kwargs)

@register_model
def resnet26_tiny_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """Not in the paper: original-bottleneck ResNet-26 at 1/4 width (CPU ablation ladder)."""
    return _create('resnet26_tiny_bot', pretrained, 26, '', **kwargs)

@register_model
def resnet26b_tiny_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """Not in the paper: ResNet-26-B at 1/4 width."""
    return _create('resnet26b_tiny_bot', pretrained, 26, 'b', **kwargs)

@register_model
def resnet26c_tiny_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """Not in the paper: ResNet-26-C at 1/4 width."""
    return _create('resnet26c_tiny_bot', pretrained, 26, 'c', **kwargs)

@register_model
def resnet26d_tiny_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """Not in the paper: ResNet-26-D at 1/4 width."""
    return _create('resnet26d_tiny_bot', pretrained, 26, 'd', **kwargs)
