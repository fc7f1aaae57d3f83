"""Shared fixtures: small real datasets written from the embedded digits, and real runs of train.py shared by tests.

Runs are plain subprocesses (``python train.py ...``) with one intra-op thread, CPU only, offline. The runs several
tests compare against are made once per session, even under ``pytest -n 2`` (a file lock and a shared folder).
"""
import csv
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / 'shared' / 'data'
QUICKSTART = 'hparams/quickstart.yaml'
FULL_STACK_ARGS = ('--mixup', '0.2', '--smoothing', '0.1', '--sched', 'cosine', '--warmup_epochs', '1',
                   '--batch_size', '16', '--deterministic', 'true', '--seed', '7', '--model_ema', 'true',
                   '--model_ema_decay', '0.9')


@pytest.fixture(autouse=True, scope='session')
def _one_torch_thread():
    """``pytest -n 2`` on 2 cores: one intra-op thread per worker (oversubscription made steps ~50x slower)."""
    torch.set_num_threads(1)


@pytest.fixture(scope='session')
def shared_data() -> Path:
    """``../shared/data`` (CIFAR-10 tars); skips the test when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f'shared data not available at {SHARED_DATA}')
    return SHARED_DATA


@dataclass
class ScriptResult:
    cmd: list
    rc: int
    out: str
    err: str

    @property
    def log(self) -> str:
        return self.out + self.err

    def describe(self) -> str:
        return (f'$ {" ".join(map(str, self.cmd))}\nexit code {self.rc}\n--- stdout ---\n{self.out[-3000:]}\n'
                f'--- stderr ---\n{self.err[-3000:]}')

    def error_line(self) -> str:
        """The one ``error:`` line a failed run prints, last, with no traceback."""
        lines = [line for line in self.err.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith('error: ')]
        assert len(errors) == 1 and lines[-1] == errors[0] and 'Traceback' not in self.err, self.describe()
        return errors[0]


def script_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(('HF_', 'HUGGING_FACE', 'RANK', 'WORLD_SIZE',
                                                                        'LOCAL_RANK', 'MASTER_'))}
    env.update(OMP_NUM_THREADS='1', PYTHONHASHSEED='0', CUDA_VISIBLE_DEVICES='', PYTHONUNBUFFERED='1',
               HF_HUB_OFFLINE='1')
    env.update(extra)
    return env


def run_script(*args, expect: int | None = 0, env: dict | None = None, timeout: float = 400) -> ScriptResult:
    """``python ARGS`` from the repository root (e.g. ``run_script('train.py', '--hparams', ...)``)."""
    cmd = [sys.executable, *map(str, args)]
    p = subprocess.run(cmd, cwd=REPO, env=env or script_env(), capture_output=True, text=True, timeout=timeout)
    res = ScriptResult(cmd, p.returncode, p.stdout, p.stderr)
    assert expect is None or res.rc == expect, f'expected exit code {expect}\n{res.describe()}'
    return res


def popen_script(*args, log: Path, env: dict | None = None) -> subprocess.Popen:
    """Start ``python ARGS`` in the background, stdout+stderr to ``log``."""
    with open(log, 'w') as f:
        return subprocess.Popen([sys.executable, *map(str, args)], cwd=REPO, env=env or script_env(), stdout=f,
                                stderr=subprocess.STDOUT)


def train_args(output: Path, experiment: str, *extra, epochs: int = 1) -> list[str]:
    """quickstart.yaml (resnet18d_tiny_bot, 32x32) for ``epochs``, no warmup, no workers, no plots, + ``extra``."""
    return ['train.py', '--hparams', QUICKSTART, '--epochs', str(epochs), '--warmup_epochs', '0', '--workers', '0',
            '--plots', 'false', '--output', str(output), '--experiment', experiment, *map(str, extra)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def torchrun(nproc: int, *args) -> list:
    return ['-m', 'torch.distributed.run', '--nproc_per_node', str(nproc), '--master_addr', '127.0.0.1',
            '--master_port', str(free_port()), *args]


def read_summary(run_dir: Path) -> list[dict]:
    with open(run_dir / 'summary.csv', newline='') as f:
        return list(csv.DictReader(f))


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope='session')
def shared_dir(tmp_path_factory: pytest.TempPathFactory):
    """``shared_dir(name, produce)``: a folder made once per session by ``produce(folder)``, also under xdist."""
    from filelock import FileLock  # a torch dependency

    base = tmp_path_factory.getbasetemp()
    base = base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base

    def get(name: str, produce) -> Path:
        folder = base / f'shared-{name}'
        with FileLock(str(base / f'shared-{name}.lock')):
            if not (folder / '.done').exists():
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True)
                produce(folder)
                (folder / '.done').touch()
        return folder

    return get


@pytest.fixture(scope='session')
def digits_folder(shared_dir) -> Path:
    """``train/`` and ``val/`` class folders of 30 digits JPEGs per class. Shared: copy before modifying."""
    pytest.importorskip('sklearn', reason='the digits fixtures need scikit-learn (pip install timm-bot[demo])')
    from helpers_data import write_image_folder
    return shared_dir('digits_folder', lambda root: [write_image_folder(root, split=s, limit_per_class=30)
                                                     for s in ('train', 'val')])


@pytest.fixture(scope='session')
def digits_tar(shared_dir) -> Path:
    """``train.tar`` and ``val.tar`` (members ``<digit>/<i>.jpg``, 30 per class). Shared: do not modify."""
    pytest.importorskip('sklearn', reason='the digits fixtures need scikit-learn (pip install timm-bot[demo])')
    from helpers_data import write_image_folder
    return shared_dir('digits_tar', lambda root: [write_image_folder(root, split=s, limit_per_class=30, as_tar=True)
                                                  for s in ('train', 'val')])


@pytest.fixture(scope='session')
def tiny_digits(shared_dir) -> Path:
    """train/ 20 and val/ 10 JPEGs per class (200 / 100 images)."""
    pytest.importorskip('sklearn', reason='the digits fixtures need scikit-learn (pip install timm-bot[demo])')
    from helpers_data import write_image_folder

    def produce(root: Path) -> None:
        write_image_folder(root, split='train', limit_per_class=20)
        write_image_folder(root, split='val', limit_per_class=10)
    return shared_dir('tiny_digits', produce)


@pytest.fixture(scope='session')
def baseline_run(shared_dir) -> Path:
    """The paper's baseline (section 2), 2 epochs on the embedded digits: step decay after epoch 1, no label
    smoothing, no zero-gamma, weight decay on every parameter, batch 32, with plots. Also a distillation teacher."""
    pytest.importorskip('sklearn')

    def produce(out: Path) -> None:
        res = run_script(*train_args(out, 'baseline', '--sched', 'step', '--decay_milestones', '[1]', '--smoothing',
                                     '0', '--zero_init_last', 'false', '--no_bias_decay', 'false', '--batch_size',
                                     '32', '--plots', 'true', epochs=2))
        (out / 'log.txt').write_text(res.log)
    return shared_dir('baseline_run', produce) / 'baseline'


@pytest.fixture(scope='session')
def reference_run(shared_dir, tiny_digits) -> Path:
    """2 uninterrupted epochs of the full stack (mixup, label smoothing, warmup + cosine, EMA, deterministic) on
    ``tiny_digits`` (12 updates per epoch): the reference of the resume tests. ``../epoch1.pth.tar`` is its
    ``last.pth.tar`` as saved at the end of epoch 1 (copied while the run went on)."""
    def produce(out: Path) -> None:
        args = train_args(out, 'ref', '--data_dir', tiny_digits, *FULL_STACK_ARGS, epochs=2)
        p = popen_script(*args, log=out / 'log.txt')
        while p.poll() is None and not (out / 'epoch1.pth.tar').exists():
            if (out / 'ref' / 'summary.csv').exists():  # written right after epoch 1's last.pth.tar
                shutil.copyfile(out / 'ref' / 'last.pth.tar', out / 'epoch1.pth.tar')
            time.sleep(0.01)
        assert p.wait() == 0 and (out / 'epoch1.pth.tar').exists(), (out / 'log.txt').read_text()

    out = shared_dir('reference_run', produce)
    ckpt = torch.load(out / 'epoch1.pth.tar', weights_only=True)
    assert (ckpt['epoch'], ckpt['batch_in_epoch']) == (1, 0)
    return out / 'ref'
