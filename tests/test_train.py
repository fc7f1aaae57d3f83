"""train.py end to end: any timm model, the paper's recipes, the run layout, and one-line errors.

Training runs are real ``python train.py`` subprocesses on the embedded digits (or small folders written from them);
the fail-fast error paths call ``train.run(argv)`` in-process (they exit before any training).
"""
import dataclasses
import importlib.metadata
import json
import math
import os
import shutil

import pytest
import torch
import yaml
from conftest import QUICKSTART, read_summary, run_script, torchrun, train_args
from PIL import Image

import train
from timm_bot.checkpoint import load_checkpoint
from timm_bot.hparams import TrainHparams, load_hparams

pytest.importorskip('sklearn', reason='the end-to-end runs train on the embedded digits (scikit-learn)')

RUN_FILES = {'args.yaml', 'summary.csv', 'last.pth.tar', 'model_best.pth.tar'}


def check_run(run_dir, epochs: int, plots: bool = False) -> list[dict]:
    """A finished run: timm's files, weights_only checkpoints with the resolved architecture, a full summary."""
    assert {p.name for p in run_dir.iterdir()} == RUN_FILES | ({'lr.png', 'curves.png'} if plots else set())
    hp = load_hparams(run_dir / 'args.yaml')  # reloadable as an hparams file
    rows = read_summary(run_dir)
    assert list(rows[0])[:5] == ['epoch', 'train_loss', 'eval_loss', 'eval_top1', 'eval_top5'] and 'lr' in rows[0]
    assert [int(r['epoch']) for r in rows] == list(range(epochs))
    last = load_checkpoint(run_dir / 'last.pth.tar')
    assert (last['epoch'], last['batch_in_epoch'], last['num_classes']) == (epochs, 0, len(last['label_names']))
    assert last['arch'] == hp.model.split(':')[-1] or last['source'] == hp.model
    for png in ('lr.png', 'curves.png') if plots else ():
        with Image.open(run_dir / png) as im:
            assert im.format == 'PNG' and min(im.size) > 100
    return rows


def run_in_process(capsys, *argv) -> tuple[int, str]:
    rc = train.run([str(a) for a in argv])
    return rc, capsys.readouterr().err


@pytest.fixture(scope='module')
def any_model_runs(shared_dir):
    """1 epoch of quickstart.yaml (the embedded digits) with three timm models that are not this package's."""
    def produce(out):
        for model in ('resnet18d', 'mobilenetv3_small_050', 'convnext_atto'):
            res = run_script(*train_args(out, model, '--model', model, '--batch_size', '32', '--lr', '0.05'))
            (out / f'{model}.log').write_text(res.log)
    return shared_dir('any_model_runs', produce)


@pytest.mark.parametrize('model', ['resnet18d', 'mobilenetv3_small_050', 'convnext_atto'])
def test_any_timm_model_trains_and_validates(any_model_runs, model):
    """Issue 10: timm's own models train with the recipe; validate.py reproduces the final top-1 exactly."""
    run_dir, log = any_model_runs / model, (any_model_runs / f'{model}.log').read_text()
    rows = check_run(run_dir, epochs=1)
    assert load_checkpoint(run_dir / 'last.pth.tar')['arch'] == model
    if model == 'convnext_atto':  # its residual branches end in layer scale, not a BatchNorm: said, not hidden
        assert 'zero-gamma (3.1): not applied: no residual branch ends in a BN' in log
    else:
        assert 'residual branches end at gamma 0' in log
    res = run_script('validate.py', '--checkpoint', run_dir / 'last.pth.tar', '--data_dir', 'digits')
    assert f'{float(rows[0]["eval_top1"]):.3f}' in res.out, res.describe()
    assert float(rows[0]['eval_top1']) > 20, f'{model}: top-1 {rows[0]["eval_top1"]} after 1 epoch'


def test_baseline_recipe_layout_and_schedule(baseline_run):
    """Section 2 baseline: step decay (lr / 10 after epoch 1), bias decay on every tensor, plots written."""
    rows = check_run(baseline_run, epochs=2, plots=True)
    log = (baseline_run.parent / 'log.txt').read_text()
    assert 'lr 0.1 (explicit); global batch 32' in log and 'none on 0' in log
    assert [float(r['lr']) for r in rows] == pytest.approx([0.1, 0.01])  # the lr each epoch trained with
    assert float(rows[1]['train_loss']) < float(rows[0]['train_loss'])
    assert float(rows[1]['eval_top1']) > 30, 'not clearly above chance (10%) after 2 epochs on the digits'
    assert log.splitlines()[0].startswith('device cpu'), 'the device is not named in the first log line'


def test_full_stack_with_ema(reference_run):
    """Mixup + label smoothing + warmup + cosine + EMA: cosine ends at lr 0, EMA curves logged and saved."""
    rows = check_run(reference_run, epochs=2)
    # the lr of each epoch's last batch: the end of the 12-update warmup, then cosine's last batch at 0
    assert [float(r['lr']) for r in rows] == [0.1, 0.0]
    assert 'eval_ema_top1' in rows[0]
    ckpt = load_checkpoint(reference_run / 'last.pth.tar')
    assert ckpt['state_dict_ema'].keys() == ckpt['state_dict'].keys()


def test_amp_grad_accumulation_tar_and_progress_lines(shared_dir, digits_tar):
    """bf16 autocast (3.2) on .tar data with 2-step accumulation and linear scaling (3.1); under a pipe (no tty)
    a progress line every log_interval batches (issue 11 items 8, 9)."""
    def produce(out):
        res = run_script(*train_args(out, 'r', '--data_dir', digits_tar, '--amp', 'true', '--amp_dtype', 'bfloat16',
                                     '--grad_accum_steps', '2', '--batch_size', '15', '--lr', 'null', '--lr_base',
                                     '1.6', '--log_interval', '4'))
        (out / 'log.txt').write_text(res.log)
    out = shared_dir('amp_accum', produce)
    log = (out / 'log.txt').read_text()
    check_run(out / 'r', epochs=1)
    assert 'lr 0.1875 = 1.6 x 30/256 (linear scaling, section 3.1); global batch 30' in log
    assert 'bfloat16 autocast measured at' in log and 'x the time of float32 on this CPU' in log
    progress = [line for line in log.splitlines() if 'img/s ETA' in line]
    assert [line.split(']')[0].split('[')[1] for line in progress] == ['4/20', '8/20', '12/20', '16/20', '20/20']
    ckpt = load_checkpoint(out / 'r' / 'last.pth.tar')
    assert ckpt['global_step'] == 10 and 'loss_scaler' not in ckpt  # bf16 needs no loss scaling


def test_distillation_reports_the_kl_form(shared_dir, baseline_run, tiny_digits):
    """Section 5.3 with the baseline as teacher: the reported loss is base + T^2 KL (not ~T^2 H(teacher) = 900+)."""
    def produce(out):
        res = run_script(*train_args(out, 'kd', '--data_dir', tiny_digits, '--teacher', baseline_run, '--batch_size',
                                     '16', '--plots', 'true', '--export_dir', out / 'export'))
        (out / 'log.txt').write_text(res.log)
    run_dir = shared_dir('distill', produce) / 'kd'
    rows = check_run(run_dir, epochs=1, plots=True)
    assert 0 < float(rows[0]['train_loss']) < 100
    log = (run_dir.parent / 'log.txt').read_text()
    assert f'{baseline_run} is a run folder: using its model_best.pth.tar' in log
    assert 'refinements: cosine lr, label smoothing 0.1 (paper), no mixup, distillation from ' in log
    assert f'exported to {run_dir.parent / "export"}' in log and (run_dir.parent / 'export' / 'config.json').exists()
    assert load_checkpoint(run_dir / 'last.pth.tar')['state_dict'].keys() == \
        load_checkpoint(baseline_run / 'last.pth.tar')['state_dict'].keys(), 'teacher weights leaked into the student'


def test_torchrun_two_processes(tmp_path, digits_folder):
    """2 gloo ranks x batch 8 = global 16 (linear scaling lr 0.1); only rank 0 logs and writes. Evaluation counts
    every image of an odd-sized split once (torch's DistributedSampler would repeat one): validate.py, one process,
    gives the same top-1. Against 1 process x batch 16: the same updates and lr, and a train loss within 5% (not
    bitwise: BatchNorm normalizes each rank's 8 images with their own statistics)."""
    data = tmp_path / 'data'
    shutil.copytree(digits_folder, data)
    (data / 'val' / '0' / '0000.jpg').unlink()  # 299 val images
    common = ('--data_dir', data, '--lr', 'null', '--lr_base', '1.6', '--mixup', '0', '--deterministic', 'true')
    res = run_script(*torchrun(2, *train_args(tmp_path, 'ddp', '--batch_size', '8', *common)))
    ddp, = check_run(tmp_path / 'ddp', epochs=1)
    assert 'lr 0.1 = 1.6 x 16/256 (linear scaling, section 3.1); global batch 16' in res.log
    assert res.log.count('epoch 1/1:') == 1
    run_script('validate.py', '--checkpoint', tmp_path / 'ddp' / 'last.pth.tar', '--data_dir', data, '--workers', '0',
               '--results-file', tmp_path / 'val.json')
    validated = json.loads((tmp_path / 'val.json').read_text())
    assert validated['count'] == 299 and float(ddp['eval_top1']) == pytest.approx(validated['top1'], abs=1e-6)
    run_script(*train_args(tmp_path, 'single', '--batch_size', '16', *common))
    single, = read_summary(tmp_path / 'single')
    assert math.isclose(float(single['train_loss']), float(ddp['train_loss']), rel_tol=0.05), (single, ddp)
    assert single['lr'] == ddp['lr']
    assert load_checkpoint(tmp_path / 'ddp' / 'last.pth.tar')['global_step'] == 300 // 16 == \
        load_checkpoint(tmp_path / 'single' / 'last.pth.tar')['global_step']


def test_help_lists_every_hparam():
    res = run_script('train.py', '--help')
    for name in TrainHparams.__dataclass_fields__:
        assert f'--{name}' in res.out, name
    assert '(default: resnet50d_bot)' in res.out and 'section 5.2' in res.out


def test_tqdm_is_a_declared_dependency():
    requires = importlib.metadata.requires('timm-bot') or []
    assert any(r.split('>')[0].split('=')[0].strip() == 'tqdm' for r in requires if 'extra ==' not in r)


@pytest.mark.parametrize('argv, expected', [
    (['--smothing', '0.1'], "unknown key 'smothing': did you mean '--smoothing'?"),
    (['--epochs', 'abc'], "epochs='abc' has the wrong type (str): expected int"),
    (['--epochs', '1', '--warmup_epochs', '1'], 'warmup_epochs=1.0 is invalid: expected >= 0 and shorter than epochs'),
    (['--model', 'resnet18dd'], "model 'resnet18dd' is not a timm model; did you mean resnet18d"),
    (['--opt', 'nagg'], "opt='nagg' is not one of nag, "),
    (['--device', 'gpu'], "device 'gpu' is not one of 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'"),
    (['--device', 'cuda'], "device 'cuda' is not available here"),
    (['--data_dir', '/nonexistent'], "data_dir='/nonexistent' is invalid"),
    (['--hparams', 'hparams'], 'hparams is a folder: give one YAML file from it'),
    (['--push_to_hub', 'not a repo id!'], 'not a valid Hub repo id'),
])
def test_bad_input_exits_2_with_one_line_before_writing(capsys, tmp_path, monkeypatch, argv, expected):
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '')
    args = ['--hparams', QUICKSTART, '--output', tmp_path / 'out', *argv]
    if argv[0] == '--hparams':
        args = argv + ['--output', tmp_path / 'out']
    rc, err = run_in_process(capsys, *args)
    assert rc == 2 and expected in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / 'out').exists()


def test_pretrained_offline_names_the_hub_id(capsys, tmp_path, monkeypatch):
    """Issue 11 item 16: offline, pretrained weights fail at once, naming what was tried and how to work offline."""
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(tmp_path / 'empty-cache'))
    rc, err = run_in_process(capsys, '--hparams', QUICKSTART, '--model', 'resnet50d_bot', '--pretrained', 'true',
                             '--output', tmp_path / 'out')
    assert rc == 2 and 'timm/resnet50d.gluon_in1k' in err and 'HF_HUB_OFFLINE=1' in err and 'local-dir:' in err


def test_export_dir_that_is_not_an_export_is_refused_before_training(capsys, tmp_path):
    """Issue 23 bug 1: a destination holding other files is refused in one line before anything is written."""
    (tmp_path / 'mine').mkdir()
    (tmp_path / 'mine' / 'notes.txt').write_text('keep me')
    rc, err = run_in_process(capsys, *train_args(tmp_path / 'out', 'run', '--export_dir', tmp_path / 'mine')[1:])
    assert rc == 2 and 'is not empty' in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / 'out').exists() and os.listdir(tmp_path / 'mine') == ['notes.txt']


def test_a_gpu_recipe_on_a_slow_cpu_trains_without_amp(monkeypatch, caplog, tmp_path, tiny_digits):
    """Issue 23: with device auto landing on a CPU whose float16 autocast is measured slower than float32 (18.6x
    on this machine), AMP is turned off in one line instead of crawling; device: cpu keeps it (a choice)."""
    import timm_bot.amp
    monkeypatch.setattr(timm_bot.amp, 'autocast_slowdown', lambda device, dtype: 18.6)
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '')
    args = train_args(tmp_path, 'run', '--data_dir', tiny_digits, '--batch_size', '50', '--amp', 'true',
                      '--device', 'auto')[1:]
    assert train.main([str(a) for a in args]) == 0
    assert 'float16 autocast measured at 18.6x the time of float32 on this CPU: amp turned off' in caplog.text
    assert 'no EMA' in caplog.text and ', float32, ' in caplog.text
    assert 'loss_scaler' not in load_checkpoint(tmp_path / 'run' / 'last.pth.tar')


def test_args_yaml_reloads_to_the_same_hparams(baseline_run):
    saved = yaml.safe_load((baseline_run / 'args.yaml').read_text())
    assert dataclasses.asdict(load_hparams(baseline_run / 'args.yaml')) == {k: v for k, v in saved.items()}
    assert torch.load(baseline_run / 'last.pth.tar', weights_only=True)['args'] == saved
