"""Bad data, bad labels, malicious pickles, secrets, a dead rank, and fine-tuning from an export (issues 7, 11, 12).

Each test does the bad thing to the real scripts and checks the promised outcome.
"""
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import free_port, popen_script, read_summary, run_script, same_tensors, script_env, torchrun, train_args

from timm_bot.checkpoint import load_checkpoint

pytest.importorskip('sklearn', reason='the end-to-end runs train on the embedded digits (scikit-learn)')
FAKE_TOKEN = 'hf_FAKE_secret_token_value_123'


@pytest.fixture()
def broken_data(tmp_path, tiny_digits) -> Path:
    """tiny_digits with a truncated JPEG in class 3 of train/."""
    root = tmp_path / 'data'
    shutil.copytree(tiny_digits, root)
    good = (root / 'train' / '3' / '0000.jpg').read_bytes()
    (root / 'train' / '3' / 'truncated.jpg').write_bytes(good[:len(good) // 2])
    return root


def test_unreadable_image_exits_2_naming_the_file(tmp_path, broken_data):
    res = run_script(*train_args(tmp_path, 'run', '--data_dir', broken_data, '--batch_size', '50'), expect=2)
    line = res.error_line()
    assert "Bad image file '3/truncated.jpg'" in line and 'skip_bad_images' in line
    assert not (tmp_path / 'run' / 'summary.csv').exists()


def test_skipped_images_are_counted_and_a_batch_of_one_is_dropped(tmp_path, tiny_digits):
    """skip_bad_images: unreadable files are skipped and counted; a batch left with one image (BatchNorm cannot
    normalize it) is dropped and counted instead of crashing (issue 11 item 17)."""
    root = tmp_path / 'data'
    shutil.copytree(tiny_digits, root)
    for i, path in enumerate(sorted((root / 'train').rglob('*.jpg'))):
        if i % 4:
            path.write_bytes(b'not a jpeg')  # 150 of 200 unreadable: many batches of 4 keep exactly one image
    res = run_script(*train_args(tmp_path, 'run', '--data_dir', root, '--batch_size', '4', '--skip_bad_images',
                                 'true', '--seed', '1'))
    counted = int(res.log.split(' images skipped')[0].rsplit(', ', 1)[1])
    unreadable = sum(1 for p in (root / 'train').rglob('*.jpg') if p.read_bytes() == b'not a jpeg')
    assert counted > unreadable, 'no batch of one was dropped (or the count is wrong)'
    assert len(read_summary(tmp_path / 'run')) == 1


def test_empty_class_folder_exits_2_before_writing(tmp_path, tiny_digits, capsys):
    import train
    root = tmp_path / 'data'
    shutil.copytree(tiny_digits, root)
    (root / 'train' / 'unused_class').mkdir()
    assert train.run(train_args(tmp_path, 'run', '--data_dir', root)[1:]) == 2
    assert "'unused_class'" in capsys.readouterr().err and not (tmp_path / 'run').exists()


def five_class_data(tmp_path, tiny_digits) -> Path:
    root = tmp_path / 'five'
    for split in ('train', 'val'):
        for c in '01234':
            shutil.copytree(tiny_digits / split / c, root / split / c)
    return root


def test_labels_are_compared_on_resume_and_with_the_teacher(tmp_path, tiny_digits, baseline_run, capsys):
    """A 10-class checkpoint is neither resumed on nor a teacher for 5-class data (issue 11 item 12)."""
    import train
    five = five_class_data(tmp_path, tiny_digits)
    run = tmp_path / 'copy'
    shutil.copytree(baseline_run, run)
    before = (run / 'last.pth.tar').read_bytes()
    assert train.run(['--resume', str(run), '--data_dir', str(five)]) == 2
    err = capsys.readouterr().err
    assert 'other classes' in err and "missing ['5', '6', '7', '8', '9']" in err
    assert (run / 'last.pth.tar').read_bytes() == before
    assert train.run(train_args(tmp_path, 'kd', '--data_dir', five, '--teacher', baseline_run / 'last.pth.tar')[1:]) \
        == 2
    err = capsys.readouterr().err
    assert 'teacher' in err and '10' in err and not (tmp_path / 'kd').exists()


def write_evil_checkpoint(path: Path, marker: Path) -> Path:
    class Evil:
        def __reduce__(self):
            return (os.system, (f'touch {marker}',))
    torch.save({'state_dict': {}, 'x': Evil()}, path)
    return path


@pytest.mark.parametrize('how', ['resume', 'teacher', 'validate'])
def test_code_executing_checkpoint_is_refused(tmp_path, how):
    """The pickle really runs code when loaded unsafely (checked); the scripts refuse it, exit 2, and it never runs."""
    torch.load(write_evil_checkpoint(tmp_path / 'probe.pth.tar', tmp_path / 'probe-ran'), weights_only=False)
    assert (tmp_path / 'probe-ran').exists(), 'the malicious pickle is not live: the test would prove nothing'
    evil = write_evil_checkpoint(tmp_path / 'evil.pth.tar', tmp_path / 'PWNED')
    args = {'resume': ['train.py', '--resume', evil],
            'teacher': train_args(tmp_path, 'kd', '--teacher', evil),
            'validate': ['validate.py', '--checkpoint', evil, '--data_dir', 'digits']}[how]
    res = run_script(*args, expect=2)
    assert 'execute arbitrary code' in res.error_line()
    assert not (tmp_path / 'PWNED').exists(), 'the malicious checkpoint ran code'


def test_hub_token_never_written_or_printed(tmp_path, tiny_digits):
    """HF_TOKEN set, export + push to an unreachable Hub at the end of training: exit 1 naming the repo, the export
    intact, the token in no output and no byte of any file."""
    env = script_env(HF_TOKEN=FAKE_TOKEN, HF_HUB_OFFLINE='0', HF_ENDPOINT='http://127.0.0.1:9')
    res = run_script(*train_args(tmp_path, 'run', '--data_dir', tiny_digits, '--batch_size', '50', '--export_dir',
                                 tmp_path / 'export', '--push_to_hub', 'someone/timm-bot-test'), env=env, expect=1)
    assert 'someone/timm-bot-test' in res.error_line() and FAKE_TOKEN not in res.log
    assert (tmp_path / 'export' / 'model.safetensors').exists()
    leaked = [p for p in tmp_path.rglob('*') if p.is_file() and FAKE_TOKEN.encode() in p.read_bytes()]
    assert not leaked, f'the token is in {leaked}'


def test_fine_tune_from_an_export_works_after_the_source_is_gone(tmp_path, baseline_run, tiny_digits):
    """Issue 12 item 4: fine-tune from local-dir:, delete the source, then validate and export the fine-tune."""
    source = tmp_path / 'source'
    run_script('-m', 'timm_bot.export', baseline_run / 'last.pth.tar', source)
    run_script(*train_args(tmp_path, 'ft', '--data_dir', tiny_digits, '--model', f'local-dir:{source}',
                           '--pretrained', 'true', '--batch_size', '50', '--lr', '0.01'))
    shutil.rmtree(source)
    ckpt = load_checkpoint(tmp_path / 'ft' / 'last.pth.tar')
    assert not ckpt['arch'].startswith('local-dir:') and ckpt['source'] == f'local-dir:{source}'
    res = run_script('validate.py', '--checkpoint', tmp_path / 'ft' / 'last.pth.tar', '--data_dir', tiny_digits)
    assert f'{float(read_summary(tmp_path / "ft")[0]["eval_top1"]):.3f}' in res.out
    run_script('-m', 'timm_bot.export', tmp_path / 'ft' / 'last.pth.tar', tmp_path / 'ft-export')
    card = (tmp_path / 'ft-export' / 'README.md').read_text()
    front_matter = card.split('---')[1]  # Hub ids only: a local folder is named in the text, not as base_model
    assert 'base_model' not in front_matter and 'Fine-tuned from `source`' in card and str(tmp_path) not in card
    import timm
    model = timm.create_model(f'local-dir:{tmp_path / "ft-export"}', pretrained=True)
    assert same_tensors(model.state_dict(), ckpt['state_dict'])


@pytest.mark.skipif(not Path('/proc/self/task').exists(), reason='finds the torchrun workers through /proc')
def test_a_dead_rank_makes_the_run_fail_instead_of_hanging(tmp_path, digits_folder):
    """SIGKILL rank 1 of a 2-process run once training is under way: torchrun exits non-zero, rank 0 included."""
    args = train_args(tmp_path, 'run', '--data_dir', digits_folder, '--batch_size', '8', '--checkpoint_interval', '1',
                      '--dist_timeout', '20', epochs=20)
    p = popen_script(*torchrun(2, *args), log=tmp_path / 'log.txt')
    try:
        deadline = time.monotonic() + 180
        while not (tmp_path / 'run' / 'last.pth.tar').exists():
            assert p.poll() is None and time.monotonic() < deadline, (tmp_path / 'log.txt').read_text()
            time.sleep(0.05)
        children = [int(c) for t in Path(f'/proc/{p.pid}/task').iterdir() for c in (t / 'children').read_text().split()]
        ranks = {}
        for pid in children:
            env = Path(f'/proc/{pid}/environ').read_bytes().split(b'\0')
            ranks.update({int(e[5:]): pid for e in env if e.startswith(b'RANK=')})
        os.kill(ranks[1], signal.SIGKILL)
        try:
            assert p.wait(timeout=60) != 0
        except subprocess.TimeoutExpired:
            pytest.fail('torchrun still running 60 s after rank 1 died: hang')
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_a_hung_peer_makes_train_py_fail_within_dist_timeout(tmp_path, digits_folder):
    """What --dist_timeout is for, without torchrun's agent to clean up: two ``python train.py`` started by hand;
    rank 1 is frozen with SIGSTOP mid-training (alive, sockets open) -> rank 0 fails its next collective and exits
    non-zero within dist_timeout (10 s) + slack instead of blocking forever."""
    port, procs = str(free_port()), {}
    args = train_args(tmp_path, 'run', '--data_dir', digits_folder, '--batch_size', '8', '--checkpoint_interval', '1',
                      '--dist_timeout', '10', epochs=20)
    for rank in (0, 1):
        env = script_env(RANK=str(rank), WORLD_SIZE='2', LOCAL_RANK=str(rank), MASTER_ADDR='127.0.0.1',
                         MASTER_PORT=port)
        procs[rank] = popen_script(*args, log=tmp_path / f'rank{rank}.txt', env=env)
    try:
        deadline = time.monotonic() + 180
        while not (tmp_path / 'run' / 'last.pth.tar').exists():
            assert all(p.poll() is None for p in procs.values()) and time.monotonic() < deadline, \
                (tmp_path / 'rank0.txt').read_text()
            time.sleep(0.05)
        os.kill(procs[1].pid, signal.SIGSTOP)
        try:
            assert procs[0].wait(timeout=10 + 50) != 0
        except subprocess.TimeoutExpired:
            pytest.fail('rank 0 still running 60 s after rank 1 froze (dist_timeout 10 s): hang')
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
