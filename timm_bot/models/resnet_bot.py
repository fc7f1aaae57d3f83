"""The ResNets of *Bag of Tricks* (He et al., 2019), section 4, Figure 2, Table 5, as timm's own ``ResNet``."""
import re
from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

__all__ = ['BottleneckV1', 'PAPER_MEAN', 'PAPER_STD']

PAPER_MEAN = (123.68 / 255, 116.779 / 255, 103.939 / 255)  # section 2, on the [0, 1] scale
PAPER_STD = (58.393 / 255, 57.12 / 255, 57.375 / 255)


class BottleneckV1(Bottleneck):
    """The original bottleneck (Figure 2a): strides its first 1x1 conv, where timm's (ResNet-B) strides the 3x3."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conv1.stride, self.conv2.stride = (self.stride, self.stride), (1, 1)


_NAME = re.compile(r'resnet(\d+)([bcd]?)_(tiny_)?bot')  # depth, tweak (section 4), tiny (1/4 width, not in the paper)
_LAYERS = {18: (2,) * 4, 26: (2,) * 4, 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
_VARIANTS = [f'resnet{d}{t}_bot' for d in (18, 34, 50, 101, 152) for t in ('', 'b', 'c', 'd') if d > 34 or t != 'b']
_VARIANTS += ['resnet18d_tiny_bot'] + [f'resnet26{t}_tiny_bot' for t in ('', 'b', 'c', 'd')]


def _cfg(variant: str) -> dict[str, Any]:
    """Section 2 evaluation: timm's default resize 256 / center crop 224, bilinear, the paper's mean/std."""
    depth, tweak, tiny = _NAME.fullmatch(variant).groups()
    cfg = dict(pool_size=(7, 7), interpolation='bilinear', mean=PAPER_MEAN, std=PAPER_STD, license='apache-2.0',
               first_conv='conv1.0' if tweak in ('c', 'd') else 'conv1', classifier='fc', paper_ids='arXiv:1812.01187')
    if tiny:
        cfg.update(input_size=(3, 32, 32), pool_size=(1, 1), crop_pct=1.0, num_classes=10)
    elif (int(depth) < 50) == (tweak == ''):  # the authors' GluonCV weights ported by timm (none for v1 bottlenecks)
        cfg.update(hf_hub_id=f"timm/resnet{depth}{tweak.strip('b')}.gluon_in1k",
                   origin_url='https://cv.gluon.ai/model_zoo/classification.html')
    return cfg


default_cfgs = generate_default_cfgs({f'{v}.gluon_in1k' if 'hf_hub_id' in _cfg(v) else v: _cfg(v) for v in _VARIANTS})


def _create(variant: str, pretrained: bool, **kwargs: Any) -> ResNet:
    depth, tweak, tiny = _NAME.fullmatch(variant).groups()
    block = BasicBlock if depth in ('18', '34') else Bottleneck if tweak else BottleneckV1
    stem = dict(stem_width=32, stem_type='deep', avg_down=tweak == 'd') if tweak in ('c', 'd') else {}
    args = dict(block=block, layers=_LAYERS[int(depth)], channels=(16, 32, 64, 128) if tiny else (64, 128, 256, 512))
    return build_model_with_cfg(ResNet, variant, pretrained, **{**args, **stem, **kwargs})


@register_model
def resnet18_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-18 (basic blocks: original = ResNet-B, section 4.1)."""
    return _create('resnet18_bot', pretrained, **kwargs)

@register_model
def resnet18c_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-18-C: three 3x3 stem convs (section 4.2)."""
    return _create('resnet18c_bot', pretrained, **kwargs)

@register_model
def resnet18d_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-18-D: C + avg-pool shortcut downsampling (section 4.2)."""
    return _create('resnet18d_bot', pretrained, **kwargs)

@register_model
def resnet34_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-34 (basic blocks: original = ResNet-B, section 4.1)."""
    return _create('resnet34_bot', pretrained, **kwargs)

@register_model
def resnet34c_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-34-C (section 4.2)."""
    return _create('resnet34c_bot', pretrained, **kwargs)

@register_model
def resnet34d_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-34-D (section 4.2)."""
    return _create('resnet34d_bot', pretrained, **kwargs)

@register_model
def resnet50_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-50, original bottleneck (Table 5: 25M params, 3.8 GFLOPs, 76.21%)."""
    return _create('resnet50_bot', pretrained, **kwargs)

@register_model
def resnet50b_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-50-B: stride on the 3x3 conv (Table 5: 76.66%)."""
    return _create('resnet50b_bot', pretrained, **kwargs)

@register_model
def resnet50c_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-50-C: deep stem (Table 5: 76.87%)."""
    return _create('resnet50c_bot', pretrained, **kwargs)

@register_model
def resnet50d_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-50-D: C + avg-pool shortcut (Table 5: 4.3 GFLOPs, 77.16%)."""
    return _create('resnet50d_bot', pretrained, **kwargs)

@register_model
def resnet101_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-101, original bottleneck (section 4)."""
    return _create('resnet101_bot', pretrained, **kwargs)

@register_model
def resnet101b_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-101-B (section 4.1)."""
    return _create('resnet101b_bot', pretrained, **kwargs)

@register_model
def resnet101c_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-101-C (section 4.2)."""
    return _create('resnet101c_bot', pretrained, **kwargs)

@register_model
def resnet101d_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-101-D (section 4.2)."""
    return _create('resnet101d_bot', pretrained, **kwargs)

@register_model
def resnet152_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-152, original bottleneck (section 4)."""
    return _create('resnet152_bot', pretrained, **kwargs)

@register_model
def resnet152b_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-152-B (section 4.1)."""
    return _create('resnet152b_bot', pretrained, **kwargs)

@register_model
def resnet152c_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-152-C (section 4.2)."""
    return _create('resnet152c_bot', pretrained, **kwargs)

@register_model
def resnet152d_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-152-D, the distillation teacher (section 5.3)."""
    return _create('resnet152d_bot', pretrained, **kwargs)

@register_model
def resnet18d_tiny_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """Not in the paper: ResNet-18-D at 1/4 width for 32x32 CPU runs."""
    return _create('resnet18d_tiny_bot', pretrained, **kwargs)

@register_model
def resnet26_tiny_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """Not in the paper: original-bottleneck ResNet-26 at 1/4 width (CPU ablation ladder)."""
    return _create('resnet26_tiny_bot', pretrained, **kwargs)

@register_model
def resnet26b_tiny_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """Not in the paper: ResNet-26-B at 1/4 width."""
    return _create('resnet26b_tiny_bot', pretrained, **kwargs)

@register_model
def resnet26c_tiny_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """Not in the paper: ResNet-26-C at 1/4 width."""
    return _create('resnet26c_tiny_bot', pretrained, **kwargs)

@register_model
def resnet26d_tiny_bot(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """Not in the paper: ResNet-26-D at 1/4 width."""
    return _create('resnet26d_tiny_bot', pretrained, **kwargs)
