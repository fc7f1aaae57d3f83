"""Jobs that survive the cluster (issue 21): the same command restarts a preempted or failed run where it stopped.

Real processes: torchrun with ``--max-restarts``, SIGKILL of one rank, SIGTERM to the job, two "nodes" on this
machine. Every continued run must end bitwise equal to an uninterrupted run of the same command.
"""
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import FULL_STACK_ARGS, free_port, popen_script, run_script, same_tensors, torchrun, train_args

import train
from timm_bot.checkpoint import load_checkpoint

pytest.importorskip('sklearn', reason='the end-to-end runs train on the embedded digits (scikit-learn)')
DDP_ARGS = (*FULL_STACK_ARGS, '--batch_size', '8', '--resume', 'auto', '--checkpoint_interval', '2')


def ddp_args(output: Path, tiny_digits: Path) -> list:
    """2 epochs of the full stack (mixup, smoothing, EMA, cosine) at 2 x 8 images: 12 updates an epoch."""
    return train_args(output, 'run', '--data_dir', tiny_digits, *DDP_ARGS, epochs=2)


@pytest.fixture(scope='session')
def ddp_reference(shared_dir, tiny_digits) -> Path:
    """The uninterrupted 2-process run that every interrupted 2-process run is compared with."""
    def produce(out: Path) -> None:
        res = run_script(*torchrun(2, *ddp_args(out, tiny_digits)))
        (out / 'log.txt').write_text(res.log)
    return shared_dir('ddp_reference', produce) / 'run'


def assert_same_run(run_dir: Path, reference: Path) -> None:
    mine, ref = load_checkpoint(run_dir / 'last.pth.tar'), load_checkpoint(reference / 'last.pth.tar')
    assert (mine['epoch'], mine['global_step']) == (ref['epoch'], ref['global_step'])
    assert same_tensors(mine['state_dict'], ref['state_dict']), 'weights differ from the uninterrupted run'
    assert same_tensors(mine['state_dict_ema'], ref['state_dict_ema'])
    assert mine['history'] == ref['history']


def wait_for_checkpoint(p: subprocess.Popen, ckpt: Path, log: Path, min_step: int) -> dict:
    """The first mid-epoch checkpoint at or after update ``min_step`` (checkpoints are replaced atomically)."""
    deadline = time.monotonic() + 300
    while True:
        assert p.poll() is None and time.monotonic() < deadline, log.read_text()
        if ckpt.exists():
            state = torch.load(ckpt, weights_only=True)
            if state['global_step'] >= min_step and state['batch_in_epoch'] > 0:
                return state
        time.sleep(0.02)


def rank_pids(torchrun_pid: int) -> dict[int, int]:
    """``{rank: pid}`` of torchrun's worker processes, from their environment."""
    children = [int(c) for t in Path(f'/proc/{torchrun_pid}/task').iterdir()
                for c in (t / 'children').read_text().split()]
    ranks = {}
    for pid in children:
        env = Path(f'/proc/{pid}/environ').read_bytes().split(b'\0')
        ranks.update({int(e[5:]): pid for e in env if e.startswith(b'RANK=')})
    return ranks


@pytest.mark.skipif(not Path('/proc/self/task').exists(), reason='finds the torchrun workers through /proc')
def test_torchrun_restarts_a_killed_rank_and_the_run_ends_bitwise_equal(tmp_path, tiny_digits, ddp_reference):
    """``torchrun --max-restarts 1`` + ``--resume auto``: rank 1 is SIGKILLed mid-epoch 2; torchrun restarts both
    ranks with the same command, they continue from last.pth.tar (each rank its own RNG states: mixup draws), and
    the final weights equal the uninterrupted run's bit for bit. The restarted group must not read the dead round's
    addresses (the process group's store keys are prefixed with the restart count)."""
    args = ['-m', 'torch.distributed.run', '--nproc_per_node', '2', '--max-restarts', '1', '--master_addr',
            '127.0.0.1', '--master_port', str(free_port()), *ddp_args(tmp_path, tiny_digits)]
    log = tmp_path / 'log.txt'
    p = popen_script(*args, log=log)
    try:
        wait_for_checkpoint(p, tmp_path / 'run' / 'last.pth.tar', log, min_step=14)
        os.kill(rank_pids(p.pid)[1], signal.SIGKILL)
        assert p.wait(timeout=300) == 0, log.read_text()
    finally:
        p.kill()
    text = log.read_text()
    assert 'resuming at epoch 2, batch ' in text and text.count('resuming at') == 1, text
    assert_same_run(tmp_path / 'run', ddp_reference)
    ckpt = load_checkpoint(tmp_path / 'run' / 'last.pth.tar')
    rng = [rank['rng'] for rank in ckpt['rank_states']]
    assert len(rng) == 2 and not torch.equal(rng[0]['torch'], rng[1]['torch']) and rng[0]['python'] != rng[1]['python']


def test_sigterm_saves_at_that_step_and_the_same_command_finishes_the_run(tmp_path, tiny_digits, reference_run):
    """One process, SIGTERM (SLURM, Kubernetes) at a random batch of epoch 2: exit 143 with one line, last.pth.tar at
    that step; the identical command (``--resume auto``) continues it to the uninterrupted run's weights."""
    args = train_args(tmp_path, 'run', '--data_dir', tiny_digits, *FULL_STACK_ARGS, '--resume', 'auto', epochs=2)
    log = tmp_path / 'log.txt'
    p = popen_script(*args, log=log)
    deadline = time.monotonic() + 300
    while not (tmp_path / 'run' / 'summary.csv').exists():  # epoch 1 done
        assert p.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.01)
    time.sleep(0.3 * torch.rand(()).item())
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=120) == 143, log.read_text()
    ckpt = load_checkpoint(tmp_path / 'run' / 'last.pth.tar')
    last = log.read_text().strip().splitlines()[-1]
    assert last.startswith(f'stopped by SIGTERM at epoch 2/2, batch {ckpt["batch_in_epoch"]} (update '
                           f'{ckpt["global_step"]})') and last.endswith('resume with: the same command (resume: auto)')
    assert ckpt['epoch'] == 1 and 0 < ckpt['batch_in_epoch'] < 12, 'not a mid-epoch checkpoint'
    res = run_script(*args)
    assert f'resuming at epoch 2, batch {ckpt["batch_in_epoch"]}' in res.log
    assert_same_run(tmp_path / 'run', reference_run)


def test_sigterm_to_torchrun_stops_both_ranks_at_one_step_and_the_same_command_finishes(tmp_path, tiny_digits,
                                                                                        ddp_reference):
    """SIGTERM to torchrun, which forwards it: both ranks finish the update, agree on the step, rank 0 saves there;
    the same command continues to the uninterrupted 2-process run's weights."""
    log = tmp_path / 'log.txt'
    p = popen_script(*torchrun(2, *ddp_args(tmp_path, tiny_digits)), log=log)
    try:
        state = wait_for_checkpoint(p, tmp_path / 'run' / 'last.pth.tar', log, min_step=4)
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=60) != 0
    finally:
        p.kill()
    text = log.read_text()
    ckpt = load_checkpoint(tmp_path / 'run' / 'last.pth.tar')
    assert f'stopped by SIGTERM at epoch {ckpt["epoch"] + 1}/2, batch {ckpt["batch_in_epoch"]}' in text, text
    assert ckpt['global_step'] > state['global_step'] and len(ckpt['rank_states']) == 2, 'not saved at the stop'
    res = run_script(*torchrun(2, *ddp_args(tmp_path, tiny_digits)))
    assert 'resuming at epoch' in res.log
    assert_same_run(tmp_path / 'run', ddp_reference)


def test_two_nodes_equal_one_node_with_two_processes(tmp_path, tiny_digits, ddp_reference):
    """Two torchrun launches (``--nnodes 2``, c10d rendezvous on 127.0.0.1), one process each: the same run as one
    node with 2 processes (same global batch and seed), bit for bit."""
    endpoint = f'127.0.0.1:{free_port()}'
    procs = [popen_script('-m', 'torch.distributed.run', '--nnodes', '2', '--nproc_per_node', '1', '--rdzv-backend',
                          'c10d', '--rdzv-endpoint', endpoint, '--rdzv-id', 'two-nodes', '--max-restarts', '0',
                          *ddp_args(tmp_path, tiny_digits), log=tmp_path / f'node{n}.txt') for n in (0, 1)]
    try:
        for n, p in enumerate(procs):
            assert p.wait(timeout=300) == 0, (tmp_path / f'node{n}.txt').read_text()
    finally:
        for p in procs:
            p.kill()
    assert_same_run(tmp_path / 'run', ddp_reference)


def test_resume_auto_refuses_a_changed_recipe_and_writes_nothing(tmp_path, reference_run, capsys):
    """The same folder with another trajectory key is refused in one line (exit 2); nothing in it changes."""
    run = tmp_path / 'ref'
    run.mkdir()
    for f in reference_run.iterdir():
        (run / f.name).write_bytes(f.read_bytes())
    before = {f.name: f.read_bytes() for f in run.iterdir()}
    argv = [str(a) for a in train_args(tmp_path, 'ref', *FULL_STACK_ARGS, '--resume', 'auto', '--mixup', '0.4',
                                       epochs=2)[1:]]
    assert train.run(argv) == 2
    err = capsys.readouterr().err
    assert "--resume cannot change mixup 0.2 -> 0.4" in err and len(err.strip().splitlines()) == 1
    assert {f.name: f.read_bytes() for f in run.iterdir()} == before
    assert train.run([*argv[:-2], '--experiment', '']) == 2  # auto needs a fixed folder name
    assert "resume='auto' needs experiment: NAME" in capsys.readouterr().err
