"""hparams: typed YAML + overrides; every mistake is one clear error naming the key (train.py exits 2 on it)."""
import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

from timm_bot.distributed import resolve_device
from timm_bot.hparams import (
    HparamsError,
    TrainHparams,
    build_parser,
    check_resume_changes,
    load_hparams,
)


def parse_overrides(argv: list[str]) -> dict:
    return {k: v for k, v in vars(build_parser().parse_args(argv)).items() if k != 'hparams'}

HPARAMS = sorted((Path(__file__).parents[1] / 'hparams').glob('*.yaml'))


@pytest.mark.parametrize('path', HPARAMS, ids=[p.stem for p in HPARAMS])
def test_every_recipe_loads(path, tmp_path):
    overrides = {'data_dir': str(tmp_path)} if 'imagenet' in path.stem or 'cifar' in path.stem else None
    hp = load_hparams(path, overrides)
    import timm

    import timm_bot  # noqa: F401
    assert isinstance(hp, TrainHparams) and timm.is_model(hp.model), hp.model
    if path.stem == 'imagenet_inception_v3':
        assert hp.img_size == 299  # the paper's input size for Inception-V3


@pytest.mark.parametrize('recipe', ['cifar10', 'imagenet_baseline'])
def test_recipes_need_the_users_data_dir(recipe):
    """Issue 23: a shipped recipe points at no folder of this repository's layout: without --data_dir, one line."""
    with pytest.raises(HparamsError, match=r"data_dir='/path/to/\w+' is invalid: .*give it with --data_dir PATH\.$"):
        load_hparams(f'hparams/{recipe}.yaml')
    assert 'shared' not in Path(f'hparams/{recipe}.yaml').read_text()


def test_paper_recipes_have_the_papers_settings():
    baseline = load_hparams('hparams/imagenet_baseline.yaml', {'data_dir': '.'})
    assert (baseline.model, baseline.opt, baseline.lr, baseline.sched, baseline.epochs) == \
        ('resnet50_bot', 'nag', 0.1, 'step', 120)
    assert baseline.decay_milestones == [30, 60, 90] and not baseline.zero_init_last and not baseline.no_bias_decay
    assert baseline.batch_size * 8 == 256 and not baseline.amp and baseline.weight_init == 'xavier'
    efficient = load_hparams('hparams/imagenet_efficient.yaml', {'data_dir': '.'})
    assert efficient.batch_size * 8 == 1024 and efficient.lr is None and efficient.warmup_epochs == 5
    assert efficient.zero_init_last and efficient.no_bias_decay and efficient.amp and efficient.amp_dtype == 'float16'
    final = load_hparams('hparams/imagenet_resnet50d_mixup.yaml', {'data_dir': '.'})
    assert (final.model, final.sched, final.smoothing, final.mixup, final.epochs) == \
        ('resnet50d_bot', 'cosine', 0.1, 0.2, 200)
    assert final.teacher == 'resnet152d_bot' and final.temperature == 20


def test_overrides_parse_yaml_values():
    assert parse_overrides(['--lr', '0.4', '--mixup=0.2', '--amp', '--decay-milestones', '[30, 60]',
                            '--teacher', 'null', '--model', 'resnet50d_bot']) == \
        {'lr': 0.4, 'mixup': 0.2, 'amp': True, 'decay_milestones': [30, 60], 'teacher': None,
         'model': 'resnet50d_bot'}


def test_override_wins_over_file(tmp_path):
    path = tmp_path / 'h.yaml'
    path.write_text(yaml.safe_dump({'epochs': 3, 'lr': 0.2, 'warmup_epochs': 1}))
    hp = load_hparams(path, {'epochs': 5})
    assert hp.epochs == 5 and hp.lr == 0.2
    assert load_hparams(path, {'lr': 1}).lr == 1.0 and isinstance(load_hparams(path, {'lr': 1}).lr, float)


@pytest.mark.parametrize('overrides, match', [
    ({'smothing': 0.1}, "unknown key 'smothing': did you mean 'smoothing'"),
    ({'batchsize': 8}, "did you mean 'batch_size'"),
    ({'epochs': 'abc'}, r"epochs='abc' has the wrong type \(str\): expected int"),
    ({'epochs': 2.5}, 'expected int'),
    ({'amp': 'yes'}, 'expected bool'),
    ({'scale': 0.5}, 'expected a list of float'),
    ({'lr': -0.1}, 'lr=-0.1 is invalid'),
    ({'smoothing': 1.0}, 'smoothing=1.0 is invalid: expected a number >= 0 and < 1'),
    ({'mixup': -0.2}, 'mixup=-0.2 is invalid'),
    ({'temperature': 0}, 'temperature=0.0 is invalid: expected a number > 0'),
    ({'batch_size': 0}, 'batch_size=0 is invalid'),
    ({'lr_base_size': 0}, 'lr_base_size=0 is invalid'),
    ({'grad_accum_steps': 0}, 'grad_accum_steps=0 is invalid'),
    ({'sched': 'cosin'}, "Did you mean 'cosine'"),
    ({'opt': 'ngd'}, "opt='ngd' is not one of"),
    ({'data_dir': '/no/such/dir'}, 'data_dir'),
    ({'warmup_epochs': 200, 'epochs': 100}, 'warmup_epochs'),
    ({'teacher_ema': True}, 'teacher_ema=True is invalid: expected false unless a teacher is set'),
    ({'decay_milestones': 1}, r'expected a list of int, e\.g\. \[30, 60\]'),  # issue 23 bug 3: an int example
    ({'sched': 'step', 'epochs': 20}, r'decay_milestones=\[30, 60, 90\] is invalid: expected epochs in 1\.\.19'),
    ({'sched': 'step', 'epochs': 20, 'decay_milestones': [10, 20]}, 'decay_milestones'),  # issue 23 bug 2
])
def test_bad_values_name_the_key(overrides, match):
    with pytest.raises(HparamsError, match=match) as err:
        load_hparams(None, overrides)
    assert '\n' not in str(err.value)


def test_step_decay_milestones_within_the_run():
    """Issue 23 bug 2: a step-decay milestone at or past `epochs` never decays; cosine ignores the milestones."""
    with pytest.raises(HparamsError, match='decay_milestones'):
        load_hparams('hparams/imagenet_baseline.yaml', {'data_dir': '.', 'epochs': 20})
    assert load_hparams(None, {'sched': 'cosine', 'epochs': 20}).decay_milestones == [30, 60, 90]
    assert load_hparams(None, {'sched': 'step', 'epochs': 20, 'decay_milestones': [5, 19]}).epochs == 20
    assert load_hparams(None, {'sched': 'step', 'epochs': 20, 'decay_milestones': []}).decay_milestones == []
    with pytest.raises(HparamsError, match='expected a list of int, e.g. \\[30, 60\\]'):
        load_hparams(None, parse_overrides(['--decay_milestones', '1']))
    assert parse_overrides(['--decay_milestones', '[30, 60]'])['decay_milestones'] == [30, 60]  # the hint works


def test_bad_files(tmp_path):
    with pytest.raises(HparamsError, match='file not found'):
        load_hparams(tmp_path / 'missing.yaml')
    bad = tmp_path / 'bad.yaml'
    bad.write_text('lr: [0.1\n')
    with pytest.raises(HparamsError, match='not valid YAML'):
        load_hparams(bad)
    bad.write_text('- 1\n- 2\n')
    with pytest.raises(HparamsError, match='mapping'):
        load_hparams(bad)


def test_args_yaml_round_trips():
    hp = load_hparams('hparams/quickstart.yaml')
    assert load_hparams(None, yaml.safe_load(yaml.safe_dump(dataclasses.asdict(hp)))) == hp


def test_exponent_floats_without_dot(tmp_path):
    """PyYAML (YAML 1.1) reads 1e-3 as a string; users mean a float, in files and on the command line."""
    path = tmp_path / 'h.yaml'
    path.write_text('lr: 1e-3\nweight_decay: 5e-5\nwarmup_epochs: 0\n')
    hp = load_hparams(path, parse_overrides(['--momentum', '9e-1', '--scale', '[8e-2, 1]']))
    assert (hp.lr, hp.weight_decay, hp.momentum, hp.scale) == (1e-3, 5e-5, 0.9, [0.08, 1.0])
    with pytest.raises(HparamsError, match='wrong type'):
        load_hparams(None, {'lr': '1e-3x'})


def test_later_files_override_earlier_ones(tmp_path):
    (tmp_path / 'row.yaml').write_text('sched: step\ndecay_milestones: [10, 15]\nmixup: 0.2\n')
    hp = load_hparams(['hparams/quickstart.yaml', tmp_path / 'row.yaml'], {'mixup': 0.1})
    assert (hp.model, hp.sched, hp.mixup) == ('resnet18d_tiny_bot', 'step', 0.1)


@pytest.mark.parametrize('order', ['hparams first', 'help first'])
def test_help_shows_the_recipes_values_as_defaults(capsys, tmp_path, order):
    """Issue 23: `train.py --hparams X --help` is the resolved recipe; keys X leaves alone keep the built-in default."""
    (tmp_path / 'row.yaml').write_text('epochs: 3\nmixup: 0.0\n')
    argv = ['--hparams', 'hparams/cifar10.yaml', str(tmp_path / 'row.yaml')]
    with pytest.raises(SystemExit) as e:
        build_parser('train.py').parse_args(argv + ['--help'] if order == 'hparams first' else ['--help'] + argv)
    out = ' '.join(capsys.readouterr().out.split())
    assert e.value.code == 0
    assert '--epochs VALUE training epochs (section 2: 120; mixup 200) (default: 3 from row.yaml)' in out
    assert '(default: resnet18d_tiny_bot from cifar10.yaml)' in out and '(default: 0.0 from row.yaml)' in out
    assert '(default: [0.35, 1.0] from cifar10.yaml)' in out and '(default: nag)' in out
    assert 'resnet50d_bot' not in out
    assert parse_overrides(['--hparams', 'hparams/cifar10.yaml', '--epochs', '3']) == {'epochs': 3}  # no --help


def test_unknown_command_line_key_suggests_the_nearest():
    with pytest.raises(HparamsError, match="unknown key 'lr_bse': did you mean '--lr_base'"):
        build_parser().parse_args(['--lr_bse', '0.1'])


def test_resume_may_change_only_what_does_not_alter_the_run():
    saved = dict(dataclasses.asdict(load_hparams('hparams/quickstart.yaml')), lr=0.1)
    check_resume_changes(saved, load_hparams('hparams/quickstart.yaml', {'epochs': 30, 'workers': 4}), 0.1)
    with pytest.raises(HparamsError, match=r"cannot change mixup 0.0 -> 0.2"):
        check_resume_changes(saved, load_hparams('hparams/quickstart.yaml', {'mixup': 0.2}), 0.1)


def test_devices():
    assert resolve_device('cpu') == torch.device('cpu')
    assert resolve_device('auto').type == ('cuda' if torch.cuda.is_available() else 'mps'
                                           if torch.backends.mps.is_available() else 'cpu')
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda:1' is not available here"):
            resolve_device('cuda:1')
