"""Resume, rerun, interrupt and divergence (issue 11 items 1-6, and the bit-exact resume of issue 7)."""
import math
import os
import shutil
import signal
import time

import pytest
import torch
from conftest import FULL_STACK_ARGS, popen_script, read_summary, run_script, same_tensors, train_args

from timm_bot.checkpoint import load_checkpoint

pytest.importorskip('sklearn', reason='the end-to-end runs train on the embedded digits (scikit-learn)')


def test_resume_from_the_run_folder_alone_is_bitwise_identical_with_ema(tmp_path, reference_run):
    """``--resume FOLDER`` with no other argument restores the run's hparams; epoch 2 after resuming equals the
    uninterrupted run bit for bit, EMA weights included (items 1, 2)."""
    run = tmp_path / 'copy'
    run.mkdir()
    shutil.copyfile(reference_run.parent / 'epoch1.pth.tar', run / 'last.pth.tar')
    res = run_script('train.py', '--resume', run)
    assert f'resuming at epoch 2, batch 0 in {run}' in res.log
    mine, ref = load_checkpoint(run / 'last.pth.tar'), load_checkpoint(reference_run / 'last.pth.tar')
    for key in ('state_dict', 'state_dict_ema'):
        assert same_tensors(mine[key], ref[key]), key
    assert mine['history'] == ref['history'] and read_summary(run) == read_summary(reference_run)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['copy'], 'the resumed run wrote outside its folder'


def test_sigkill_mid_epoch_then_resume_is_bitwise_identical(tmp_path, reference_run, tiny_digits):
    """Killed at an arbitrary batch of epoch 2 (checkpoints every 2 updates, 2 loader workers), then resumed."""
    args = train_args(tmp_path, 'k', '--data_dir', tiny_digits, *FULL_STACK_ARGS, '--workers', '2',
                      '--checkpoint_interval', '2', epochs=2)
    p, ckpt = popen_script(*args, log=tmp_path / 'log.txt'), tmp_path / 'k' / 'last.pth.tar'
    deadline = time.monotonic() + 300
    while True:
        assert p.poll() is None and time.monotonic() < deadline, (tmp_path / 'log.txt').read_text()
        if ckpt.exists():
            state = torch.load(ckpt, weights_only=True)  # replaced atomically: always complete
            if state['global_step'] >= 14 and state['batch_in_epoch'] > 0:
                break
        time.sleep(0.01)
    time.sleep(0.1)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    run_script('train.py', '--resume', tmp_path / 'k')
    mine, ref = load_checkpoint(ckpt), load_checkpoint(reference_run / 'last.pth.tar')
    assert same_tensors(mine['state_dict'], ref['state_dict']) and same_tensors(mine['state_dict_ema'],
                                                                                  ref['state_dict_ema'])
    assert not [f for f in os.listdir(tmp_path / 'k') if f.endswith('.tmp')], 'stale temp files were not removed'


def test_more_epochs_rebuild_the_schedule_instead_of_training_at_lr_0(tmp_path, reference_run):
    """A finished 2-epoch cosine run resumed with ``--epochs 3`` trains epoch 3 with a positive lr (item 3)."""
    run = tmp_path / 'ext'
    shutil.copytree(reference_run, run)
    res = run_script('train.py', '--resume', run, '--epochs', '3', '--log_interval', '1')
    assert 'epochs 2 -> 3: the cosine schedule is rebuilt for 3 epochs' in res.log
    first = next(line for line in res.log.splitlines() if line.startswith('epoch 3/3 [1/12]'))
    # batch 25 of 36 (12 warmup) trains at lr = 0.1 * (1 + cos(pi * 13 / 24)) / 2, printed with 4 digits
    assert float(first.split(' lr ')[1].split()[0]) == pytest.approx(0.05 * (1 + math.cos(math.pi * 13 / 24)), 1e-3)
    assert len(read_summary(run)) == 3
    done = run_script('train.py', '--resume', run)
    assert 'nothing to do' in done.log and len(read_summary(run)) == 3


def test_resume_refuses_changes_that_would_alter_the_run(tmp_path, reference_run, capsys):
    import train
    run = tmp_path / 'r'
    shutil.copytree(reference_run, run)
    before = (run / 'last.pth.tar').read_bytes()
    assert train.run(['--resume', str(run), '--lr', '0.3']) == 2
    err = capsys.readouterr().err
    assert '--resume cannot change lr 0.1 -> 0.3' in err and len(err.strip().splitlines()) == 1
    assert train.run(['--resume', str(run), '--model', 'resnet18d']) == 2
    assert "--resume cannot change model 'resnet18d_tiny_bot' -> 'resnet18d'" in capsys.readouterr().err
    assert (run / 'last.pth.tar').read_bytes() == before


def test_rerunning_a_recipe_writes_a_new_folder(tmp_path, tiny_digits):
    """Item 4: the second run of the same experiment goes to '<experiment>-1' and says so; the first is intact."""
    args = train_args(tmp_path, 'same', '--data_dir', tiny_digits, '--batch_size', '50')
    run_script(*args)
    first = (tmp_path / 'same' / 'model_best.pth.tar').read_bytes()
    res = run_script(*args)
    assert f'writing to {tmp_path / "same-1"}' in res.log
    assert (tmp_path / 'same' / 'model_best.pth.tar').read_bytes() == first
    assert (tmp_path / 'same-1' / 'last.pth.tar').exists()


def test_ctrl_c_saves_at_the_current_update_and_prints_the_resume_command(tmp_path):
    """SIGINT (issue 21): the update finishes, last.pth.tar is written at that batch, one final line names it and the
    resume command, exit 130 (128 + SIGINT)."""
    args = train_args(tmp_path, 'int', '--checkpoint_interval', '5', '--log_interval', '1', epochs=3)
    p = popen_script(*args, log=tmp_path / 'log.txt')
    deadline = time.monotonic() + 300
    while not (tmp_path / 'int' / 'last.pth.tar').exists():
        assert p.poll() is None and time.monotonic() < deadline, (tmp_path / 'log.txt').read_text()
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=120) == 130
    log = (tmp_path / 'log.txt').read_text()
    last = log.strip().splitlines()[-1]
    ckpt = load_checkpoint(tmp_path / 'int' / 'last.pth.tar')
    assert 'Traceback' not in log, log
    assert last.startswith(f'stopped by SIGINT at epoch {ckpt["epoch"] + 1}/3, batch {ckpt["batch_in_epoch"]} '
                           f'(update {ckpt["global_step"]}); checkpoint: {tmp_path / "int" / "last.pth.tar"}'), last
    assert ckpt['batch_in_epoch'] % 5 != 0, 'the checkpoint is an interval one, not the stop step'
    assert last.endswith(f'resume with: python train.py --resume {tmp_path / "int"}')


def test_ctrl_c_before_the_first_checkpoint_leaves_nothing(tmp_path):
    """Issue 23 bug 6: a second Ctrl-C during the first update (too impatient to wait for it) stops at once; with no
    checkpoint written, the one line says there is nothing to resume and the run folder is removed."""
    args = train_args(tmp_path, 'early', '--batch_size', '700', '--plots', 'true', epochs=3)  # ~1 s updates
    log = tmp_path / 'log.txt'
    p = popen_script(*args, log=log)
    deadline = time.monotonic() + 300
    while 'writing to' not in log.read_text():
        assert p.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.01)
    p.send_signal(signal.SIGINT)  # before the loop starts (a KeyboardInterrupt), or within the first update
    while p.poll() is None and 'SIGINT received' not in log.read_text():
        time.sleep(0.01)
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=120) == 130
    last = log.read_text().strip().splitlines()[-1]
    assert last == f'interrupted before the first checkpoint: nothing to resume; removed {tmp_path / "early"}'
    assert not (tmp_path / 'early').exists()


def test_divergence_never_overwrites_a_good_checkpoint(tmp_path):
    """Item 6: lr 1e3 diverges; exit 3 with one line; no checkpoint on disk holds a NaN/inf weight."""
    res = run_script(*train_args(tmp_path, 'nan', '--lr', '1e3', '--checkpoint_interval', '1'), expect=3)
    line = res.error_line()
    assert 'NaN/inf' in line or 'the loss is' in line
    ckpt = tmp_path / 'nan' / 'last.pth.tar'
    assert ckpt.exists() and not (tmp_path / 'nan' / 'model_best.pth.tar').exists(), res.describe()
    weights = load_checkpoint(ckpt)['state_dict'].values()
    assert all(t.isfinite().all() for t in weights if t.is_floating_point()), 'a non-finite checkpoint was written'
    assert f'{ckpt}, epoch 1 batch' in line, 'the message does not name the last (good) checkpoint'
    before = ckpt.read_bytes(), ckpt.stat().st_mtime_ns
    again = run_script('train.py', '--resume', tmp_path / 'nan', expect=3)  # the same divergence, replayed exactly
    assert str(ckpt) in again.error_line() and (ckpt.read_bytes(), ckpt.stat().st_mtime_ns) == before
    assert sorted(p.name for p in (tmp_path / 'nan').iterdir()) == ['args.yaml', 'last.pth.tar']
