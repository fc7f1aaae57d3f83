"""The paper's ResNet family (section 4, Figure 2, Table 5) in timm's factory, held to timm's own model contract."""
import pytest
import timm
import torch
import torch.nn as nn
import torchvision
from timm.layers import set_scriptable
from torch.utils.flop_counter import FlopCounterMode

import timm_bot  # noqa: F401  (registers the models)
from timm_bot.models import PAPER_MEAN, PAPER_STD, BottleneckV1, zero_gamma_

BOT_MODELS = timm.list_models('*_bot')
PAPER_MODELS = [m for m in BOT_MODELS if 'tiny' not in m]


def _count(model: nn.Module, size: int = 224) -> tuple[float, float]:
    """(params in M, multiply-accumulates in G) measured by torch's FLOP counter (1 MAC = 2 FLOPs)."""
    params = sum(p.numel() for p in model.parameters()) / 1e6
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(torch.randn(1, 3, size, size))
    return params, counter.get_total_flops() / 2e9


def _small_input(model: nn.Module) -> torch.Tensor:
    return torch.randn(2, 3, 32, 32) if model.pretrained_cfg['input_size'][-1] == 32 else torch.randn(2, 3, 64, 64)


def test_registered_family():
    expected = {f'resnet{d}{t}_bot' for d in (50, 101, 152) for t in ('', 'b', 'c', 'd')}
    expected |= {f'resnet{d}{t}_bot' for d in (18, 34) for t in ('', 'c', 'd')}
    assert expected <= set(BOT_MODELS)
    # B is a no-op for basic blocks (stride already on a 3x3 conv): no duplicate registered.
    assert not {'resnet18b_bot', 'resnet34b_bot'} & set(BOT_MODELS)
    assert {'resnet18d_tiny_bot', 'resnet26_tiny_bot', 'resnet26d_tiny_bot'} <= set(BOT_MODELS)


@pytest.mark.parametrize('name', BOT_MODELS)
def test_forward_backward(name):
    model = timm.create_model(name, num_classes=7)
    x = _small_input(model)
    out = model(x)
    assert out.shape == (2, 7)
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f'parameters without gradient: {missing[:5]}'
    assert torch.isfinite(out).all()


@pytest.mark.parametrize('name', BOT_MODELS)
def test_timm_default_cfg_contract(name):
    """The checks of timm's tests/test_models.py::test_model_default_cfgs."""
    model = timm.create_model(name).eval()
    cfg = model.pretrained_cfg
    for key in ('num_classes', 'input_size', 'pool_size', 'crop_pct', 'interpolation', 'mean', 'std',
                'first_conv', 'classifier'):
        assert key in cfg, key
    assert cfg['mean'] == pytest.approx(PAPER_MEAN) and cfg['std'] == pytest.approx(PAPER_STD)
    if 'tiny' not in name:  # paper section 2: resize 256, center crop 224, bilinear
        assert cfg['input_size'] == (3, 224, 224) and cfg['crop_pct'] == 0.875 and cfg['interpolation'] == 'bilinear'
    state_dict = model.state_dict()
    assert cfg['first_conv'] + '.weight' in state_dict
    assert cfg['classifier'] + '.weight' in state_dict

    # timm checks at the default resolution; the 101/152-layer models at 64px (pool 2x2) keep CI within budget.
    input_size, pool_size = cfg['input_size'], cfg['pool_size']
    if any(d in name for d in ('101', '152')):
        input_size, pool_size = (3, 64, 64), (2, 2)
    x = torch.randn(1, *input_size)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape[-2:] == pool_size
        assert torch.equal(model.forward_head(feats), model(x))
        model.reset_classifier(0)
        assert model(x).shape == (1, model.num_features)
        model.reset_classifier(0, '')
        assert model(x).shape[-2:] == pool_size


@pytest.mark.parametrize('name', ['resnet50_bot', 'resnet50d_bot', 'resnet18d_bot', 'resnet26_tiny_bot'])
def test_features_only(name):
    """Backbone use (transfer learning, section 6): five levels at reductions 2..32 with the right widths."""
    model = timm.create_model(name, features_only=True).eval()
    assert model.feature_info.reduction() == [2, 4, 8, 16, 32]
    size = 64
    outs = model(torch.randn(1, 3, size, size))
    assert [o.shape[1] for o in outs] == model.feature_info.channels()
    assert [o.shape[-1] for o in outs] == [size // r for r in model.feature_info.reduction()]


@pytest.mark.parametrize('name', ['resnet50_bot', 'resnet50d_bot', 'resnet18d_tiny_bot'])
def test_torchscript(name):
    with set_scriptable(True):
        model = timm.create_model(name).eval()
    scripted = torch.jit.script(model)
    x = _small_input(model)
    with torch.no_grad():
        assert torch.allclose(scripted(x), model(x), atol=1e-5)


def test_table5_params_and_macs():
    """Table 5: ResNet-50 3.8 GFLOPs (3.86 G multiply-adds), ResNet-50-D 4.35 G, all ~25.6M params; B, C between."""
    counts = {t: _count(timm.create_model(f'resnet50{t}_bot')) for t in ('', 'b', 'c', 'd')}
    assert counts[''][1] == pytest.approx(3.86, rel=0.01)
    assert counts['d'][1] == pytest.approx(4.35, rel=0.01)
    assert counts[''][1] < counts['b'][1] < counts['c'][1] <= counts['d'][1]
    for params, _ in counts.values():
        assert params == pytest.approx(25.6, rel=0.01)


@pytest.mark.parametrize('ours, theirs', [
    ('resnet50b_bot', 'resnet50'), ('resnet50c_bot', 'resnet50c'),
    ('resnet50d_bot', 'resnet50d'), ('resnet152d_bot', 'resnet152d')])
def test_identical_to_timm_given_same_weights(ours, theirs):
    """So the paper authors' GluonCV weights (timm's *.gluon_in1k ports) load into our models unchanged."""
    reference = timm.create_model(theirs).eval()
    model = timm.create_model(ours).eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_original_differs_from_b_only_in_stride_position():
    """Figure 2(a): ResNet-B moves the stride 2 of path A from the 1x1 conv to the 3x3 conv; nothing else changes."""
    original = timm.create_model('resnet50_bot', zero_init_last=False)  # zero-gamma would hide the branches
    tweak_b = timm.create_model('resnet50b_bot', zero_init_last=False)
    assert {k: v.shape for k, v in original.state_dict().items()} == \
        {k: v.shape for k, v in tweak_b.state_dict().items()}
    strided = 0
    in_block = {f'{n}.{c}' for n, m in original.named_modules() if isinstance(m, BottleneckV1)
                for c in ('conv1', 'conv2')}
    for (name, m_orig), (_, m_b) in zip(original.named_modules(), tweak_b.named_modules()):
        if name in in_block:
            continue
        if isinstance(m_orig, BottleneckV1):
            if m_orig.stride == 2:
                strided += 1
                assert m_orig.conv1.stride == (2, 2) and m_orig.conv2.stride == (1, 1), name
                assert m_b.conv1.stride == (1, 1) and m_b.conv2.stride == (2, 2), name
            else:
                assert m_orig.conv1.stride == m_orig.conv2.stride == m_b.conv2.stride == (1, 1), name
        elif isinstance(m_orig, nn.Conv2d):
            assert m_orig.stride == m_b.stride, name
    assert strided == 3  # first block of stages 2, 3, 4
    # Same weights, different function: the stride position matters.
    original.load_state_dict(tweak_b.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(original.eval()(x), tweak_b.eval()(x))


def _blocks(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if hasattr(m, 'downsample')]


def _block_outputs_equal_shortcut(model: nn.Module) -> list[bool]:
    """Per block: does it output act(shortcut(x)) exactly, i.e. does its residual branch contribute zero?"""
    model.train()
    results = []
    for block in _blocks(model):
        x = torch.randn(2, block.conv1.in_channels, 16, 16)
        shortcut = block.downsample(x) if block.downsample is not None else x
        with torch.no_grad():
            results.append(torch.equal(block(x), torch.relu(shortcut)))
    return results


@pytest.mark.parametrize('name', ['resnet50d_bot', 'resnet26_tiny_bot', 'resnet18d_bot'])
@pytest.mark.parametrize('weight_init', ['xavier', 'timm'])
def test_zero_gamma_init(name, weight_init):
    """Section 3.1 zero-gamma: every residual branch contributes exactly zero at init; off -> it does not."""
    assert all(_block_outputs_equal_shortcut(timm.create_model(name, weight_init=weight_init)))
    assert not any(_block_outputs_equal_shortcut(
        timm.create_model(name, weight_init=weight_init, zero_init_last=False)))


def test_xavier_init_is_default_and_selectable():
    """Section 2: Xavier-uniform conv/FC weights, a = sqrt(6 / (fan_in + fan_out)); zero FC bias."""
    model = timm.create_model('resnet50_bot', zero_init_last=False)
    for conv in (model.layer3[0].conv2, model.fc):
        fan_in = conv.weight[0].numel()
        fan_out = conv.weight.shape[0] * conv.weight[0, 0].numel()
        bound = (6 / (fan_in + fan_out)) ** 0.5
        assert conv.weight.abs().max() <= bound
        assert conv.weight.std().item() == pytest.approx(bound / 3 ** 0.5, rel=0.05)  # std of U[-a, a]
    assert torch.count_nonzero(model.fc.bias) == 0
    kaiming = timm.create_model('resnet50_bot', weight_init='timm', zero_init_last=False)
    conv = kaiming.layer3[0].conv2  # timm: kaiming normal, fan_out, relu gain -> std sqrt(2 / fan_out)
    assert conv.weight.std().item() == pytest.approx((2 / (256 * 9)) ** 0.5, rel=0.05)
    with pytest.raises(ValueError, match='weight_init'):
        timm.create_model('resnet50_bot', weight_init='he')


def test_zero_gamma_helper_on_torchvision_and_timm():
    tv = torchvision.models.resnet50()
    assert zero_gamma_(tv) == 16
    assert all(torch.count_nonzero(b.bn3.weight) == 0 for b in _blocks(tv))
    assert all(torch.count_nonzero(b.bn2.weight) > 0 for b in _blocks(tv))  # only the last BN of the branch
    assert all(torch.count_nonzero(b.downsample[1].weight) > 0 for b in _blocks(tv) if b.downsample is not None)

    tv18 = torchvision.models.resnet18()
    assert zero_gamma_(tv18) == 8 and all(torch.count_nonzero(b.bn2.weight) == 0 for b in _blocks(tv18))

    model = timm.create_model('resnet50d', zero_init_last=False)
    assert not any(_block_outputs_equal_shortcut(model))
    assert zero_gamma_(model) == 16
    assert all(_block_outputs_equal_shortcut(model))


def test_zero_gamma_helper_refuses_non_residual_model():
    with pytest.raises(ValueError, match='no residual block'):
        zero_gamma_(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()))


def test_pretrained_tags_point_at_authors_gluon_weights():
    """pretrained=True gives the paper authors' GluonCV weights (timm's ports) where they exist."""
    for ours, hub_id in [('resnet50d_bot', 'timm/resnet50d.gluon_in1k'),
                         ('resnet152d_bot', 'timm/resnet152d.gluon_in1k'),
                         ('resnet50b_bot', 'timm/resnet50.gluon_in1k')]:
        assert timm.models.get_pretrained_cfg(ours).hf_hub_id == hub_id
        assert ours in timm.list_models(pretrained=True, filter=ours + '*') or \
            f'{ours}.gluon_in1k' in timm.list_models(pretrained=True)
    assert not timm.models.get_pretrained_cfg('resnet50_bot').has_weights  # v1 weights were never ported
