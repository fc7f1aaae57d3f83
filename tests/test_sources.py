"""Data and metrics where users keep them (issue 22), end to end: train.py and validate.py on Hugging Face datasets
(save_to_disk and parquet folders) and WebDataset shards, with DDP, resume, TensorBoard and W&B (offline)."""
import json
import signal
import time
from pathlib import Path

import pytest
from conftest import popen_script, read_summary, run_script, same_tensors, script_env, torchrun, train_args
from helpers_data import write_hf_dataset, write_wds_shards

import train
from timm_bot.checkpoint import load_checkpoint

pytest.importorskip('sklearn', reason='the end-to-end runs train on the embedded digits (scikit-learn)')
pytest.importorskip('datasets', reason="pip install 'timm-bot[datasets]'")
pytest.importorskip('webdataset', reason="pip install 'timm-bot[webdataset]'")


@pytest.fixture(scope='session')
def hf_dataset(shared_dir) -> Path:
    """``saved/`` (DatasetDict.save_to_disk) and ``parquet/data/*.parquet``: 100 train, 100 validation digits."""
    return shared_dir('hf_dataset', lambda root: write_hf_dataset(root, limit_per_class=10))


@pytest.fixture(scope='session')
def wds_shards(shared_dir) -> Path:
    """``train-00000{0,1}.tar`` (100 digits) and ``val-000000.tar`` (50) WebDataset shards."""
    def produce(root: Path) -> None:
        write_wds_shards(root, 'train', shards=2, limit_per_class=10)
        write_wds_shards(root, 'val', shards=1, limit_per_class=5)
    return shared_dir('wds_shards', produce)


@pytest.mark.parametrize('layout', ['saved', 'parquet'])
def test_a_hugging_face_dataset_trains_and_validates(tmp_path, hf_dataset, layout):
    """hfds/./FOLDER: class names from the ClassLabel feature, 'val' finds 'validation'; validate.py gives the top-1
    train.py logged for the same split."""
    source = f'hfds/{hf_dataset / layout}'
    run_script(*train_args(tmp_path, 'hf', '--data_dir', source, '--batch_size', '16'))
    row, = read_summary(tmp_path / 'hf')
    ckpt = load_checkpoint(tmp_path / 'hf' / 'last.pth.tar')
    assert ckpt['label_names'] == [f'digit_{i}' for i in range(10)]
    res = run_script('validate.py', '--checkpoint', tmp_path / 'hf', '--data_dir', source, '--workers', '0',
                     '--results-file', tmp_path / 'val.json')
    validated = json.loads((tmp_path / 'val.json').read_text())
    assert validated['count'] == 100 and f'{float(row["eval_top1"]):.3f}' in res.out


def test_a_wrong_target_key_names_the_columns(tmp_path, hf_dataset, capsys):
    rc = train.run([str(a) for a in train_args(tmp_path, 'hf', '--data_dir', f'hfds/{hf_dataset / "saved"}',
                                               '--target_key', 'labels')[1:]])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "'labels'" in err and 'image' in err and 'label' in err and not (tmp_path / 'hf').exists()


def test_two_ranks_on_a_hugging_face_dataset_count_every_validation_image_once(tmp_path, hf_dataset):
    """2 gloo ranks: disjoint training shards (ResumableSampler), and the epoch's top-1 over 100 validation images
    equals validate.py's in one process."""
    source = f'hfds/{hf_dataset / "parquet"}'
    run_script(*torchrun(2, *train_args(tmp_path, 'ddp', '--data_dir', source, '--batch_size', '8')))
    row, = read_summary(tmp_path / 'ddp')
    run_script('validate.py', '--checkpoint', tmp_path / 'ddp', '--data_dir', source, '--workers', '0',
               '--results-file', tmp_path / 'val.json')
    validated = json.loads((tmp_path / 'val.json').read_text())
    assert validated['count'] == 100 and float(row['eval_top1']) == pytest.approx(validated['top1'], abs=1e-6)
    assert load_checkpoint(tmp_path / 'ddp' / 'last.pth.tar')['global_step'] == 100 // 16


def stop_and_resume(args: list, log: Path, env: dict, after: str) -> str:
    """Run ``args``, SIGTERM it once its log shows ``after``, then run the same command to the end."""
    p = popen_script(*args, log=log, env=env)
    deadline = time.monotonic() + 300
    while after not in log.read_text():
        assert p.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.02)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=120) == 143, log.read_text()
    return run_script(*args, env=env).log


def test_webdataset_shards_resume_exactly_with_two_workers(tmp_path, wds_shards):
    """wds/ shards, 2 loader workers: stopped mid-epoch 2 and continued by the same command (same workers), the run
    ends bitwise equal to an uninterrupted one: shard order, worker split and augmentation follow (seed, epoch)."""
    common = ('--data_dir', f'wds/{wds_shards}', '--batch_size', '10', '--workers', '2', '--mixup', '0.2',
              '--resume', 'auto', '--log_interval', '1')
    run_script(*train_args(tmp_path, 'ref', *common, epochs=2))
    args = train_args(tmp_path, 'cut', *common, epochs=2)
    log = stop_and_resume(args, tmp_path / 'log.txt', script_env(), after='epoch 2/2 [3/')
    assert 'resuming at epoch 2, batch ' in log
    mine, ref = (load_checkpoint(tmp_path / name / 'last.pth.tar') for name in ('cut', 'ref'))
    assert mine['global_step'] == ref['global_step'] == 2 * (100 // 10)
    assert same_tensors(mine['state_dict'], ref['state_dict']) and mine['history'] == ref['history']


def test_tensorboard_and_wandb_curves_continue_after_a_resume(tmp_path, hf_dataset):
    """log_tensorboard + log_wandb (offline: no login): the train loss every log_interval updates and the epoch's
    val metrics; stopped and resumed, each step is logged once, and the W&B run is the same run."""
    tb = pytest.importorskip('tensorboard.backend.event_processing.event_accumulator')
    pytest.importorskip('wandb')
    from test_loggers import _wandb_history
    args = train_args(tmp_path, 'logs', '--data_dir', f'hfds/{hf_dataset / "saved"}', '--batch_size', '10',
                      '--log_interval', '2', '--log_tensorboard', 'true', '--log_wandb', 'true', '--resume', 'auto',
                      epochs=2)
    (tmp_path / 'tmp').mkdir()  # W&B's media and artifact folders, not /tmp
    env = script_env(WANDB_MODE='offline', WANDB_SILENT='true', TMPDIR=str(tmp_path / 'tmp'))
    stop_and_resume(args, tmp_path / 'log.txt', env, after='epoch 2/2 [2/')
    events = tb.EventAccumulator(str(tmp_path / 'logs'))
    events.Reload()
    loss_steps = [e.step for e in events.Scalars('train/loss')]
    assert loss_steps == list(range(2, 21, 2)), loss_steps  # 10 updates an epoch, each even one once
    assert [(e.step, e.value) for e in events.Scalars('val/top1')] == \
        [(10 * (i + 1), pytest.approx(float(r['eval_top1']))) for i, r in enumerate(read_summary(tmp_path / 'logs'))]
    runs = _wandb_history(tmp_path / 'logs')
    steps = sorted(step for history in runs.values() for step, items in history if 'train/loss' in items)
    assert len({json.loads((tmp_path / 'logs' / 'wandb-run.json').read_text())['id']} | set(runs)) == 1
    assert steps == list(range(2, 21, 2)), steps
