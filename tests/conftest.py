"""Shared pytest fixtures for timm-bot's tests."""
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

# --------------------------------------------------------------------------------------------------------------------
# Data: real image data beside the repository, and small class-folder / tar datasets written from the embedded digits.
# --------------------------------------------------------------------------------------------------------------------

SHARED_DATA = Path(__file__).resolve().parents[2] / 'shared' / 'data'
DIGITS_PER_CLASS = 30  # images per class in digits_folder / digits_tar (300 train, 300 val)


@pytest.fixture(scope='session')
def shared_data() -> Path:
    """``../shared/data`` beside the repository (cifar10/, cifar10-mini/ tars); skips the test when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f'shared data not available at {SHARED_DATA}')
    return SHARED_DATA


@pytest.fixture(scope='session')
def digits_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root holding ``train/`` and ``val/`` class-folder trees (``<digit>/<i>.jpg``, 30 JPEGs per class).

    Session-scoped and shared: copy it before modifying anything inside.
    """
    pytest.importorskip('sklearn', reason='the digits fixtures need scikit-learn (pip install timm-bot[demo])')
    from timm_bot.data import write_image_folder

    root = tmp_path_factory.mktemp('digits_folder')
    for split in ('train', 'val'):
        write_image_folder(root, split=split, limit_per_class=DIGITS_PER_CLASS)
    return root


@pytest.fixture(scope='session')
def digits_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root holding ``train.tar`` and ``val.tar`` (members ``<digit>/<i>.jpg``, 30 JPEGs per class).

    Session-scoped and shared: do not modify.
    """
    pytest.importorskip('sklearn', reason='the digits fixtures need scikit-learn (pip install timm-bot[demo])')
    from timm_bot.data import write_image_folder

    root = tmp_path_factory.mktemp('digits_tar')
    for split in ('train', 'val'):
        write_image_folder(root, split=split, limit_per_class=DIGITS_PER_CLASS, as_tar=True)
    return root


@pytest.fixture(autouse=True, scope='session')
def _one_torch_thread_per_worker():
    """CI runs ``pytest -n 2`` on 2 cores: one intra-op thread per worker. Letting each worker use both cores
    made tiny-model steps up to ~50x slower through oversubscription."""
    torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------------------------------
# End-to-end runs of the real scripts (tests/test_train.py, tests/test_validate.py, tests/test_reliability.py).
# train.py / validate.py / torchrun run as subprocesses from the repository root, one intra-op thread each, on small
# real data. The few runs several tests compare against are session fixtures, computed once even under
# ``pytest -n 2`` (a file lock and a shared folder, as pytest-xdist's docs suggest).
# --------------------------------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = 'hparams/quickstart.yaml'

# Runs a batch of script invocations from ONE interpreter (a zygote): it imports train.py and validate.py (so torch,
# timm and timm_bot) once, then forks a fresh child per case which runs the script file as ``__main__`` with its
# sys.argv, environment and its own stdout/stderr files -- exactly what ``python train.py ARGS`` executes, minus the
# ~5 s of imports per process that would otherwise dominate fail-fast cases. Exit codes come from the script's own
# ``sys.exit``; an uncaught exception prints its traceback and exits 1 as Python does.
_ZYGOTE = r'''
import json, os, runpy, shutil, sys, traceback
sys.path.insert(0, os.getcwd())
cases = json.load(open(sys.argv[1]))
import train, validate  # noqa: the heavy imports, once
codes = []
for case in cases:
    for src, dst in case['before']:  # copies made between cases (shutil.copy2 keeps the mtime)
        shutil.copy2(src, dst)
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.dup2(os.open(case['stdout'], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
            os.dup2(os.open(case['stderr'], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
            sys.stdout = open(1, 'w', closefd=False); sys.stderr = open(2, 'w', closefd=False)
            os.environ.update(case['env'])
            for k in case['unset_env']:
                os.environ.pop(k, None)
            script = case['script']
            if script.endswith('.py'):
                sys.argv = [script, *case['argv']]
                runpy.run_path(script, run_name='__main__')
            else:  # python -m MODULE: run it fresh, as the interpreter would (not the copy train.py imported)
                sys.modules.pop(script, None)
                sys.argv = [script, *case['argv']]
                runpy.run_module(script, run_name='__main__', alter_sys=True)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if not isinstance(e.code, int) and e.code is not None:
                print(e.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(code)
    codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
print(json.dumps(codes))
'''


@dataclass
class Case:
    """One invocation for :meth:`Scripts.run_many`: ``python SCRIPT ARGV`` (or ``python -m MODULE ARGV``)."""
    argv: list
    script: str = 'train.py'
    env: dict = field(default_factory=dict)
    unset_env: tuple = ()
    before: list = field(default_factory=list)  # (src, dst) files to copy right before this case starts


@dataclass
class ScriptResult:
    """Outcome of one script run."""
    cmd: list
    rc: int
    out: str
    err: str
    seconds: float

    @property
    def log(self) -> str:
        return self.out + self.err

    def describe(self) -> str:
        return (f'$ {" ".join(map(str, self.cmd))}\nexit code {self.rc} after {self.seconds:.1f} s\n'
                f'--- stdout (tail) ---\n{self.out[-3000:]}\n--- stderr (tail) ---\n{self.err[-3000:]}')


class Scripts:
    """Runs the repository's scripts as the user would, with a reproducible environment."""

    def __init__(self) -> None:
        self.repo = REPO

    @staticmethod
    def env(**extra: str) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(('HF_', 'HUGGING_FACE'))}
        # one thread per process, fixed hashing, CPU only, no stray distributed settings from the caller
        env.update(OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONHASHSEED='0', CUDA_VISIBLE_DEVICES='',
                   PYTHONUNBUFFERED='1', PYTHONDONTWRITEBYTECODE='1', HF_HUB_OFFLINE='1')
        for k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT', 'LOCAL_WORLD_SIZE'):
            env.pop(k, None)
        env.update(extra)
        return env

    @staticmethod
    def train_args(output: Path, experiment: str, *extra: str, epochs: int = 1) -> list[str]:
        """quickstart.yaml (resnet18d_tiny_bot, 32x32) with ``epochs``, no warmup, no workers, no plots + ``extra``."""
        return ['--hparams', QUICKSTART, '--epochs', str(epochs), '--warmup_epochs', '0', '--workers', '0',
                '--plots', 'false', '--output', str(output), '--experiment', experiment, *map(str, extra)]

    def run(self, cmd: list, *, env: dict | None = None, timeout: float = 300, expect: int | None = 0) -> ScriptResult:
        tic = time.perf_counter()
        p = subprocess.run([str(c) for c in cmd], cwd=self.repo, env=env or self.env(), capture_output=True,
                           text=True, timeout=timeout)
        res = ScriptResult(cmd, p.returncode, p.stdout, p.stderr, time.perf_counter() - tic)
        if expect is not None and res.rc != expect:
            raise AssertionError(f'expected exit code {expect}\n{res.describe()}')
        return res

    def train(self, *args: str, **kwargs) -> ScriptResult:
        return self.run([sys.executable, 'train.py', *args], **kwargs)

    def validate(self, *args: str, **kwargs) -> ScriptResult:
        return self.run([sys.executable, 'validate.py', *args], **kwargs)

    def torchrun_cmd(self, nproc: int, *args: str) -> list:
        return [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', str(nproc),
                '--master_addr', '127.0.0.1', '--master_port', str(free_port()), 'train.py', *args]

    def popen(self, cmd: list, log_prefix: Path, env: dict | None = None, **kwargs) -> subprocess.Popen:
        """Start ``cmd`` in the background, stdout/stderr to ``log_prefix``.out/.err (no pipe to fill up)."""
        out = open(f'{log_prefix}.out', 'w')
        err = open(f'{log_prefix}.err', 'w')
        p = subprocess.Popen([str(c) for c in cmd], cwd=self.repo, env=env or self.env(), stdout=out, stderr=err,
                             **kwargs)
        p.log_prefix = log_prefix
        out.close()
        err.close()
        return p

    @staticmethod
    def finish(p: subprocess.Popen, cmd: list, timeout: float = 300, seconds: float = 0.0) -> ScriptResult:
        p.wait(timeout=timeout)
        return ScriptResult(cmd, p.returncode, Path(f'{p.log_prefix}.out').read_text(),
                            Path(f'{p.log_prefix}.err').read_text(), seconds)

    def run_many(self, cases: list[Case], workdir: Path, env: dict | None = None,
                 timeout: float = 600) -> list[ScriptResult]:
        """Run ``cases`` one after the other, each in its own process forked from one interpreter (see _ZYGOTE)."""
        workdir.mkdir(parents=True, exist_ok=True)
        spec = [{'script': c.script, 'argv': [str(a) for a in c.argv], 'env': {k: str(v) for k, v in c.env.items()},
                 'unset_env': list(c.unset_env), 'before': [[str(a), str(b)] for a, b in c.before],
                 'stdout': str(workdir / f'case{i}.out'),
                 'stderr': str(workdir / f'case{i}.err')} for i, c in enumerate(cases)]
        (workdir / 'cases.json').write_text(json.dumps(spec))
        tic = time.perf_counter()
        driver = self.run([sys.executable, '-c', _ZYGOTE, workdir / 'cases.json'], env=env, timeout=timeout)
        codes = json.loads(driver.out.strip().splitlines()[-1])
        seconds = (time.perf_counter() - tic) / max(len(cases), 1)
        cmd = {True: [sys.executable], False: [sys.executable, '-m']}
        return [ScriptResult([*cmd[c['script'].endswith('.py')], c['script'], *c['argv']], rc,
                             Path(c['stdout']).read_text(), Path(c['stderr']).read_text(), seconds)
                for c, rc in zip(spec, codes)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def read_summary(run_dir: Path) -> list[dict]:
    with open(run_dir / 'summary.csv', newline='') as f:
        return list(csv.DictReader(f))


def _differences(a, b, where: str) -> list[str]:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
        return [] if same else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f'{where}: keys {sorted(map(str, set(a) ^ set(b)))[:5]}']
        return [d for k in a for d in _differences(a[k], b[k], f'{where}.{k}')]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f'{where}: length {len(a)} vs {len(b)}']
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f'{where}[{i}]')]
    return [] if a == b else [f'{where}: {a!r} vs {b!r}']


def checkpoint_differences(a: Path, b: Path, keys: tuple = ('state_dict',)) -> list[str]:
    """Where two train.py checkpoints differ in ``keys`` (tensors compared bitwise, dtype included)."""
    from timm_bot.checkpoint import load_checkpoint

    ca, cb = load_checkpoint(a), load_checkpoint(b)
    return [d for key in keys for d in _differences(ca.get(key), cb.get(key), key)]


@pytest.fixture(scope='session')
def scripts() -> Scripts:
    return Scripts()


@pytest.fixture(scope='session')
def shared_dir(tmp_path_factory: pytest.TempPathFactory):
    """``shared_dir(name, produce)``: a folder made once per test session by ``produce(folder)``, even with xdist."""
    from filelock import FileLock  # a torch dependency

    base = tmp_path_factory.getbasetemp()
    if os.environ.get('PYTEST_XDIST_WORKER'):
        base = base.parent  # shared by the workers of this session only (basetemp is per session)

    def get(name: str, produce) -> Path:
        folder = base / f'shared-{name}'
        with FileLock(str(base / f'shared-{name}.lock')):
            if not (folder / '.done').exists():
                if folder.exists():
                    shutil.rmtree(folder)
                folder.mkdir(parents=True)
                produce(folder)
                (folder / '.done').touch()
        return folder

    return get


def _encode(obj):
    if isinstance(obj, ScriptResult):
        return {'__result__': [[str(c) for c in obj.cmd], obj.rc, obj.out, obj.err, obj.seconds]}
    if isinstance(obj, Path):
        return {'__path__': str(obj)}
    raise TypeError(f'cannot store {type(obj).__name__}')


def _decode(obj: dict):
    if '__result__' in obj:
        return ScriptResult(*obj['__result__'])
    if '__path__' in obj:
        return Path(obj['__path__'])
    return obj


@pytest.fixture(scope='session')
def shared_results(shared_dir):
    """``shared_results(name, produce)``: ``produce(folder)``'s result (JSON-able, with ScriptResult and Path values),
    computed once per test session even when pytest-xdist spreads a module's tests over several workers (a
    module-scoped fixture would run once per worker)."""

    def get(name: str, produce) -> dict:
        def store(folder: Path) -> None:
            (folder / 'result.json').write_text(json.dumps(produce(folder), default=_encode))

        folder = shared_dir(name, store)
        return json.loads((folder / 'result.json').read_text(), object_hook=_decode)

    return get


@pytest.fixture(scope='session')
def tiny_digits(shared_dir) -> Path:
    """Class folders from the digits: train/ 20 and val/ 10 JPEGs per class (200 / 100 images, 10 classes)."""
    pytest.importorskip('sklearn', reason='the digits fixtures need scikit-learn (pip install timm-bot[demo])')
    from timm_bot.data import write_image_folder

    def produce(root: Path) -> None:
        write_image_folder(root, split='train', limit_per_class=20)
        write_image_folder(root, split='val', limit_per_class=10)

    return shared_dir('tiny_digits', produce)


@pytest.fixture(scope='session')
def baseline_run(scripts, shared_dir) -> Path:
    """The paper's baseline (section 2) on the embedded digits, 2 epochs: step decay (lr / 10 after epoch 1),
    no label smoothing, Xavier init, no zero-gamma, weight decay on every parameter, explicit lr 0.1 at batch 32,
    with plots. Also the distillation teacher and the 10-class checkpoint of the mismatch tests."""
    pytest.importorskip('sklearn')

    def produce(out: Path) -> None:
        res = scripts.train(*scripts.train_args(out, 'baseline', '--sched', 'step', '--decay_milestones', '[1]',
                                                '--smoothing', '0', '--weight_init', 'xavier',
                                                '--zero_init_last', 'false', '--no_bias_decay', 'false',
                                                '--batch_size', '32', '--plots', 'true', epochs=2))
        (out / 'log.txt').write_text(res.log)

    return shared_dir('baseline_run', produce) / 'baseline'


FULL_STACK_ARGS = ('--mixup', '0.2', '--smoothing', '0.1', '--sched', 'cosine', '--warmup_epochs', '1',
                   '--batch_size', '16', '--deterministic', 'true', '--seed', '7')


@pytest.fixture(scope='session')
def reference_run(scripts, shared_dir, tiny_digits) -> Path:
    """Uninterrupted 2-epoch run of the full stack (mixup 0.2 + label smoothing + warmup + cosine, deterministic) on
    ``tiny_digits`` (12 updates per epoch): the reference of the resume tests. ``epoch1.pth.tar`` beside it is its
    ``last.pth.tar`` as saved at the end of epoch 1 (copied while the run went on)."""

    def produce(out: Path) -> None:
        cmd = [sys.executable, 'train.py',
               *scripts.train_args(out, 'ref', '--data_dir', tiny_digits, *FULL_STACK_ARGS, epochs=2)]
        p = scripts.popen(cmd, out / 'log')
        run_dir, copied = out / 'ref', False
        while p.poll() is None and not copied:
            if (run_dir / 'summary.csv').exists():  # written right after epoch 1's last.pth.tar
                shutil.copyfile(run_dir / 'last.pth.tar', out / 'epoch1.pth.tar')
                copied = True
            time.sleep(0.01)
        res = scripts.finish(p, cmd)
        (out / 'log.txt').write_text(res.log)
        assert res.rc == 0, res.describe()
        assert copied, 'the run ended before its epoch-1 checkpoint could be copied'

    out = shared_dir('reference_run', produce)
    from timm_bot.checkpoint import load_checkpoint

    ck = load_checkpoint(out / 'epoch1.pth.tar')
    assert (ck['epoch'], ck['batch_in_epoch']) == (1, 0), 'epoch1.pth.tar is not the end-of-epoch-1 checkpoint'
    return out / 'ref'


@pytest.fixture(scope='session')
def ddp_data(shared_dir) -> Path:
    """train/ 16 per class (160 images: 10 global batches of 16), val/ 3 per class minus one (29: an odd count, so
    the two ranks get shards of 15 and 14)."""
    pytest.importorskip('sklearn')
    from timm_bot.data import write_image_folder

    def produce(root: Path) -> None:
        write_image_folder(root, split='train', limit_per_class=16)
        write_image_folder(root, split='val', limit_per_class=3)
        (root / 'val' / '9' / '0002.jpg').unlink()

    return shared_dir('ddp_data', produce)


DDP_ARGS = ('--lr', 'null', '--lr_base', '1.6', '--lr_base_size', '256', '--mixup', '0', '--deterministic', 'true')


@pytest.fixture(scope='session')
def ddp_run(scripts, shared_dir, ddp_data) -> tuple[Path, str]:
    """``torchrun --nproc_per_node 2 train.py`` (gloo, CPU), batch 8 per rank -> global 16, lr by linear scaling
    (1.6 x 16/256 = 0.1), 1 epoch."""
    def produce(out: Path) -> None:
        cmd = scripts.torchrun_cmd(2, *scripts.train_args(out, 'ddp', '--data_dir', ddp_data, '--batch_size', '8',
                                                          *DDP_ARGS))
        res = scripts.run(cmd, timeout=300)
        (out / 'log.txt').write_text(res.log)

    out = shared_dir('ddp_run', produce)
    return out / 'ddp', (out / 'log.txt').read_text()
