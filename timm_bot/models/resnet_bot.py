"""The ResNet family of *Bag of Tricks* (He et al., 2019), section 4 "Model Tweaks", Figure 2, Table 5.

Every model here is timm's own :class:`timm.models.resnet.ResNet`, built with ``build_model_with_cfg``; only what
timm lacks is added:

* :class:`BottleneckV1` -- the *original* ResNet bottleneck (Figure 1/2a): in a downsampling block the stride 2 sits
  on the first 1x1 conv of path A. timm's :class:`~timm.models.resnet.Bottleneck` puts it on the 3x3 conv, which
  is exactly ResNet-B (Figure 2a, right).
* :class:`BotResNet` -- adds the paper's initialization (section 2: Xavier-uniform for conv and FC weights, zero
  biases) as the ``weight_init`` kwarg, ``'xavier'`` by default; ``weight_init='timm'`` keeps timm's Kaiming init.

The tweaks map onto timm's ResNet kwargs:

============  =====================================================  ===========================
paper         what changes                                           timm kwargs
============  =====================================================  ===========================
ResNet        stride 2 on the 1x1 conv of path A                     ``block=BottleneckV1``
ResNet-B      stride 2 on the 3x3 conv of path A                     ``block=Bottleneck``
ResNet-C      7x7 stem -> three 3x3 convs (32, 32, 64 channels)      ``stem_type='deep'``
ResNet-D      C + 2x2 avg pool (stride 2) before the 1x1 in path B   ``stem_type='deep', avg_down=True``
============  =====================================================  ===========================

For basic-block depths (18, 34) the stride already sits on a 3x3 conv, so the original ResNet *is* ResNet-B there:
``resnet18_bot`` is registered, ``resnet18b_bot`` is not (it would be a duplicate).

Zero-gamma (section 3.1) is timm's ``zero_init_last`` kwarg (default ``True``): gamma of the last BN of every
residual branch starts at 0, so each block starts as its shortcut.

The ``*_tiny_bot`` models are *not* from the paper: narrow (1/4 width) and shallow versions of the same
architectures, for CPU experiments on 32x32 images (quickstart, tests, benchmarks/ablation.py).
"""
from __future__ import annotations

from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

from .init import WEIGHT_INITS, xavier_init_

__all__ = ['BottleneckV1', 'BotResNet', 'PAPER_MEAN', 'PAPER_STD']

# Section 2: "normalize RGB channels by subtracting 123.68, 116.779, 103.939 and dividing by 58.393, 57.12, 57.375"
PAPER_MEAN = (123.68 / 255, 116.779 / 255, 103.939 / 255)
PAPER_STD = (58.393 / 255, 57.12 / 255, 57.375 / 255)


class BottleneckV1(Bottleneck):
    """Original ResNet bottleneck (paper Figure 1, "ResNet-50" in Table 5): stride on the first 1x1 conv of path A.

    The 1x1 conv with stride 2 skips three quarters of the input feature map, which ResNet-B (section 4.1) fixes by
    moving the stride to the 3x3 conv. Parameters and state-dict keys are those of timm's ``Bottleneck``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get('aa_layer') is not None:
            raise ValueError('BottleneckV1 (stride on the 1x1 conv) does not support anti-aliasing (aa_layer).')
        super().__init__(*args, **kwargs)
        self.conv1.stride = (self.stride, self.stride)
        self.conv2.stride = (1, 1)


class BotResNet(ResNet):
    """timm's ResNet with the paper's weight initialization selectable (section 2, "Baseline Training Procedure").

    Args:
        weight_init: ``'xavier'`` (default, the paper: conv and FC weights ~ U[-a, a], a = sqrt(6 / (fan_in +
            fan_out)), biases 0, BN gamma 1 and beta 0) or ``'timm'`` (timm's Kaiming-normal fan-out convs).
        **kwargs: everything timm's :class:`~timm.models.resnet.ResNet` takes, incl. ``zero_init_last``.
    """

    def __init__(self, *args: Any, weight_init: str = 'xavier', **kwargs: Any) -> None:
        if weight_init not in WEIGHT_INITS:
            raise ValueError(f'weight_init={weight_init!r} is not one of {WEIGHT_INITS}')
        super().__init__(*args, **kwargs)
        if weight_init == 'xavier':
            xavier_init_(self)
            if kwargs.get('zero_init_last', True):
                self.init_weights_zero_last()

    def init_weights_zero_last(self) -> None:
        """Zero-gamma (section 3.1) through timm's per-block ``zero_init_last`` hooks."""
        for m in self.modules():
            if hasattr(m, 'zero_init_last'):
                m.zero_init_last()


# The tweak -> timm ResNet kwargs table of the module docstring.
_TWEAKS: dict[str, dict[str, Any]] = {
    '': dict(),
    'b': dict(),
    'c': dict(stem_width=32, stem_type='deep'),
    'd': dict(stem_width=32, stem_type='deep', avg_down=True),
}


def _create_bot_resnet(variant: str, pretrained: bool, tweak: str, bottleneck: bool, **kwargs: Any) -> BotResNet:
    block = Bottleneck if bottleneck else BasicBlock
    if bottleneck and tweak == '':
        block = BottleneckV1
    model_args = dict(block=block, **_TWEAKS[tweak])
    return build_model_with_cfg(BotResNet, variant, pretrained, **dict(model_args, **kwargs))


def _cfg(**kwargs: Any) -> dict[str, Any]:
    """Paper evaluation preprocessing (section 2): resize the short side to 256, center-crop 224, paper mean/std."""
    return {
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 224 / 256, 'crop_mode': 'center', 'interpolation': 'bilinear',
        'mean': PAPER_MEAN, 'std': PAPER_STD,
        'first_conv': 'conv1', 'classifier': 'fc',
        'paper_ids': 'arXiv:1812.01187', 'license': 'apache-2.0',
        **kwargs,
    }


def _gluon(arch: str, **kwargs: Any) -> dict[str, Any]:
    """The paper authors' own GluonCV weights, as ported to the Hub by timm (``timm/{arch}.gluon_in1k``)."""
    return _cfg(hf_hub_id=f'timm/{arch}.gluon_in1k', origin_url='https://cv.gluon.ai/model_zoo/classification.html',
                **kwargs)


_TINY_CFG = dict(input_size=(3, 32, 32), pool_size=(1, 1), crop_pct=1.0, num_classes=10)

default_cfgs = generate_default_cfgs({
    # Basic blocks: no B variant (see module docstring). GluonCV v1b weights are the torchvision-style ResNet.
    'resnet18_bot.gluon_in1k': _gluon('resnet18'),
    'resnet18c_bot': _cfg(first_conv='conv1.0'),
    'resnet18d_bot': _cfg(first_conv='conv1.0'),
    'resnet34_bot.gluon_in1k': _gluon('resnet34'),
    'resnet34c_bot': _cfg(first_conv='conv1.0'),
    'resnet34d_bot': _cfg(first_conv='conv1.0'),
    # Bottlenecks. The original (v1) GluonCV weights were never ported to timm: no pretrained tag.
    'resnet50_bot': _cfg(),
    'resnet101_bot': _cfg(),
    'resnet152_bot': _cfg(),
    'resnet50b_bot.gluon_in1k': _gluon('resnet50'),
    'resnet101b_bot.gluon_in1k': _gluon('resnet101'),
    'resnet152b_bot.gluon_in1k': _gluon('resnet152'),
    'resnet50c_bot.gluon_in1k': _gluon('resnet50c', first_conv='conv1.0'),
    'resnet101c_bot.gluon_in1k': _gluon('resnet101c', first_conv='conv1.0'),
    'resnet152c_bot.gluon_in1k': _gluon('resnet152c', first_conv='conv1.0'),
    'resnet50d_bot.gluon_in1k': _gluon('resnet50d', first_conv='conv1.0'),
    'resnet101d_bot.gluon_in1k': _gluon('resnet101d', first_conv='conv1.0'),
    'resnet152d_bot.gluon_in1k': _gluon('resnet152d', first_conv='conv1.0'),
    # Not from the paper: narrow variants for 32x32 CPU experiments.
    'resnet18d_tiny_bot': _cfg(first_conv='conv1.0', **_TINY_CFG),
    'resnet26_tiny_bot': _cfg(**_TINY_CFG),
    'resnet26b_tiny_bot': _cfg(**_TINY_CFG),
    'resnet26c_tiny_bot': _cfg(first_conv='conv1.0', **_TINY_CFG),
    'resnet26d_tiny_bot': _cfg(first_conv='conv1.0', **_TINY_CFG),
})


_BASIC = dict(bottleneck=False)
_BOTTLENECK = dict(bottleneck=True)
_DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
# Tiny: the paper's stems (64 channels out), 1/4 of its stage widths (16..128), two blocks per stage.
_TINY = dict(channels=(16, 32, 64, 128), layers=(2, 2, 2, 2))


def _make(depth: int, tweak: str, pretrained: bool, **kwargs: Any) -> BotResNet:
    args = dict(layers=_DEPTHS[depth], **(_BOTTLENECK if depth >= 50 else _BASIC))
    return _create_bot_resnet(f'resnet{depth}{tweak}_bot', pretrained, tweak, **dict(args, **kwargs))


def _make_tiny(name: str, tweak: str, bottleneck: bool, pretrained: bool, **kwargs: Any) -> BotResNet:
    args = dict(_TINY, bottleneck=bottleneck)
    return _create_bot_resnet(name, pretrained, tweak, **dict(args, **kwargs))


@register_model
def resnet18_bot(pretrained: bool = False, **kwargs: Any) -> BotResNet:
    """ResNet-18, original = ResNet-B for basic blocks (section 4.1)."""
    return _make(18, '', pretrained, **kwargs)


@register_model
def resnet18c_bot(pretrained: bool = False, **kwargs: Any) -> BotResNet:
    """ResNet-18-C: three 3x3 stem convs (section 4.2)."""
    return _make(18, 'c', pretrained, **kwargs)


@register_model
def resnet18d_bot(pretrained: bool = False, **kwargs: Any) -> BotResNet:
    """ResNet-18-D: C + avg-pool shortcut downsampling (section 4.2)."""
    return _make(18, 'd', pretrained, **kwargs)


@register_model
def resnet34_bot(pretrained: bool = False, **kwargs: Any) -> BotResNet:
    """ResNet-34, original = ResNet-B for basic blocks (section 4.1)."""
    return _make(34, '', pretrained, **kwargs)


@register_model
def resnet34c_bot(pretrained: bool = False, **kwargs: Any) -> BotResNet:
    """ResNet-34-C (section 4.2)."""
    return _make(34, 'c', pretrained, **kwargs)


@register_model
def resnet34d_bot(pretrained: bool = False, **kwargs: Any) -> BotResNet:
    """ResNet-34-D (section 4.2)."""
    return _make(34, 'd', pretrained, **kwargs)


@register_model
def resnet50_bot(pretrained: bool = False, **kwargs: Any) -> BotResNet:
    """ResNet-50, original: stride on the 1x1 conv of path A (Table 5: 25M params, 3.8 GFLOPs)."""
    return _make(50, '', pretrained, **kwargs)


@register_model
def resnet50b_bot(pretrained: bool = False, **kwargs: Any) -> BotResNet:
    """ResNet-50-B: stride on the 3x3 conv (Table 5: 76.66% top-1)."""
    return _make(50, 'b', pretrained, **kwargs)


@register_model
def resnet50c_bot(pretrained: bool = False, **kwargs: Any) -> BotResNet:
    """ResNet-50-C: deep stem (Table 5: 76.87% top-1)."""
    return _make(50, 'c', pretrained, **kwargs)


@register_model
def resnet50d_bot(pretrained: bool = False, **kwargs: Any) -> BotResNet:
    """ResNet-50-D: C + avg-pool shortcut (Table 5: 77.16% top-1, 4.3 GFLOPs)."""
    return _make(50, 'd', pretrained, **kwargs)


@register_model
def resnet101_bot(pretrained: bool = False, **kwargs: Any) -> BotResNet:
    """ResNet-101, original (stride on the 1x1 conv)."""
    return _make(101, '', pretrained, **kwargs)


@register_model
def resnet101b_bot(pretrained: bool = False, **kwargs: Any) -> BotResNet:
    """ResNet-101-B."""
    return _make(101, 'b', pretrained, **kwargs)


@register_model
def resnet101c_bot(pretrained: bool = False, **kwargs: Any) -> BotResNet:
    """ResNet-101-C."""
    return _make(101, 'c', pretrained, **kwargs)


@register_model
def resnet101d_bot(pretrained: bool = False, **kwargs: Any) -> BotResNet:
    """ResNet-101-D."""
    return _make(101, 'd', pretrained, **kwargs)


@register_model
def resnet152_bot(pretrained: bool = False, **kwargs: Any) -> BotResNet:
    """ResNet-152, original (stride on the 1x1 conv)."""
    return _make(152, '', pretrained, **kwargs)


@register_model
def resnet152b_bot(pretrained: bool = False, **kwargs: Any) -> BotResNet:
    """ResNet-152-B."""
    return _make(152, 'b', pretrained, **kwargs)


@register_model
def resnet152c_bot(pretrained: bool = False, **kwargs: Any) -> BotResNet:
    """ResNet-152-C."""
    return _make(152, 'c', pretrained, **kwargs)


@register_model
def resnet152d_bot(pretrained: bool = False, **kwargs: Any) -> BotResNet:
    """ResNet-152-D, the distillation teacher of section 5.3."""
    return _make(152, 'd', pretrained, **kwargs)


@register_model
def resnet18d_tiny_bot(pretrained: bool = False, **kwargs: Any) -> BotResNet:
    """Not from the paper: ResNet-18-D at 1/4 width (~0.7M params) for 32x32 CPU experiments."""
    return _make_tiny('resnet18d_tiny_bot', 'd', False, pretrained, **kwargs)


@register_model
def resnet26_tiny_bot(pretrained: bool = False, **kwargs: Any) -> BotResNet:
    """Not from the paper: original bottleneck ResNet-26 at 1/4 width, for the CPU ablation ladder."""
    return _make_tiny('resnet26_tiny_bot', '', True, pretrained, **kwargs)


@register_model
def resnet26b_tiny_bot(pretrained: bool = False, **kwargs: Any) -> BotResNet:
    """Not from the paper: ResNet-26-B at 1/4 width."""
    return _make_tiny('resnet26b_tiny_bot', 'b', True, pretrained, **kwargs)


@register_model
def resnet26c_tiny_bot(pretrained: bool = False, **kwargs: Any) -> BotResNet:
    """Not from the paper: ResNet-26-C at 1/4 width."""
    return _make_tiny('resnet26c_tiny_bot', 'c', True, pretrained, **kwargs)


@register_model
def resnet26d_tiny_bot(pretrained: bool = False, **kwargs: Any) -> BotResNet:
    """Not from the paper: ResNet-26-D at 1/4 width."""
    return _make_tiny('resnet26d_tiny_bot', 'd', True, pretrained, **kwargs)
