"""End-to-end train.py (issue 4): the real script on small real data, one run per feature combination.

The runs several tests share (the paper baseline on the digits, the full-stack reference, the 2-process torchrun run)
are session fixtures in conftest.py, each a plain ``python train.py`` / ``torchrun`` subprocess. The other runs of
this file go through ``Scripts.run_many``: one subprocess that imports torch/timm once and forks a child per run
which executes train.py as ``__main__`` with its own argv (see conftest._ZYGOTE). Every run uses
hparams/quickstart.yaml (resnet18d_tiny_bot at 32x32) with overrides, ``--workers 0`` and one intra-op thread.
"""
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import FULL_STACK_ARGS, Case, checkpoint_differences, read_summary
from PIL import Image

from timm_bot.checkpoint import load_checkpoint
from timm_bot.hparams import load_hparams

pytest.importorskip('sklearn', reason='the end-to-end runs train on the embedded digits (scikit-learn)')
pytestmark = pytest.mark.slow

SUMMARY_COLUMNS = ['epoch', 'train_loss', 'eval_loss', 'eval_top1', 'eval_top5', 'lr']
RUN_FILES = {'args.yaml', 'summary.csv', 'last.pth.tar', 'model_best.pth.tar'}
PLOT_FILES = {'lr.png', 'curves.png'}


def check_run_layout(run_dir, epochs: int, plots: bool) -> list[dict]:
    """The files of a finished run: exactly these, checkpoints weights_only-loadable, a well-formed summary.csv."""
    names = {p.name for p in run_dir.iterdir()}
    assert names == RUN_FILES | (PLOT_FILES if plots else set()), f'unexpected files in {run_dir}: {sorted(names)}'
    hp = load_hparams(run_dir / 'args.yaml')  # re-loadable as an hparams file as is
    rows = read_summary(run_dir)
    assert list(rows[0]) == SUMMARY_COLUMNS
    assert [int(r['epoch']) for r in rows] == list(range(epochs))
    for name in ('last.pth.tar', 'model_best.pth.tar'):
        ckpt = torch.load(run_dir / name, map_location='cpu', weights_only=True)
        assert ckpt['arch'] == hp.model and ckpt['num_classes'] == len(ckpt['label_names'])
        assert all(torch.isfinite(v).all() for v in ckpt['state_dict'].values() if v.is_floating_point())
    last = load_checkpoint(run_dir / 'last.pth.tar')
    assert (last['epoch'], last['batch_in_epoch']) == (epochs, 0)
    assert last['args']['lr'] == hp.lr, 'the checkpoint and args.yaml disagree on the resolved lr'
    best = max(rows, key=lambda r: float(r['eval_top1']))
    assert load_checkpoint(run_dir / 'model_best.pth.tar')['best']['top1'] == pytest.approx(float(best['eval_top1']))
    for png in PLOT_FILES if plots else ():
        data = (run_dir / png).read_bytes()
        assert data[:8] == b'\x89PNG\r\n\x1a\n', f'{png} is not a PNG'
        with Image.open(run_dir / png) as im:
            im.verify()
        with Image.open(run_dir / png) as im:
            assert im.size[0] > 100 and im.size[1] > 100
    return rows


@pytest.fixture(scope='module')
def runs(scripts, shared_results, baseline_run, reference_run, tiny_digits) -> dict:
    """The runs of this file besides the session fixtures, in one ``run_many`` call (once per session, also under
    xdist): name -> (ScriptResult, its folder, its data)."""
    return shared_results('train_runs', lambda root: _make_runs(scripts, root, baseline_run, reference_run,
                                                                  tiny_digits))


def _make_runs(scripts, root, baseline_run, reference_run, tiny_digits) -> dict:
    from timm_bot.data import write_image_folder

    out = root / 'out'
    small, tar = root / 'small', root / 'tar'
    write_image_folder(small, split='train', limit_per_class=4)   # 40 images: bf16 autocast is slow on CPU
    write_image_folder(small, split='val', limit_per_class=2)
    write_image_folder(tar, split='train', limit_per_class=8, as_tar=True)  # 80 images -> 10 batches of 8
    write_image_folder(tar, split='val', limit_per_class=2, as_tar=True)
    resumed = out / 'resumed'
    resumed.mkdir(parents=True)
    shutil.copyfile(reference_run.parent / 'epoch1.pth.tar', resumed / 'last.pth.tar')
    mine = root / 'elsewhere' / 'my-run'
    mine.mkdir(parents=True)
    shutil.copyfile(reference_run / 'last.pth.tar', mine / 'last.pth.tar')
    no_experiment = scripts.train_args(root / 'elsewhere', 'x', '--data_dir', tiny_digits, *FULL_STACK_ARGS, epochs=2)
    i = no_experiment.index('--experiment')
    del no_experiment[i:i + 2]
    cases = {
        'kd': scripts.train_args(out, 'kd', '--data_dir', tiny_digits, '--teacher', baseline_run / 'last.pth.tar',
                                 '--temperature', '20', '--batch_size', '16'),
        'amp': scripts.train_args(out, 'amp', '--data_dir', small, '--amp', 'true', '--amp_dtype', 'bfloat16',
                                  '--batch_size', '8'),
        'accum': scripts.train_args(out, 'accum', '--data_dir', tar, '--grad_accum_steps', '2', '--batch_size', '8',
                                    '--lr', 'null', '--lr_base', '1.6'),
        'resumed': [*scripts.train_args(out, 'resumed', '--data_dir', tiny_digits, *FULL_STACK_ARGS, epochs=2),
                    '--resume', resumed / 'last.pth.tar'],
        'no_experiment': [*no_experiment, '--resume', mine / 'last.pth.tar'],
        'unknown-key': scripts.train_args(root / 'bad1', 'x', '--smothing', '0.1'),
        'wrong-type': scripts.train_args(root / 'bad2', 'x', '--epochs', 'abc'),
    }
    results = scripts.run_many([Case(argv) for argv in cases.values()], root / 'logs')
    folders = {'kd': out / 'kd', 'amp': out / 'amp', 'accum': out / 'accum', 'resumed': resumed,
               'no_experiment': mine, 'unknown-key': root / 'bad1', 'wrong-type': root / 'bad2'}
    return {name: (res, folders[name], small if name == 'amp' else tar) for name, res in zip(cases, results)}


def finished(runs: dict, name: str):
    res, folder, data = runs[name]
    assert res.rc == 0, res.describe()
    return res, folder, data


# ---------------------------------------------------------------------------------------------------------------------
# One run per feature combination
# ---------------------------------------------------------------------------------------------------------------------

def test_baseline_step_decay_no_smoothing_xavier_bias_decay(baseline_run):
    """Section 2 baseline on the embedded digits (1438 train / 359 val), 2 epochs, plots on."""
    rows = check_run_layout(baseline_run, epochs=2, plots=True)
    hp = load_hparams(baseline_run / 'args.yaml')
    assert (hp.sched, hp.decay_milestones, hp.smoothing, hp.weight_init, hp.zero_init_last, hp.no_bias_decay) == \
        ('step', [1], 0.0, 'xavier', False, False)
    assert hp.lr == 0.1
    log = (baseline_run.parent / 'log.txt').read_text()
    assert 'lr 0.1 (explicit); global batch 32 (1 process(es) x 32 x 1 accumulation steps)' in log
    assert 'weight decay 0.0001 on all ' in log  # bias decay: no exclusion of biases / BN parameters
    # step decay at epoch 1: the lr column is the lr of the next batch, i.e. 0.1 / 10 after either epoch
    assert [float(r['lr']) for r in rows] == pytest.approx([0.01, 0.01])
    losses = [float(r['train_loss']) for r in rows]
    assert losses[1] < losses[0], f'train loss did not decrease: {losses}'
    top1 = [float(r['eval_top1']) for r in rows]
    assert top1[-1] > 30, f'top-1 {top1}: not clearly above chance (10%) after 2 epochs on the digits (seen: 63%)'
    assert float(rows[-1]['eval_top5']) >= top1[-1]


def test_full_stack_mixup_smoothing_cosine_warmup(reference_run):
    """Mixup 0.2 + label smoothing 0.1 + 1 warmup epoch + cosine, 2 epochs on 200 images (too little data for the
    accuracy to mean anything: only the training loss is checked)."""
    rows = check_run_layout(reference_run, epochs=2, plots=False)
    hp = load_hparams(reference_run / 'args.yaml')
    assert (hp.mixup, hp.smoothing, hp.sched, hp.warmup_epochs, hp.batch_size) == (0.2, 0.1, 'cosine', 1.0, 16)
    log = (reference_run.parent / 'log.txt').read_text()
    assert 'none on ' in log and '(biases, BN gamma/beta)' in log  # quickstart keeps no-bias-decay
    lrs = [float(r['lr']) for r in rows]
    # 12 updates per epoch, warmup = epoch 1, so after epoch 1 the lr is the first cosine value; 0 at the end
    assert lrs[0] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi / 12)))
    assert lrs[1] == 0.0
    losses = [float(r['train_loss']) for r in rows]
    assert losses[1] < losses[0], f'train loss did not decrease: {losses}'


def test_distillation_from_a_trained_teacher(runs, baseline_run):
    """Section 5.3 with a real teacher: the baseline's checkpoint (trained 2 epochs on the digits, same 10 classes)."""
    res, run_dir, _ = finished(runs, 'kd')
    teacher = baseline_run / 'last.pth.tar'
    rows = check_run_layout(run_dir, epochs=1, plots=False)
    assert load_hparams(run_dir / 'args.yaml').teacher == str(teacher)
    assert float(rows[0]['train_loss']) > 0
    # the teacher is not part of the student's checkpoint
    student = load_checkpoint(run_dir / 'last.pth.tar')['state_dict']
    assert set(student) == set(load_checkpoint(teacher)['state_dict']), 'teacher weights leaked into the student'

def test_amp_bfloat16_on_an_image_folder(runs):
    """bf16 autocast (section 3.2) is slow on CPU: 40 training images read from a class-folder tree."""
    res, run_dir, data = finished(runs, 'amp')
    rows = check_run_layout(run_dir, epochs=1, plots=False)
    hp = load_hparams(run_dir / 'args.yaml')
    assert hp.amp and hp.amp_dtype == 'bfloat16' and hp.data_dir == str(data)
    ckpt = load_checkpoint(run_dir / 'last.pth.tar')
    assert ckpt['global_step'] == 5 and 'scaler' not in ckpt  # bf16 needs no loss scaling
    assert all(v.dtype == torch.float32 for v in ckpt['state_dict'].values() if v.is_floating_point())
    assert math.isfinite(float(rows[0]['train_loss'])) and math.isfinite(float(rows[0]['eval_loss']))

def test_grad_accumulation_on_a_tar_with_linear_scaling(runs):
    """``--grad_accum_steps 2`` at batch 8 from .tar files: global batch 16, lr = 1.6 x 16/256 = 0.1 (section 3.1),
    80 images -> 10 batches -> 5 optimizer updates."""
    res, run_dir, data = finished(runs, 'accum')
    check_run_layout(run_dir, epochs=1, plots=False)
    assert load_hparams(run_dir / 'args.yaml').data_dir == str(data)
    assert 'lr 0.1 = 1.6 x 16/256 (linear scaling, section 3.1); global batch 16 ' \
           '(1 process(es) x 8 x 2 accumulation steps)' in res.log
    args = yaml.safe_load((run_dir / 'args.yaml').read_text())
    assert args['lr'] == pytest.approx(0.1) and load_hparams(run_dir / 'args.yaml').lr == pytest.approx(0.1)
    assert load_checkpoint(run_dir / 'last.pth.tar')['global_step'] == 5

def test_resume_from_end_of_epoch_1_is_bitwise_identical(runs, reference_run):
    """2 epochs straight vs epoch 1 + ``--resume`` for epoch 2 (same hparams: the schedule spans 2 epochs in both).
    The epoch-1 checkpoint is the reference run's own last.pth.tar, copied when epoch 1 ended."""
    res, run_dir, _ = finished(runs, 'resumed')
    assert 'resumed from' in res.log and 'epoch 1, batch 0, update 12' in res.log
    diffs = checkpoint_differences(reference_run / 'last.pth.tar', run_dir / 'last.pth.tar',
                                   keys=('state_dict', 'optimizer', 'scheduler', 'epoch_stats', 'history'))
    assert not diffs, f'{len(diffs)} values differ after resume, e.g. {diffs[:5]}'
    assert read_summary(run_dir) == read_summary(reference_run)  # history carried over, epoch 2 identical

def test_resume_without_experiment_continues_in_the_checkpoint_folder(runs):
    """``--resume RUN/last.pth.tar`` without ``--experiment`` must write into RUN, even though quickstart.yaml sets
    ``experiment:`` (else a resumed run lands in, and overwrites, another run's folder). The checkpoint is the
    finished reference run, so no epoch is left to train."""
    res, run_dir, _ = finished(runs, 'no_experiment')
    stray = sorted(p.name for p in run_dir.parent.iterdir() if p.name != run_dir.name)
    assert (run_dir / 'args.yaml').exists() and not stray, \
        f'the resumed run wrote to {stray} instead of the checkpoint folder {run_dir.name}'

def test_torchrun_two_processes(ddp_run):
    """``torchrun --nproc_per_node 2`` (gloo): completes; only rank 0 logs and writes; global batch = 2 x 8."""
    run_dir, log = ddp_run
    rows = check_run_layout(run_dir, epochs=1, plots=False)
    assert len(rows) == 1
    assert (run_dir / 'summary.csv').read_text().count('epoch,') == 1
    assert 'lr 0.1 = 1.6 x 16/256 (linear scaling, section 3.1); global batch 16 ' \
           '(2 process(es) x 8 x 1 accumulation steps)' in log
    assert log.count('epoch 1/1:') == 1 and log.count('best top-1') == 1, 'rank 1 logs too'
    assert load_hparams(run_dir / 'args.yaml').lr == pytest.approx(0.1)
    # 160 images / global batch 16 = 10 updates, each seen by both ranks
    assert load_checkpoint(run_dir / 'last.pth.tar')['global_step'] == 10


# ---------------------------------------------------------------------------------------------------------------------
# Error paths: exit code 2, one line, nothing written
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name, expected', [
    ('unknown-key', ["unknown key 'smothing'", "did you mean 'smoothing'"]),
    ('wrong-type', ['epochs', 'wrong type', 'int']),
])
def test_bad_override_exits_2_and_writes_nothing(runs, name, expected):
    """``--smothing 0.1`` / ``--epochs abc``: exit code 2, one line on stderr, the output folder not even created."""
    res, out, _ = runs[name]
    assert res.rc == 2, res.describe()
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), res.err
    for text in expected:
        assert text in lines[0], lines[0]
    assert not out.exists(), f'{out} was created'


def test_resume_warns_about_restored_schedule_keys(caplog):
    """--resume restores optimizer and schedule: new values given on the command line are named, not silently lost."""
    import importlib.util

    spec = importlib.util.spec_from_file_location('train_script', Path(__file__).parents[1] / 'train.py')
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    saved = load_hparams('hparams/quickstart.yaml').to_dict()
    hp = load_hparams('hparams/quickstart.yaml', {'epochs': 40, 'lr': 0.2, 'seed': 3})
    with caplog.at_level('WARNING', logger='train'):
        train._warn_resume_overrides(saved, hp, {'epochs', 'lr', 'seed'})
    assert 'epochs, lr do not take effect' in caplog.text
    caplog.clear()
    train._warn_resume_overrides(saved, load_hparams('hparams/quickstart.yaml'), set())
    assert caplog.text == ''
