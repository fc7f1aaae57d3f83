"""Section 4 ResNets (Figure 2, Table 5) in timm's factory; Xavier init (2) and zero-gamma (3.1) on any model."""
import pytest
import timm
import torch
import torch.nn as nn
import torchvision
from timm.layers import set_scriptable
from timm.models import get_pretrained_cfg
from torch.utils.flop_counter import FlopCounterMode

from timm_bot.models import PAPER_MEAN, PAPER_STD, BottleneckV1, xavier_init_, zero_gamma_

BN = nn.modules.batchnorm._BatchNorm


def test_registered_family_and_cfgs():
    expected = {f'resnet{d}{t}_bot' for d in (50, 101, 152) for t in ('', 'b', 'c', 'd')}
    expected |= {f'resnet{d}{t}_bot' for d in (18, 34) for t in ('', 'c', 'd')}
    expected |= {'resnet18d_tiny_bot'} | {f'resnet26{t}_tiny_bot' for t in ('', 'b', 'c', 'd')}
    assert set(timm.list_models('*_bot')) == expected  # no resnet18b/34b: B is the original for basic blocks
    for name in expected:
        cfg = get_pretrained_cfg(name)
        assert (cfg.mean, cfg.std) == (PAPER_MEAN, PAPER_STD)
        assert cfg.first_conv == ('conv1.0' if name.split('_')[0][-1] in 'cd' else 'conv1'), name
        if 'tiny' not in name:  # section 2 evaluation: resize 256, center crop 224, bilinear
            assert (cfg.input_size, cfg.crop_pct, cfg.interpolation) == ((3, 224, 224), 0.875, 'bilinear')
    # pretrained=True gives the authors' GluonCV weights (timm's ports) where they exist
    assert get_pretrained_cfg('resnet50d_bot').hf_hub_id == 'timm/resnet50d.gluon_in1k'
    assert get_pretrained_cfg('resnet50b_bot').hf_hub_id == 'timm/resnet50.gluon_in1k'
    assert not get_pretrained_cfg('resnet50_bot').has_weights


@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated')
@pytest.mark.parametrize('name, size', [('resnet50_bot', 64), ('resnet18d_tiny_bot', 32)])
def test_timm_model_contract(name, size):
    """timm's tests/test_models.py checks: default cfg, forward_features/head, reset_classifier, features_only,
    torchscript."""
    model = timm.create_model(name).eval()
    cfg = model.pretrained_cfg
    assert {cfg['first_conv'] + '.weight', cfg['classifier'] + '.weight'} <= set(model.state_dict())
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, model.num_features, size // 32, size // 32)
        assert torch.equal(model.forward_head(feats), model(x))
        model.reset_classifier(5)
        assert model(x).shape == (2, 5)
        model.reset_classifier(0)
        assert model(x).shape == (2, model.num_features)
    features = timm.create_model(name, features_only=True).eval()
    assert features.feature_info.reduction() == [2, 4, 8, 16, 32]
    outs = features(x)
    assert [o.shape[1:] for o in outs] == [(c, size // r, size // r) for c, r in
                                          zip(features.feature_info.channels(), features.feature_info.reduction())]
    with set_scriptable(True):
        model = timm.create_model(name).eval()
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(model)(x), model(x))


def _macs(model: nn.Module) -> float:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(torch.randn(1, 3, 224, 224))
    return counter.get_total_flops() / 2e9


@pytest.mark.parametrize('name, gmacs', [('resnet50_bot', 3.86), ('resnet50d_bot', 4.35)])
def test_table5_params_and_macs(name, gmacs):
    """Table 5: 25.6M parameters; 3.8 (3.86) and 4.3 (4.35) G multiply-adds for ResNet-50 and ResNet-50-D."""
    model = timm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(25.6, rel=0.01)
    assert _macs(model) == pytest.approx(gmacs, rel=0.01)


@pytest.mark.parametrize('ours, theirs', [('resnet50b_bot', 'resnet50'), ('resnet50c_bot', 'resnet50c'),
                                          ('resnet50d_bot', 'resnet50d'), ('resnet152d_bot', 'resnet152d')])
def test_identical_to_timm_given_same_weights(ours, theirs):
    """B, C, D are timm's resnet50/50c/50d (so the authors' GluonCV ports load unchanged)."""
    reference = timm.create_model(theirs).eval()
    model = timm.create_model(ours).eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_bottleneck_v1_strides_the_1x1_conv():
    """Figure 2a: the original strides the first 1x1 conv of path A, ResNet-B the 3x3; nothing else differs."""
    original, tweak_b = timm.create_model('resnet50_bot'), timm.create_model('resnet50b_bot')
    blocks = [(n, m) for n, m in original.named_modules() if isinstance(m, BottleneckV1)]
    assert len(blocks) == 16
    strided = [n for n, m in blocks if m.stride == 2]
    assert strided == ['layer2.0', 'layer3.0', 'layer4.0']
    for name, block in blocks:
        b = tweak_b.get_submodule(name)
        assert (block.conv1.stride, block.conv2.stride) == (((2, 2), (1, 1)) if name in strided else ((1, 1),) * 2)
        assert (b.conv1.stride, b.conv2.stride) == (((1, 1), (2, 2)) if name in strided else ((1, 1),) * 2)
    original.load_state_dict(tweak_b.state_dict(), strict=True)
    zero_gamma_(original, 1.0), zero_gamma_(tweak_b, 1.0)  # zero-gamma would hide the branches
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(original.eval()(x), tweak_b.eval()(x))


def test_xavier_init_any_model():
    """Section 2: conv/FC weights ~ U[-a, a], a = sqrt(6 / (fan_in + fan_out)); biases 0; BN gamma 1, beta 0."""
    torch.manual_seed(0)
    model = timm.create_model('resnet18d')  # timm's own model: Kaiming normal, zero_init_last
    conv = model.layer3[0].conv2  # 256 x 256 x 3 x 3: fan_in = fan_out = 2304
    assert conv.weight.std().item() == pytest.approx((2 / 2304) ** 0.5, rel=0.02)  # timm's Kaiming
    assert xavier_init_(model) is model
    for layer in (conv, model.fc):
        fan_in, fan_out = layer.weight[0].numel(), layer.weight.shape[0] * layer.weight[0, 0].numel()
        bound = (6 / (fan_in + fan_out)) ** 0.5
        assert layer.weight.abs().max().item() <= bound
        assert layer.weight.std().item() == pytest.approx(bound / 3 ** 0.5, rel=0.02)  # std of U[-a, a]
    assert torch.count_nonzero(model.fc.bias) == 0
    for bn in (m for m in model.modules() if isinstance(m, BN)):  # also undoes zero_init_last
        assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and torch.count_nonzero(bn.bias) == 0


def _act(block: nn.Module) -> nn.Module:
    return next(getattr(block, n) for n in ('act3', 'act2', 'relu') if hasattr(block, n))


def _resnet_shortcut(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return _act(block)(block.downsample(x) if block.downsample is not None else x)


ZERO_GAMMA_CASES = {  # model -> (its residual blocks, what a block outputs once its branch is zero)
    'resnet18d': (lambda m: m.modules(), timm.models.resnet.BasicBlock, _resnet_shortcut),
    'resnet50d_bot': (lambda m: m.modules(), timm.models.resnet.Bottleneck, _resnet_shortcut),
    'tv_resnet18': (lambda m: m.modules(), torchvision.models.resnet.BasicBlock, _resnet_shortcut),
    'regnetx_002': (lambda m: m.modules(), timm.models.regnet.Bottleneck, _resnet_shortcut),
    'regnetz_005': (lambda m: (b for b in m.modules() if getattr(b, 'downsample', None) is not None),
                    timm.models.regnet.Bottleneck, _resnet_shortcut),  # None: no shortcut, must stay untouched
    'mobilenetv3_small_050': (lambda m: (b for b in m.modules() if getattr(b, 'has_skip', False)), nn.Module,
                              lambda b, x: x),
    'mobilenetv3_large_100': (lambda m: (b for b in m.modules() if getattr(b, 'has_skip', False)), nn.Module,
                              lambda b, x: x),  # its first block: a DepthwiseSeparableConv with skip
    'mobilenetv3_rw': (lambda m: (b for b in m.modules() if getattr(b, 'has_skip', False)), nn.Module,
                       lambda b, x: x),  # its first block: 16 -> 16 channels, stride 1, but no skip
}


@pytest.mark.parametrize('name', list(ZERO_GAMMA_CASES))
def test_zero_gamma_makes_every_residual_block_its_shortcut(name):
    """Section 3.1: after zero_gamma_ every block with a skip connection outputs exactly its shortcut path; no other
    BN is touched (a block without a skip would lose its signal). value=1 undoes it."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18() if name == 'tv_resnet18' else timm.create_model(name)
    zero_gamma_(model, 1.0)  # undo timm's zero_init_last
    iterate, kind, expected = ZERO_GAMMA_CASES[name]
    blocks = [b for b in iterate(model) if isinstance(b, kind)]
    assert zero_gamma_(model) == len(blocks) > 0
    zeroed = [m for m in model.modules() if isinstance(m, BN) and torch.count_nonzero(m.weight) == 0]
    assert len(zeroed) == len(blocks)
    io = {}
    for block in blocks:
        block.register_forward_hook(lambda b, i, o: io.setdefault(b, (i[0].clone(), o.clone())) and None)
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, 64, 64))
    assert len(io) == len(blocks)
    for block, (x, out) in io.items():
        with torch.no_grad():
            assert torch.equal(out, expected(block, x)), type(block).__name__
    assert zero_gamma_(model, 1.0) == len(blocks)
    assert all(torch.count_nonzero(bn.weight) == bn.num_features for bn in zeroed)


def test_zero_gamma_finds_nothing_in_convnext_or_plain_nets():
    """ConvNeXt's branch ends in layer scale, not a BatchNorm: 0, and nothing changes (no exception)."""
    assert zero_gamma_(timm.create_model('dla34')) >= 0  # its blocks' ``shortcut`` is a bool: no crash
    model = timm.create_model('convnext_atto')
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert zero_gamma_(model) == 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert zero_gamma_(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())) == 0
