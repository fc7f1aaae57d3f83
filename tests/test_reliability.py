"""Reliability of train.py / validate.py (issue 7): every test really does the bad thing to the real scripts --
SIGKILL mid-epoch and mid-write, bad hparams, broken images, diverging loss, malicious pickles, Hub tokens, a dead
distributed rank -- and checks the promised outcome.

Runs that must be killed are plain ``python train.py`` / ``torchrun`` subprocesses. The many fail-fast invocations
(and a few short trainings) go through ``Scripts.run_many``: one subprocess that imports torch/timm once and forks a
child per invocation which executes the script as ``__main__`` with its own argv and environment (conftest._ZYGOTE).
"""
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import DDP_ARGS, FULL_STACK_ARGS, Case, checkpoint_differences, read_summary

from timm_bot.checkpoint import load_checkpoint

pytest.importorskip('sklearn', reason='the end-to-end runs train on the embedded digits (scikit-learn)')
pytestmark = pytest.mark.slow


def one_error_line(res) -> str:
    """The single non-empty stderr line of a run that failed at setup (the contract for user-fixable errors)."""
    lines = [line for line in res.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith('error: '), f'not one "error:" line:\n{res.describe()}'
    return lines[0]


def final_error_line(res) -> str:
    """For a run that failed while training, after its INFO log lines (which go to stderr too): the error is one
    line, the last one, and no traceback is printed."""
    lines = [line for line in res.err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith('error: ')]
    assert len(errors) == 1 and lines[-1] == errors[0] and 'Traceback' not in res.err, \
        f'the error is not one final "error:" line:\n{res.describe()}'
    return errors[0]


# ---------------------------------------------------------------------------------------------------------------------
# 1. Exact resume after SIGKILL mid-epoch
# ---------------------------------------------------------------------------------------------------------------------

def kill_mid_epoch(runs: list[dict], min_step: int, timeout: float = 240) -> None:
    """For each run (``p``: Popen, ``ckpt``: its last.pth.tar, ``delay``), all polled together: wait until ``ckpt``
    holds a mid-epoch checkpoint at update >= ``min_step``, let the run go on for ``delay`` seconds (so that it dies
    between two checkpoints, at an arbitrary batch), then SIGKILL it. Sets ``killed_at``: that checkpoint's update."""
    deadline = time.monotonic() + timeout
    pending = list(runs)
    for run in pending:
        run['mtime'], run['kill_time'] = None, None
    while pending:
        assert time.monotonic() < deadline, 'timed out waiting for mid-epoch checkpoints'
        for run in list(pending):
            p, ckpt = run['p'], run['ckpt']
            if run['kill_time'] is not None and time.monotonic() >= run['kill_time']:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
                pending.remove(run)
                continue
            assert p.poll() is None, f'the run ended (exit code {p.returncode}) before it could be killed mid-epoch'
            if run['kill_time'] is None and ckpt.exists() and ckpt.stat().st_mtime_ns != run['mtime']:
                run['mtime'] = ckpt.stat().st_mtime_ns
                state = torch.load(ckpt, map_location='cpu', weights_only=True)  # atomic replace: always complete
                if state['global_step'] >= min_step and state['batch_in_epoch'] > 0:
                    run['killed_at'] = state['global_step']
                    run['kill_time'] = time.monotonic() + run['delay']
        time.sleep(0.005)


@pytest.fixture(scope='module')
def killed_and_resumed(scripts, shared_results, reference_run, tiny_digits) -> dict:
    """The reference run's hparams with ``--checkpoint_interval 2``, with 0 and with 2 loader workers (both at
    once), SIGKILLed during epoch 2 (12 updates per epoch), then each resumed with ``--resume``."""
    return shared_results('sigkill', lambda root: _kill_and_resume(scripts, root, tiny_digits))


def _kill_and_resume(scripts, root: Path, tiny_digits: Path) -> dict:
    rng = random.Random()
    runs = {}
    for workers in (0, 2):
        args = [*scripts.train_args(root, f'w{workers}', '--data_dir', tiny_digits, *FULL_STACK_ARGS, epochs=2),
                '--workers', str(workers), '--checkpoint_interval', '2']
        cmd = [sys.executable, 'train.py', *args]
        runs[workers] = dict(args=args, p=scripts.popen(cmd, root / f'w{workers}'), delay=rng.uniform(0.0, 0.25))
    for workers, run in runs.items():
        run['ckpt'] = root / f'w{workers}' / 'last.pth.tar'
    try:
        kill_mid_epoch(list(runs.values()), min_step=14)
    finally:
        for run in runs.values():
            if run['p'].poll() is None:
                run['p'].kill()
                run['p'].wait()
    for run in runs.values():
        ckpt = run['ckpt']
        run['rc'] = run['p'].returncode
        state = load_checkpoint(ckpt)
        run['resume_from'] = (state['epoch'], state['batch_in_epoch'], state['global_step'])
        run['files_after_kill'] = sorted(p.name for p in ckpt.parent.iterdir())
    results = scripts.run_many([Case([*run['args'], '--resume', root / f'w{w}' / 'last.pth.tar'])
                                for w, run in runs.items()], root / 'resume-logs')
    for run, res in zip(runs.values(), results):
        run['resumed'] = res
    keep = ('delay', 'killed_at', 'rc', 'resume_from', 'files_after_kill', 'resumed')
    return {str(w): dict({k: run[k] for k in keep}, run_dir=root / f'w{w}') for w, run in runs.items()}


@pytest.mark.parametrize('workers', [0, 2])
def test_sigkill_mid_epoch_then_resume_is_bitwise_identical(killed_and_resumed, reference_run, workers):
    """Mixup + label smoothing + warmup/cosine, deterministic: the resumed run must end with exactly the weights
    (and optimizer state, history) of the uninterrupted reference run, and the same summary.csv rows."""
    run = killed_and_resumed[str(workers)]
    assert run['rc'] == -signal.SIGKILL
    epoch, batch, step = run['resume_from']
    assert epoch == 1 and 0 < batch < 12 and step >= 14, f'not killed mid-epoch 2: {run["resume_from"]}'
    res = run['resumed']
    assert res.rc == 0, res.describe()
    assert f'epoch {epoch}, batch {batch}, update {step}' in res.log
    context = f'(killed {run["delay"]:.3f} s after the update-{run["killed_at"]} checkpoint, resumed at {step})'
    diffs = checkpoint_differences(reference_run / 'last.pth.tar', run['run_dir'] / 'last.pth.tar',
                                   keys=('state_dict', 'optimizer'))
    assert not diffs, f'{len(diffs)} tensors differ from the uninterrupted run {context}, e.g. {diffs[:4]}'
    assert read_summary(run['run_dir']) == read_summary(reference_run), context


# ---------------------------------------------------------------------------------------------------------------------
# 2. Atomic checkpoints: SIGKILL in the middle of save_checkpoint
# ---------------------------------------------------------------------------------------------------------------------

_WRITER = r'''
import os, random, shutil, signal, sys, time
import torch
from timm_bot.checkpoint import save_checkpoint
path, rounds = sys.argv[1], int(sys.argv[2])
folder = os.path.dirname(path)
big = 8_000_000  # 32 MB of float32 per write: a write takes long enough to be hit
save_checkpoint({'round': -1, 'k': -1, 'w': torch.zeros(big)}, path)
rng = random.Random()
for r in range(rounds):
    pid = os.fork()
    if pid == 0:  # writer: overwrite the checkpoint again and again
        k = 0
        while True:
            save_checkpoint({'round': r, 'k': k, 'w': torch.full((big,), float(k))}, path)
            k += 1
    time.sleep(rng.uniform(0.05, 0.6))
    writing = [n for n in os.listdir(folder) if n.endswith('.tmp') and f'.{pid}.' in n]  # this writer's
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    shutil.copyfile(path, f'{path}.after-kill-{r}')
    print(r, len(writing), flush=True)
'''


def test_sigkill_during_checkpoint_write_leaves_the_previous_file_loadable(scripts, tmp_path):
    """A process overwriting a 32 MB last.pth.tar in a loop is SIGKILLed at random times, 6 times: after every
    kill last.pth.tar is a complete checkpoint (loads with weights_only, untorn payload); what the killed writes
    leave behind are hidden temp files, never the checkpoint's name."""
    path = tmp_path / 'last.pth.tar'
    res = scripts.run([sys.executable, '-c', _WRITER, path, '6'], timeout=300)
    writing_at_kill = [int(line.split()[1]) for line in res.out.splitlines()]
    assert sum(writing_at_kill) > 0, \
        f'no kill landed while a write was in progress (temp files at kill time: {writing_at_kill})'
    for r in range(6):
        state = load_checkpoint(f'{path}.after-kill-{r}')
        assert state['round'] in (r, r - 1, -1) and state['w'].shape == (8_000_000,)
        assert torch.equal(state['w'], torch.full_like(state['w'], float(max(state['k'], 0)))), 'torn payload'
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.endswith('.tmp'))
    assert all(n.startswith('.last.pth.tar.') for n in leftovers), leftovers
    torn = 0
    for name in leftovers:  # some were killed inside torch.save (torn), others before the rename (complete)
        try:
            load_checkpoint(tmp_path / name)
        except ValueError:
            torn += 1
    print(f'{len(leftovers)} temp files left by {len(writing_at_kill)} kills, {torn} of them torn')
    load_checkpoint(path)


# ---------------------------------------------------------------------------------------------------------------------
# 3-7: bad hparams, bad data, non-finite loss, malicious pickles, secrets -- one run_many batch
# ---------------------------------------------------------------------------------------------------------------------

FAKE_TOKEN = 'hf_' + 'tIMmBoTsEcReT' * 3  # what a Hub token looks like; never valid


class _Evil:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def write_evil_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({'arch': 'resnet18d_tiny_bot', 'num_classes': 10, 'state_dict': {'x': _Evil(marker)}}, path)
    return path


def make_bad_data(root: Path) -> dict:
    """Small class folders (3 images per digit = 30 train, 1 per digit val) with one kind of damage each; batch 8
    with 32 training images, so no sample is dropped by drop_last and every image is read in epoch 1."""
    from timm_bot.data import write_image_folder

    def base(name: str) -> Path:
        folder = root / name
        write_image_folder(folder, split='train', limit_per_class=3)
        write_image_folder(folder, split='val', limit_per_class=1)
        return folder

    good = None
    made = {}
    for name, damage in [('truncated', ['truncated.jpg']), ('notimage', ['notes.jpg']),
                         ('skip', ['truncated.jpg', 'notes.jpg'])]:
        folder = base(name)
        cls = folder / 'train' / '3'
        good = (cls / '0000.jpg').read_bytes()
        if len(damage) == 1:
            (cls / 'copy.jpg').write_bytes(good)  # 32 images
        if 'truncated.jpg' in damage:
            (cls / 'truncated.jpg').write_bytes(good[: len(good) // 2])  # a real JPEG, chopped
        if 'notes.jpg' in damage:
            (cls / 'notes.jpg').write_text('not an image, despite the name\n')
        made[name] = folder
    empty = base('emptyclass')
    (empty / 'train' / 'unused_class').mkdir()
    made['emptyclass'] = empty
    five = root / 'five'  # only digits 0-4
    for split, n in (('train', 3), ('val', 1)):
        folder = write_image_folder(five, split=split, limit_per_class=n)
        for cls in '56789':
            for f in (folder / cls).iterdir():
                f.unlink()
            (folder / cls).rmdir()
    made['five'] = five
    return made


@pytest.fixture(scope='module')
def batch(scripts, shared_results, tiny_digits, baseline_run, ddp_data) -> dict:
    """All the short invocations of this file, in order, in one run_many call (and the secrets in a second one),
    once per session (also under xdist): name -> (ScriptResult, its output folder)."""
    return shared_results('reliability', lambda root: _run_batch(scripts, root, tiny_digits, baseline_run, ddp_data))


def _run_batch(scripts, root: Path, tiny_digits: Path, baseline_run: Path, ddp_data: Path) -> dict:
    out = root / 'out'
    data = make_bad_data(root / 'data')
    evil = write_evil_checkpoint(root / 'evil.pth.tar', root / 'PWNED')
    mismatch_dir = root / 'mismatch'
    mismatch_dir.mkdir()
    (mismatch_dir / 'last.pth.tar').write_bytes((baseline_run / 'last.pth.tar').read_bytes())

    def tr(name: str, *extra, epochs: int = 1, data_dir=tiny_digits, experiment: bool = True) -> list:
        return scripts.train_args(out / name, 'run' if experiment else 'unused', '--data_dir', data_dir,
                                  '--batch_size', '8', *extra, epochs=epochs)

    cases: dict[str, Case] = {
        # 3. bad hparams (the 5-class teacher is trained first, for real)
        'teacher5': Case(tr('teacher5', data_dir=data['five'])),
        'unknown-key': Case(tr('unknown-key', '--smothing', '0.1')),
        'wrong-type': Case(tr('wrong-type', '--epochs', 'abc')),
        'negative-lr': Case(tr('negative-lr', '--lr', '-0.1')),
        'smoothing-1': Case(tr('smoothing-1', '--smoothing', '1.0')),
        'negative-mixup': Case(tr('negative-mixup', '--mixup', '-0.2')),
        'batch-size-0': Case(tr('batch-size-0', '--batch_size', '0')),
        'missing-data': Case(tr('missing-data', data_dir=root / 'no' / 'such' / 'folder')),
        'teacher-classes': Case(tr('teacher-classes', '--teacher', out / 'teacher5' / 'run' / 'last.pth.tar',
                                   data_dir='digits')),
        # 4. bad data
        'truncated': Case(tr('truncated', data_dir=data['truncated'])),
        'truncated-workers': Case(tr('truncated-workers', '--workers', '2', data_dir=data['truncated'])),
        'notimage': Case(tr('notimage', data_dir=data['notimage'])),
        'emptyclass': Case(tr('emptyclass', data_dir=data['emptyclass'])),
        'resume-classes': Case([*tr('resume-classes', data_dir=data['five'], experiment=False),
                                '--resume', mismatch_dir / 'last.pth.tar']),
        'skip': Case(tr('skip', '--skip_bad_images', 'true', data_dir=data['skip'])),
        # 5. non-finite loss: diverge at update 2, then resume the update-1 checkpoint -> diverges again
        'nan': Case(tr('nan', '--lr', '1.0e+30', '--checkpoint_interval', '1')),
        'nan-resume': Case([*tr('nan', '--lr', '1.0e+30', '--checkpoint_interval', '1'),
                            '--resume', out / 'nan' / 'run' / 'last.pth.tar'],
                           before=[(out / 'nan' / 'run' / 'last.pth.tar', root / 'nan-before.pth.tar')]),
        # 6. malicious pickles
        'evil-resume': Case([*tr('evil-resume'), '--resume', evil]),
        'evil-teacher': Case(tr('evil-teacher', '--teacher', evil)),
        'evil-validate': Case(['--checkpoint', evil, '--data-dir', tiny_digits, '--workers', '0',
                               '--results-file', root / 'evil-validate.json'], script='validate.py'),
        # 8. the 1-process twin of the torchrun fixture: global batch 16 = 1 x 16 (vs 2 x 8)
        'single': Case(scripts.train_args(out / 'single', 'run', '--data_dir', ddp_data, '--batch_size', '16',
                                          *DDP_ARGS)),
    }
    results = scripts.run_many(list(cases.values()), root / 'logs')
    named = {name: (res, out / name) for name, res in zip(cases, results)}
    # 7. secrets: a Hub token in the environment (HF_TOKEN) for a run that exports and tries to push (to a closed
    # local port: no network), and the export CLI reading it from an environment variable named on its command line.
    # Own batch: huggingface_hub reads HF_ENDPOINT / HF_HUB_OFFLINE when imported.
    hub_env = scripts.env(HF_TOKEN=FAKE_TOKEN, HF_ENDPOINT=f'http://127.0.0.1:{_closed_port()}',
                          HF_HUB_DISABLE_TELEMETRY='1')
    hub_env.pop('HF_HUB_OFFLINE')
    has_export = _has_export()
    if has_export:
        secret = {
            'secret-train': Case(tr('secret-train', '--export_dir', out / 'secret-train' / 'export',
                                    '--push_to_hub', 'someone/timm-bot-test')),
            'secret-export': Case([out / 'secret-train' / 'run' / 'model_best.pth.tar',
                                   out / 'secret-export' / 'export', '--push-to-hub', 'someone/timm-bot-test',
                                   '--token-env', 'MY_HUB_TOKEN'], script='timm_bot.export',
                                  env={'MY_HUB_TOKEN': FAKE_TOKEN}),
        }
    else:
        secret = {'secret-train': Case(tr('secret-train'))}
    results = scripts.run_many(list(secret.values()), root / 'secret-logs', env=hub_env)
    named.update({name: (res, out / name) for name, res in zip(secret, results)})
    named['_root'] = root
    named['_mismatch_dir'] = mismatch_dir
    named['_has_export'] = has_export
    return named


def _closed_port() -> int:
    from conftest import free_port

    return free_port()  # bound then released: nothing listens there


def _has_export() -> bool:
    try:
        from timm_bot.export import export_checkpoint  # noqa: F401
    except ImportError:
        return False
    return True


# 3. Bad hparams ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name, expected', [
    ('unknown-key', ["unknown key 'smothing'", "did you mean 'smoothing'"]),
    ('wrong-type', ['epochs', 'wrong type', 'int']),
    ('negative-lr', ['lr=-0.1', 'positive']),
    ('smoothing-1', ['smoothing=1.0', '[0, 1)']),
    ('negative-mixup', ['mixup=-0.2', '>= 0']),
    ('batch-size-0', ['batch_size=0', '>= 1']),
    ('missing-data', ['data_dir=', 'existing folder']),
    ('teacher-classes', ['teacher', '5 classes', 'student has 10']),
])
def test_bad_hparams_exit_2_with_one_line_and_write_nothing(batch, name, expected):
    res, folder = batch[name]
    if name == 'teacher-classes':
        teacher = batch['teacher5'][0]
        assert teacher.rc == 0, teacher.describe()
    assert res.rc == 2, res.describe()
    line = one_error_line(res)
    for text in expected:
        assert text in line, line
    assert not folder.exists(), f'{folder} was created'


# 4. Bad data ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name, file', [('truncated', '3/truncated.jpg'), ('truncated-workers', '3/truncated.jpg'),
                                        ('notimage', '3/notes.jpg')])
def test_unreadable_image_during_training_exits_2_naming_the_file(batch, name, file):
    """Found when the loader reads it (layout checks cannot decode every image): BadImageError, exit 2, the file
    named, the fix suggested -- also when it happens in a DataLoader worker process."""
    res, folder = batch[name]
    assert res.rc == 2, res.describe()
    line = final_error_line(res)
    assert f"Bad image file '{file}'" in line and 'skip_bad_images' in line, line
    assert not (folder / 'run' / 'summary.csv').exists()


def test_empty_class_folder_exits_2_before_writing(batch):
    res, folder = batch['emptyclass']
    assert res.rc == 2, res.describe()
    line = one_error_line(res)
    assert "Empty class folder(s)" in line and "'unused_class'" in line, line
    assert not folder.exists()


def test_resume_on_data_with_other_classes_exits_2_and_leaves_the_run_alone(batch, baseline_run):
    """``--resume`` a 10-class checkpoint with a 5-class dataset."""
    res, folder = batch['resume-classes']
    assert res.rc == 2, res.describe()
    line = one_error_line(res)
    assert '10 classes' in line and 'with 5' in line, line
    mismatch_dir = batch['_mismatch_dir']
    assert sorted(p.name for p in mismatch_dir.iterdir()) == ['last.pth.tar']
    assert (mismatch_dir / 'last.pth.tar').read_bytes() == (baseline_run / 'last.pth.tar').read_bytes()
    assert not folder.exists()


def test_skip_bad_images_skips_and_counts_them(batch):
    res, folder = batch['skip']
    assert res.rc == 0, res.describe()
    assert ', 2 unreadable images skipped' in res.log, res.log
    assert 'truncated.jpg' in res.log and 'notes.jpg' in res.log  # each named in a warning
    assert len(read_summary(folder / 'run')) == 1


# 5. Non-finite loss --------------------------------------------------------------------------------------------------

def test_non_finite_loss_exits_3_and_keeps_the_last_checkpoint(batch):
    """lr 1e30: update 1 is finite (and checkpointed, --checkpoint_interval 1), update 2 is NaN -> exit 3 naming
    the step. Resuming that checkpoint diverges at the same step and must leave it byte for byte (and mtime) as is."""
    root = batch['_root']
    res, folder = batch['nan']
    assert res.rc == 3, res.describe()
    line = final_error_line(res)
    assert 'loss is nan' in line.lower() or 'loss is inf' in line.lower(), line
    assert 'epoch 0, batch 1, update 2' in line and 'last good checkpoint' in line, line
    run_dir = folder / 'run'
    ckpt = load_checkpoint(run_dir / 'last.pth.tar')
    assert (ckpt['epoch'], ckpt['batch_in_epoch'], ckpt['global_step']) == (0, 1, 1)
    assert not (run_dir / 'summary.csv').exists() and not (run_dir / 'model_best.pth.tar').exists()

    res, _ = batch['nan-resume']
    assert res.rc == 3, res.describe()
    assert 'epoch 0, batch 1, update 2' in final_error_line(res)
    before = root / 'nan-before.pth.tar'
    assert (run_dir / 'last.pth.tar').read_bytes() == before.read_bytes(), 'the last good checkpoint was rewritten'
    assert (run_dir / 'last.pth.tar').stat().st_mtime_ns == before.stat().st_mtime_ns
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith('.tmp')]
    load_checkpoint(run_dir / 'last.pth.tar')


def test_scientific_notation_is_a_number():
    """``--lr 1e30`` / ``--weight_decay 5e-5`` (no dot: a *string* for PyYAML's YAML 1.1) must be read as floats,
    like YAML 1.2, json and argparse do -- today they are refused as 'wrong type (str)'."""
    from timm_bot.hparams import load_hparams, parse_overrides

    hp = load_hparams('hparams/quickstart.yaml', parse_overrides(['--lr', '1e30', '--weight_decay', '5e-5']))
    assert hp.lr == 1e30 and hp.weight_decay == 5e-5


# 6. Malicious pickles ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', ['evil-resume', 'evil-teacher', 'evil-validate'])
def test_code_executing_checkpoint_is_refused(batch, tmp_path, name):
    """The crafted file really runs code when unpickled the unsafe way (checked first, with another marker); the
    scripts refuse it (exit 2, one line saying why) and the marker never appears."""
    probe_marker = tmp_path / 'probe-ran'
    torch.load(write_evil_checkpoint(tmp_path / 'probe.pth.tar', probe_marker), weights_only=False)
    assert probe_marker.exists(), 'the malicious pickle is not live: the test would prove nothing'

    res, folder = batch[name]
    assert not (batch['_root'] / 'PWNED').exists(), 'the malicious checkpoint ran code'
    assert res.rc == 2, res.describe()
    line = one_error_line(res)
    assert 'refused to load checkpoint' in line and 'execute arbitrary code' in line, line
    assert not folder.exists()
    assert not (batch['_root'] / 'evil-validate.json').exists()


# 7. Secrets ----------------------------------------------------------------------------------------------------------

def test_hub_token_never_written_or_printed(batch):
    """HF_TOKEN in the environment (train.py with --export_dir and --push_to_hub to an unreachable Hub), and the export
    CLI with ``--token-env NAME``: the token is in no output stream and in no byte of any file written."""
    names = ['secret-train'] + (['secret-export'] if batch['_has_export'] else [])
    for name in names:
        res, folder = batch[name]
        assert FAKE_TOKEN not in res.out and FAKE_TOKEN not in res.err, f'{name}: token printed'
        assert FAKE_TOKEN[3:] not in res.log
        files = [p for p in folder.rglob('*') if p.is_file()]
        assert files or name == 'secret-export', f'{name} wrote nothing: {res.describe()}'
        leaked = [str(p) for p in files if FAKE_TOKEN.encode() in p.read_bytes()]
        assert not leaked, f'the token is in {leaked}'
    res, folder = batch['secret-train']
    if not batch['_has_export']:
        assert res.rc == 0, res.describe()
        pytest.skip('timm_bot.export is not importable: checked the training outputs only')
    assert (folder / 'run' / 'last.pth.tar').exists(), res.describe()
    assert (folder / 'export' / 'model.safetensors').exists(), res.describe()
    # the push got as far as an HTTP request with the token (to the closed local port), failed, and said so
    assert res.rc == 1 and 'someone/timm-bot-test' in final_error_line(res) and '127.0.0.1' in res.err, \
        res.describe()
    res, folder = batch['secret-export']
    assert res.rc == 1 and '127.0.0.1' in one_error_line(res), res.describe()


# ---------------------------------------------------------------------------------------------------------------------
# 8. Distributed
# ---------------------------------------------------------------------------------------------------------------------

def test_two_processes_match_one_process_with_the_same_global_batch(batch, ddp_run):
    """torchrun 2 x 8 vs 1 x 16 (1 epoch = 10 updates, no mixup, deterministic): the same 16 samples per update (the
    sampler shards each global batch), the same per-sample augmentation, gradients averaged by DDP, the same lr
    (1.6 x 16/256) and schedule. Not bitwise: BatchNorm normalizes each rank's 8 images with their own batch
    statistics (vs 16 together), which changes the activations and so every gradient, and each rank's BN running
    statistics are EMAs of its own 8-image batches.

    Tolerance (observed 2.595 vs 2.627, 1.2%): train loss within 5% relative; lr and update count equal. Eval
    metrics are not compared: after 10 updates the nets are at chance and their eval loss is dominated by the BN
    running statistics (observed 4.0 for 1 x 16 vs 6.2 for 2 x 8; see also test_validate's two-process test for
    the per-rank BN buffers)."""
    res, folder = batch['single']
    assert res.rc == 0, res.describe()
    single, = read_summary(folder / 'run')
    ddp, = read_summary(ddp_run[0])
    assert math.isclose(float(single['train_loss']), float(ddp['train_loss']), rel_tol=0.05), (single, ddp)
    assert single['lr'] == ddp['lr']
    assert load_checkpoint(folder / 'run' / 'last.pth.tar')['global_step'] == \
        load_checkpoint(ddp_run[0] / 'last.pth.tar')['global_step'] == 10


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f'/proc/{pid}/task').iterdir():
        kids += [int(c) for c in (task / 'children').read_text().split()]
    return kids


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f'/proc/{pid}/environ').read_bytes().split(b'\0')
    except OSError:
        return None
    ranks = [int(e.split(b'=', 1)[1]) for e in env if e.startswith(b'RANK=')]
    return ranks[0] if ranks else None


@pytest.mark.skipif(not Path('/proc/self/task').exists(), reason='finds the torchrun workers through /proc')
def test_a_dead_rank_makes_the_run_fail_instead_of_hanging(scripts, tmp_path, ddp_data):
    """SIGKILL rank 1 of a 2-process torchrun run once training is under way (a checkpoint was written): the whole
    run must exit non-zero, rank 0 included, within --dist_timeout (20 s) plus shutdown slack -- not hang."""
    args = scripts.train_args(tmp_path, 'run', '--data_dir', ddp_data, '--batch_size', '8', *DDP_ARGS,
                              '--checkpoint_interval', '1', '--dist_timeout', '20', epochs=20)
    cmd = scripts.torchrun_cmd(2, *args)
    p = scripts.popen(cmd, tmp_path / 'torchrun', start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not (tmp_path / 'run' / 'last.pth.tar').exists():
            assert p.poll() is None and time.monotonic() < deadline, scripts.finish(p, cmd).describe()
            time.sleep(0.05)
        workers = {_rank_of(c): c for c in _children(p.pid)}
        assert set(workers) >= {0, 1}, f'torchrun children: {workers}'
        os.kill(workers[1], signal.SIGKILL)
        killed_at = time.monotonic()
        try:
            p.wait(timeout=20 + 40)
        except subprocess.TimeoutExpired:
            pytest.fail(f'torchrun still running {time.monotonic() - killed_at:.0f} s after rank 1 died: hang')
        elapsed = time.monotonic() - killed_at
        res = scripts.finish(p, cmd, seconds=elapsed)
        assert res.rc != 0, res.describe()
        print(f'torchrun exited {res.rc} {elapsed:.1f} s after rank 1 was killed')
        assert not Path(f'/proc/{workers[0]}').exists() or \
            Path(f'/proc/{workers[0]}/stat').read_text().split()[2] == 'Z', 'rank 0 survived'
        summary = tmp_path / 'run' / 'summary.csv'
        assert not summary.exists() or len(read_summary(tmp_path / 'run')) < 20
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def test_a_hung_peer_makes_train_py_itself_fail_within_dist_timeout(scripts, tmp_path, ddp_data):
    """The case --dist_timeout exists for, without torchrun's agent to clean up: two ``python train.py`` processes
    started by hand (RANK, WORLD_SIZE, MASTER_ADDR/PORT in the environment); rank 1 is frozen with SIGSTOP mid-training
    (alive, connections open, so no connection reset tells rank 0) -> rank 0 must fail its next collective and exit
    non-zero within --dist_timeout (10 s) + slack instead of blocking forever."""
    port = str(_closed_port())
    procs = {}
    for rank in (0, 1):
        env = scripts.env(RANK=str(rank), WORLD_SIZE='2', LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE='2',
                          MASTER_ADDR='127.0.0.1', MASTER_PORT=port)
        args = scripts.train_args(tmp_path, 'run', '--data_dir', ddp_data, '--batch_size', '8', *DDP_ARGS,
                                  '--checkpoint_interval', '1', '--dist_timeout', '10', epochs=20)
        procs[rank] = scripts.popen([sys.executable, 'train.py', *args], tmp_path / f'rank{rank}', env=env)
    try:
        deadline = time.monotonic() + 180
        while not (tmp_path / 'run' / 'last.pth.tar').exists():
            assert all(p.poll() is None for p in procs.values()) and time.monotonic() < deadline, \
                scripts.finish(procs[0], ['rank0'], timeout=5).describe()
            time.sleep(0.05)
        os.kill(procs[1].pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        try:
            procs[0].wait(timeout=10 + 50)
        except subprocess.TimeoutExpired:
            pytest.fail('rank 0 still running 60 s after rank 1 froze (dist_timeout 10 s): hang')
        res = scripts.finish(procs[0], ['train.py (rank 0)'], seconds=time.monotonic() - stopped_at)
        assert res.rc != 0, res.describe()
        print(f'rank 0 exited {res.rc} {res.seconds:.1f} s after rank 1 froze: {res.err.strip().splitlines()[-1]}')
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
