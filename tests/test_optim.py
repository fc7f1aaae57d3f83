"""Section 2 (NAG) and 3.1 (no bias decay, linear scaling): timm_bot.optim."""
import pytest
import timm
import torch
import torch.nn as nn
from timm.optim import list_optimizers

import timm_bot.models  # noqa: F401  (registers the *_bot models)
from timm_bot.optim import create_paper_optimizer, resolve_lr

WD = 1e-4


def decay_by_name(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, float]:
    """The weight decay the optimizer applies to each parameter it holds, by parameter name."""
    wd_of = {id(p): g['weight_decay'] for g in opt.param_groups for p in g['params']}
    return {n: wd_of[id(p)] for n, p in model.named_parameters() if id(p) in wd_of}


@pytest.fixture(params=['resnet18d_tiny_bot', 'mobilenetv3_small_050'])
def model(request) -> nn.Module:
    return timm.create_model(request.param, num_classes=10)


def test_no_bias_decay_groups(model):
    """Decay exactly the conv and FC weights; biases and BN gamma/beta get none, in the names and the optimizer."""
    convs_fcs = {f'{n}.weight' for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert any(n not in convs_fcs for n, _ in model.named_parameters())  # biases and BN gamma/beta exist
    opt = create_paper_optimizer(model, lr=0.1, weight_decay=WD)
    assert sum(len(g['params']) for g in opt.param_groups) == len(list(model.parameters()))
    assert decay_by_name(model, opt) == {n: WD if n in convs_fcs else 0.0 for n, _ in model.named_parameters()}


def test_baseline_decays_everything_and_frozen_params_are_left_out(model):
    opt = create_paper_optimizer(model, 'nag', 0.2, weight_decay=WD, no_bias_decay=False)
    assert [(g['lr'], g['weight_decay']) for g in opt.param_groups] == [(0.2, WD)]
    assert decay_by_name(model, opt) == {n: WD for n, _ in model.named_parameters()}
    model.get_classifier().requires_grad_(False)
    held = decay_by_name(model, create_paper_optimizer(model, weight_decay=WD))
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and not frozen & set(held) and len(held) == len(list(model.parameters())) - len(frozen)


def test_weight_decay_step_moves_only_decayed_parameters():
    """With zero gradients only weight decay moves parameters: NAG's first step scales w by 1 - lr * 1.9 * wd."""
    model = timm.create_model('resnet18d_tiny_bot', num_classes=10)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)  # zero biases / zero gamma would hide a wrongly applied decay
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = create_paper_optimizer(model, lr=0.1, weight_decay=0.01)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    decay = decay_by_name(model, opt)
    for n, p in model.named_parameters():
        if decay[n] > 0:  # buf = wd * w; update = wd * w + 0.9 * buf
            torch.testing.assert_close(p.detach(), before[n] * (1 - 0.1 * 1.9 * 0.01))
        else:
            assert torch.equal(p.detach(), before[n]), n


def test_nag_is_sgd_nesterov():
    """Section 2's NAG is timm's 'nesterov': torch SGD, nesterov=True, momentum 0.9, bit for bit."""
    assert 'nag' in list_optimizers()
    torch.manual_seed(0)
    ours, ref = nn.Linear(8, 3), nn.Linear(8, 3)
    ref.load_state_dict(ours.state_dict())
    nag = create_paper_optimizer(ours, 'nag', lr=0.1, weight_decay=WD, no_bias_decay=False)
    sgd = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=WD)
    assert type(nag) is torch.optim.SGD and nag.param_groups[0]['nesterov'] and nag.param_groups[0]['momentum'] == 0.9
    for _ in range(5):
        x = torch.randn(4, 8)
        for model, opt in ((ours, nag), (ref, sgd)):
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
    assert torch.equal(ours.weight, ref.weight) and torch.equal(ours.bias, ref.bias)
    other = create_paper_optimizer(ours, 'momentum', momentum=0.8)
    assert other.param_groups[0]['nesterov'] is False and other.param_groups[0]['momentum'] == 0.8


def test_linear_scaling():
    """Section 3.1: 0.1 x b / 256; the paper's batch 1024 gives 0.4."""
    assert resolve_lr(None, 1024)[0] == pytest.approx(0.4)
    assert resolve_lr(None, 128, world_size=4, grad_accum_steps=2)[0] == pytest.approx(0.4)
    assert resolve_lr(None, 512, lr_base=0.2, lr_base_size=128)[0] == pytest.approx(0.8)  # the YAML's names
    assert resolve_lr(None, 512, 1, 1, 0.2, 128)[0] == pytest.approx(0.8)  # the positional order kept
    assert resolve_lr(None, 256, world_size=4) == (pytest.approx(0.4),
                                                   'lr 0.4 = 0.1 x 1024/256 (linear scaling, section 3.1)')
    assert resolve_lr(0.05, 1024) == (0.05, 'lr 0.05 (explicit)')
