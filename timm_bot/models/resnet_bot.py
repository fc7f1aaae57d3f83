"""The ResNets of *Bag of Tricks* (He et al., 2019), section 4, Figure 2, Table 5, as timm's own ``ResNet``."""
import re
from collections.abc import Callable
from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

__all__ = ['BottleneckV1', 'MODELS', 'PAPER_MEAN', 'PAPER_STD']

PAPER_MEAN = (123.68 / 255, 116.779 / 255, 103.939 / 255)  # section 2, on the [0, 1] scale
PAPER_STD = (58.393 / 255, 57.12 / 255, 57.375 / 255)


class BottleneckV1(Bottleneck):
    """The original bottleneck (Figure 2a): strides its first 1x1 conv, where timm's (ResNet-B) strides the 3x3."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conv1.stride, self.conv2.stride = (self.stride, self.stride), (1, 1)


_NAME = re.compile(r'resnet(\d+)([bcd]?)_(tiny_)?bot')  # depth, tweak (section 4), tiny (1/4 width, not in the paper)
_LAYERS = {18: (2,) * 4, 26: (2,) * 4, 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


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


def _create(variant: str, pretrained: bool, **kwargs: Any) -> ResNet:
    depth, tweak, tiny = _NAME.fullmatch(variant).groups()
    block = BasicBlock if depth in ('18', '34') else Bottleneck if tweak else BottleneckV1
    stem = dict(stem_width=32, stem_type='deep', avg_down=tweak == 'd') if tweak in ('c', 'd') else {}
    args = dict(block=block, layers=_LAYERS[int(depth)], channels=(16, 32, 64, 128) if tiny else (64, 128, 256, 512))
    return build_model_with_cfg(ResNet, variant, pretrained, **{**args, **stem, **kwargs})


MODELS = {  # every registered name and its docstring (section 4, Figure 2, Table 5)
    'resnet18_bot': 'ResNet-18 (basic blocks: original = ResNet-B, 4.1).', 'resnet18c_bot': 'ResNet-18-C (4.2).',
    'resnet18d_bot': 'ResNet-18-D (4.2).', 'resnet34_bot': 'ResNet-34 (basic blocks: original = ResNet-B, 4.1).',
    'resnet34c_bot': 'ResNet-34-C (4.2).', 'resnet34d_bot': 'ResNet-34-D (4.2).',
    'resnet50_bot': 'ResNet-50, original bottleneck (Table 5: 25M params, 3.8 GFLOPs, 76.21%).',
    'resnet50b_bot': 'ResNet-50-B: stride on the 3x3 conv (Table 5: 76.66%).',
    'resnet50c_bot': 'ResNet-50-C: three 3x3 stem convs (Table 5: 76.87%).',
    'resnet50d_bot': 'ResNet-50-D: C + avg-pool shortcut downsampling (Table 5: 4.3 GFLOPs, 77.16%).',
    'resnet101_bot': 'ResNet-101, original bottleneck (4).', 'resnet101b_bot': 'ResNet-101-B (4.1).',
    'resnet101c_bot': 'ResNet-101-C (4.2).', 'resnet101d_bot': 'ResNet-101-D (4.2).',
    'resnet152_bot': 'ResNet-152, original bottleneck (4).', 'resnet152b_bot': 'ResNet-152-B (4.1).',
    'resnet152c_bot': 'ResNet-152-C (4.2).', 'resnet152d_bot': 'ResNet-152-D, the distillation teacher (5.3).',
    'resnet18d_tiny_bot': 'Not in the paper: ResNet-18-D at 1/4 width for 32x32 CPU runs.',
    'resnet26_tiny_bot': 'Not in the paper: original ResNet-26 at 1/4 width (the CPU ablation ladder).',
    'resnet26b_tiny_bot': 'Not in the paper: ResNet-26-B at 1/4 width.',
    'resnet26c_tiny_bot': 'Not in the paper: ResNet-26-C at 1/4 width.',
    'resnet26d_tiny_bot': 'Not in the paper: ResNet-26-D at 1/4 width.',
}


def _entrypoint(variant: str, doc: str) -> Callable[..., ResNet]:
    """``def variant(pretrained=False, **kwargs)`` as timm's model files write each one, for ``@register_model``."""
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> ResNet:
        return _create(variant, pretrained, **kwargs)
    entrypoint.__name__ = entrypoint.__qualname__ = variant
    entrypoint.__doc__ = doc
    return entrypoint


default_cfgs = generate_default_cfgs({f'{v}.gluon_in1k' if 'hf_hub_id' in _cfg(v) else v: _cfg(v) for v in MODELS})

for _variant, _doc in MODELS.items():  # timm.create_model('resnet50d_bot'), ...; also importable from here
    globals()[_variant] = register_model(_entrypoint(_variant, _doc))
