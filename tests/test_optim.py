"""Section 2 (NAG), section 3.1 (no bias decay, linear scaling): timm_bot.optim."""
import pytest
import timm
import torch
import torch.nn as nn
from timm.optim import create_optimizer_v2, get_optimizer_info, list_optimizers

import timm_bot  # noqa: F401  (registers the *_bot models)
from timm_bot.optim import create_paper_optimizer, decayed_parameter_names, linear_scaled_lr, resolve_lr

WD = 1e-4


def _paper_rule(model: nn.Module) -> tuple[set[str], set[str]]:
    """The paper's rule stated on module types: decay conv and FC weights, nothing else."""
    decayed = {f'{name}.weight' for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    every = {name for name, _ in model.named_parameters()}
    return decayed, every - decayed


@pytest.fixture(scope='module')
def resnet50d() -> nn.Module:
    return timm.create_model('resnet50d_bot', num_classes=10)


@pytest.fixture(scope='module')
def tiny() -> nn.Module:
    return timm.create_model('resnet18d_tiny_bot', num_classes=10)


@pytest.mark.parametrize('model_fixture', ['resnet50d', 'tiny'])
def test_decayed_names_are_conv_and_fc_weights(model_fixture: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(model_fixture)
    decayed, not_decayed = decayed_parameter_names(model)
    want_decayed, want_not = _paper_rule(model)
    assert set(decayed) == want_decayed
    assert set(not_decayed) == want_not
    assert 'fc.weight' in decayed and 'fc.bias' in not_decayed and 'bn1.weight' in not_decayed
    # Nothing decayed is a BN / bias parameter, everything not decayed is one.
    bn_or_bias = {f'{n}.{p}' for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)
                  for p in ('weight', 'bias')} | {n for n, _ in model.named_parameters() if n.endswith('.bias')}
    assert set(not_decayed) == bn_or_bias


def test_baseline_decays_everything(tiny: nn.Module) -> None:
    decayed, not_decayed = decayed_parameter_names(tiny, no_bias_decay=False)
    assert not_decayed == [] and decayed == [n for n, _ in tiny.named_parameters()]


def test_frozen_parameters_are_in_neither_list() -> None:
    model = timm.create_model('resnet18d_tiny_bot', num_classes=10)
    model.fc.requires_grad_(False)
    decayed, not_decayed = decayed_parameter_names(model)
    assert 'fc.weight' not in decayed + not_decayed and 'fc.bias' not in decayed + not_decayed


@pytest.mark.parametrize('model_fixture', ['resnet50d', 'tiny'])
def test_optimizer_groups_match_names(model_fixture: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(model_fixture)
    opt = create_paper_optimizer(model, lr=0.1, weight_decay=WD)
    wd_of = {id(p): g['weight_decay'] for g in opt.param_groups for p in g['params']}
    assert len(wd_of) == sum(len(g['params']) for g in opt.param_groups)  # each parameter once
    decayed, not_decayed = decayed_parameter_names(model)
    params = dict(model.named_parameters())
    assert all(wd_of[id(params[n])] == WD for n in decayed)
    assert all(wd_of[id(params[n])] == 0.0 for n in not_decayed)
    assert len(wd_of) == len(params)


def test_no_bias_decay_leaves_bn_and_bias_untouched_by_a_step(tiny: nn.Module) -> None:
    """With zero gradients only weight decay moves parameters: conv / FC weights shrink, BN and biases stay."""
    model = timm.create_model('resnet18d_tiny_bot', num_classes=10)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)  # zero-gamma / zero-bias init would hide a wrongly applied decay
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = create_paper_optimizer(model, lr=0.1, weight_decay=0.01)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    decayed, not_decayed = decayed_parameter_names(model)
    params = dict(model.named_parameters())
    # NAG first step: buf = wd*w, update = (wd*w + 0.9*buf) = 1.9*wd*w.
    for n in decayed:
        torch.testing.assert_close(params[n].detach(), before[n] * (1 - 0.1 * 1.9 * 0.01))
    for n in not_decayed:
        assert torch.equal(params[n].detach(), before[n]), n


def test_nag_is_sgd_nesterov_momentum_09(tiny: nn.Module) -> None:
    assert 'nag' in list_optimizers()
    assert get_optimizer_info('nag') is get_optimizer_info('nesterov')
    opt = create_optimizer_v2(tiny, 'nag', lr=0.1, weight_decay=WD)
    assert type(opt) is torch.optim.SGD
    assert len(opt.param_groups) == 2  # timm's filter_bias_and_bn=True default: no-decay + decay group
    for g in opt.param_groups:
        assert g['nesterov'] is True and g['momentum'] == 0.9 and g['lr'] == 0.1


def test_create_paper_optimizer_baseline_and_other_opts(tiny: nn.Module) -> None:
    opt = create_paper_optimizer(tiny, 'nag', 0.2, weight_decay=WD, no_bias_decay=False)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]['weight_decay'] == WD
    assert opt.param_groups[0]['lr'] == 0.2 and opt.param_groups[0]['nesterov'] is True
    opt = create_paper_optimizer(tiny, 'momentum', momentum=0.8)
    assert opt.param_groups[0]['nesterov'] is False and opt.param_groups[0]['momentum'] == 0.8


def test_linear_scaled_lr() -> None:
    assert linear_scaled_lr(256) == pytest.approx(0.1)
    assert linear_scaled_lr(1024) == pytest.approx(0.4)  # the paper's large-batch example
    assert linear_scaled_lr(128, world_size=4, grad_accum_steps=2) == pytest.approx(0.4)
    assert linear_scaled_lr(64) == pytest.approx(0.025)
    assert linear_scaled_lr(512, base_lr=0.2, base_batch_size=128) == pytest.approx(0.8)
    with pytest.raises(ValueError):
        linear_scaled_lr(0)


def test_resolve_lr_messages() -> None:
    lr, msg = resolve_lr(None, 256, world_size=4)
    assert lr == pytest.approx(0.4)
    assert msg == 'lr 0.4 = 0.1 x 1024/256 (linear scaling, section 3.1)'
    lr, msg = resolve_lr(0.05, 1024)
    assert lr == 0.05 and msg == 'lr 0.05 (explicit)'
