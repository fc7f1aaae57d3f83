"""GPU and multi-rank paths, checked on a CPU (issue 19): simulated CUDA start-up, collectives on the training device,
ranks that decide together (real gloo processes), and every rank's RNG states in the checkpoint."""
import ast
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import REPO, free_port, popen_script, read_summary, torchrun, train_args

import train
from timm_bot.checkpoint import load_checkpoint
from timm_bot.data import create_image_dataset
from timm_bot.distributed import ProcessInfo, all_reduce_sum, any_rank, init_distributed, resolve_device
from timm_bot.graceful_stop import GracefulStop
from timm_bot.sampler import ResumableSampler

pytest.importorskip('sklearn', reason='the end-to-end runs train on the embedded digits (scikit-learn)')


class FakeGpu:
    """``torch.cuda`` as on a machine with ``count`` GPUs, up to the first call that needs a real one."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, count: int = 1) -> None:
        self.bound: list[int] = []
        monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
        monkeypatch.setattr(torch.cuda, 'device_count', lambda: count)
        monkeypatch.setattr(torch._C, '_cuda_setDevice', self.bound.append)  # torch.cuda.set_device's CUDA call


def test_a_single_gpu_run_gets_past_set_device_to_its_first_real_cuda_call(monkeypatch, tmp_path, caplog):
    """With device auto and one GPU, the run binds cuda:0 and reaches the first call that needs a real GPU (moving
    the model), which fails here only because this machine has no driver; a bare 'cuda' device crashed before."""
    gpu = FakeGpu(monkeypatch)
    with pytest.raises(RuntimeError, match='NVIDIA driver'):
        train.main(train_args(tmp_path, 'gpu', '--device', 'auto')[1:])
    assert gpu.bound == [0]
    assert 'device cuda:0 (1 process(es)' in caplog.text
    assert not (tmp_path / 'gpu').exists()


@pytest.mark.parametrize('spec, local_rank, world_size, expected', [
    ('auto', 0, 1, 'cuda:0'), ('cuda', 0, 1, 'cuda:0'), ('cuda:1', 0, 1, 'cuda:1'), ('auto', 1, 2, 'cuda:1'),
    ('cuda', 1, 2, 'cuda:1'), ('cpu', 1, 2, 'cpu')])
def test_every_cuda_device_has_an_index(monkeypatch, spec, local_rank, world_size, expected):
    FakeGpu(monkeypatch, count=2)
    assert resolve_device(spec, local_rank, world_size) == torch.device(expected)


def test_one_gpu_for_several_processes_is_refused(monkeypatch):
    FakeGpu(monkeypatch, count=2)
    with pytest.raises(ValueError, match=r"device 'cuda:1' names one GPU for 2 processes: use 'cuda' or 'auto'"):
        resolve_device('cuda:1', 0, 2)


def test_collectives_run_on_the_training_device(monkeypatch):
    """NCCL reduces only accelerator tensors: a tensor left on the CPU crashed every multi-GPU run after epoch 1.
    ``meta`` stands in for the accelerator: every helper must hand torch.distributed a tensor on it."""
    seen = []
    monkeypatch.setattr(dist, 'is_initialized', lambda: True)
    monkeypatch.setattr(dist, 'all_reduce', lambda tensor, *a, **k: seen.append(tensor.device))
    meta = torch.device('meta')
    all_reduce_sum([1.0, 2.0, 3.0], meta)
    all_reduce_sum(torch.zeros(4, dtype=torch.float64), meta)  # evaluate's per-split sums come as a CPU tensor
    with pytest.raises(RuntimeError, match='meta'):  # the verdict is read back from the (meta) device
        any_rank(True, meta)
    assert seen == [meta] * 3


def test_no_collective_bypasses_the_device_helpers():
    """Every torch.distributed collective in train.py and timm_bot goes through timm_bot.distributed (the test
    above checks those) or timm's distribute_bn (module buffers, on the device)."""
    collectives = {'all_reduce', 'all_gather', 'all_gather_object', 'broadcast', 'broadcast_object_list', 'reduce',
                   'gather', 'scatter', 'barrier', 'reduce_scatter'}
    files = [REPO / 'train.py', REPO / 'validate.py', *sorted((REPO / 'timm_bot').rglob('*.py'))]
    calls = [(path.name, node.lineno) for path in files if path.name != 'distributed.py'
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Attribute) and node.attr in collectives
             and isinstance(node.value, ast.Name) and node.value.id in ('dist', 'distributed')]
    assert calls == []


def _agree(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE='2', LOCAL_RANK='0')
    cpu = torch.device('cpu')
    init_distributed(cpu, ProcessInfo.from_env(), 30)
    run = train.Run(*[None] * 12)
    run.process, run.device = ProcessInfo.from_env(), cpu
    stop = GracefulStop()
    stop.signal = signal.SIGTERM if rank == 1 else None  # only rank 1 was signalled
    loss = torch.tensor(float('nan') if rank == 1 else 0.5)  # only rank 1's loss is NaN
    calm = train.read_loss(torch.tensor(0.25 + rank), GracefulStop(), run)
    results.put((rank, (train.read_loss(loss, stop, run), calm, any_rank(rank == 0, cpu))))
    dist.destroy_process_group()


def test_ranks_agree_on_a_nan_loss_a_stop_signal_and_a_skipped_batch():
    """Two real gloo processes: what one rank sees (a NaN loss, SIGTERM, no readable batch) both act on."""
    ctx = mp.get_context('spawn')
    results, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=_agree, args=(rank, port, results)) for rank in (0, 1)]
    for p in procs:
        p.start()
    got = dict(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    for rank in (0, 1):
        (loss, stopping), (calm_loss, calm_stop), skip = got[rank]
        assert loss != loss and stopping and skip  # NaN and a stop on every rank
        assert calm_loss == 0.25 + rank and not calm_stop  # each rank's own loss otherwise


def _first_batch_files(root: Path, batch_size: int, rank: int, seed: int) -> list[Path]:
    """The files of ``rank``'s first batch of epoch 0 in train.py's order (2 ranks)."""
    dataset = create_image_dataset(root, 'train')
    sampler = ResumableSampler(len(dataset), batch_size, seed, rank, 2)
    sampler.set_epoch(0)
    return [root / 'train' / dataset.filename(i) for i, _ in list(sampler)[:batch_size]]


def test_an_unreadable_batch_on_one_rank_is_skipped_by_every_rank(tmp_path, tiny_digits):
    """skip_bad_images with 2 ranks: rank 1's first batch is all unreadable, rank 0's is fine. Every rank skips it
    (before, rank 1 alone skipped and the ranks' collectives fell out of step until dist_timeout)."""
    root = tmp_path / 'data'
    shutil.copytree(tiny_digits, root)
    for path in _first_batch_files(root, 4, rank=1, seed=42):
        path.write_bytes(b'not a jpeg')
    args = train_args(tmp_path, 'run', '--data_dir', root, '--batch_size', '4', '--skip_bad_images', 'true',
                      '--dist_timeout', '30')
    p = popen_script(*torchrun(2, *args), log=tmp_path / 'log.txt')
    try:
        assert p.wait(timeout=240) == 0, (tmp_path / 'log.txt').read_text()
    finally:
        p.kill()
    log = (tmp_path / 'log.txt').read_text()
    assert '4 images skipped' in log and len(read_summary(tmp_path / 'run')) == 1
    ckpt = load_checkpoint(tmp_path / 'run' / 'last.pth.tar')
    assert ckpt['global_step'] == 200 // 8 - 1, 'every rank skips the same batch: one update fewer'


def test_resuming_with_another_number_of_processes_is_refused(tmp_path, reference_run, capsys):
    """The data order and global batch depend on the process count: a 1-process run is not resumed by 2 ranks."""
    run = tmp_path / 'r'
    shutil.copytree(reference_run, run)
    env = dict(RANK='0', LOCAL_RANK='0', WORLD_SIZE='2')
    with pytest.MonkeyPatch.context() as m:
        for k, v in env.items():
            m.setenv(k, v)
        assert train.run(['--resume', str(run)]) == 2
    err = capsys.readouterr().err
    assert 'trained by 1 process(es), this is 2' in err and len(err.strip().splitlines()) == 1
