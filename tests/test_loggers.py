"""MetricsLogger: TensorBoard events and W&B offline runs read back with their own formats; a resumed run continues
the same curves with no step logged twice."""
import json
import struct
import sys
import tempfile
import time

import pytest

from timm_bot.loggers import WANDB_STATE, MetricsLogger, check_logger_extras


def _session(run_dir, steps, offset, resume_step=None, **kwargs):
    """What train.py logs: a train loss every 2 updates, an epoch row (timm's summary keys) every 4 updates."""
    logger = MetricsLogger(run_dir, resume_step=resume_step, config={'lr': 0.1}, **kwargs)
    for step in steps:
        if step % 2 == 0:
            logger.log(step, {'train/loss': offset + 1 / step, 'train/lr': 0.1 * step, 'train/images_per_second': 100})
        if step % 4 == 0:
            logger.log(step, {'epoch': step // 4, 'train_loss': offset + 2 / step, 'eval_top1': offset + step,
                              'eval_top5': 100.0, 'eval_loss': offset + 3 / step, 'eval_ema_top1': None})
    logger.close()
    if kwargs.get('wandb'):
        sys.modules['wandb'].teardown()  # waits for W&B's service to write the session out, as at process exit


def test_tensorboard_curves_continue_after_resume(tmp_path):
    accumulator = pytest.importorskip('tensorboard.backend.event_processing.event_accumulator')
    _session(tmp_path, range(1, 11), 0, tensorboard=True)  # interrupted after step 10, checkpoint at step 4
    _session(tmp_path, range(5, 13), 1000, resume_step=4, tensorboard=True)  # the resumed session, new values
    events = accumulator.EventAccumulator(str(tmp_path))
    events.Reload()
    assert {'train/loss', 'train/lr', 'train/images_per_second', 'epoch', 'train_loss', 'eval_top1', 'eval_top5',
            'eval_loss'} == set(events.Tags()['scalars'])  # None values are left out
    loss = [(e.step, e.value) for e in events.Scalars('train/loss')]
    assert [s for s, _ in loss] == [2, 4, 6, 8, 10, 12]  # no step twice
    assert [v for _, v in loss] == pytest.approx([1 / 2, 1 / 4] + [1000 + 1 / s for s in (6, 8, 10, 12)])
    top1 = [(e.step, e.value) for e in events.Scalars('eval_top1')]
    assert top1 == [(4, 4.0), (8, 1008.0), (12, 1012.0)]  # per epoch, the resumed session's after step 4


def _wandb_history(run_dir):
    """``{run id: [(step, {key: value}), ...]}`` of the offline runs, read from their .wandb files (LevelDB log
    records of wandb's protobuf ``Record``s, as ``wandb sync`` reads them)."""
    from wandb.proto import wandb_internal_pb2
    runs = {}
    for path in sorted(run_dir.glob('wandb/offline-run-*/run-*.wandb')):
        data, pos, pending = path.read_bytes(), 7, b''
        assert data[:4] == b':W&B'
        while pos + 7 <= len(data):
            if 32768 - pos % 32768 < 7:  # a block's zero-filled tail
                pos += 32768 - pos % 32768
                continue
            _, length, kind = struct.unpack('<IHB', data[pos:pos + 7])
            pending, pos = pending + data[pos + 7:pos + 7 + length], pos + 7 + length
            if kind in (1, 4):  # a full record, or the last chunk of one
                record = wandb_internal_pb2.Record.FromString(pending)
                pending = b''
                if record.WhichOneof('record_type') == 'history':
                    items = {i.key or '/'.join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                    items = {k: v for k, v in items.items() if not k.startswith('_')}  # _step, _runtime, ...
                    runs.setdefault(path.stem[len('run-'):], []).append((record.history.step.num, items))
    return runs


def _next_second():
    """W&B names an offline session's folder by the second it starts; a real resume starts seconds later."""
    start = int(time.time())
    while int(time.time()) == start:
        time.sleep(0.05)


def test_wandb_offline_run_resumed_without_duplicate_steps(tmp_path, monkeypatch):
    pytest.importorskip('wandb')
    monkeypatch.setenv('WANDB_MODE', 'offline')
    monkeypatch.setenv('WANDB_DIR', str(tmp_path))
    monkeypatch.setenv('WANDB_SILENT', 'true')
    monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))  # W&B's media and artifact folders, not /tmp
    _session(tmp_path, range(1, 11), 0, wandb=True, project='timm-bot-test', name='digits')
    state = json.loads((tmp_path / WANDB_STATE).read_text())
    assert state['step'] == 10
    _next_second()
    _session(tmp_path, range(5, 13), 1000, resume_step=4, wandb=True, project='timm-bot-test', name='digits')
    (run_id, history), = _wandb_history(tmp_path).items()  # one run id over both sessions
    assert run_id == state['id'] == json.loads((tmp_path / WANDB_STATE).read_text())['id']
    assert [s for s, _ in history] == [2, 4, 6, 8, 10, 12]  # steps <= 10 were logged by the first session
    rows = dict(history)
    assert rows[8] == {'train/loss': 1 / 8, 'train/lr': 0.8, 'train/images_per_second': 100, 'epoch': 2,
                       'train_loss': 2 / 8, 'eval_top1': 8, 'eval_top5': 100, 'eval_loss': 3 / 8}  # one row a step
    assert rows[12]['eval_top1'] == 1012 and rows[12]['train/loss'] == pytest.approx(1000 + 1 / 12)


def test_wandb_without_login_logs_offline(tmp_path, monkeypatch):
    pytest.importorskip('wandb')
    for key in ('WANDB_MODE', 'WANDB_API_KEY', 'WANDB_DIR', 'NETRC'):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv('HOME', str(tmp_path))  # no ~/.netrc, no W&B settings: not logged in
    monkeypatch.setenv('WANDB_SILENT', 'true')
    monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))  # W&B's media and artifact folders, not /tmp
    _session(tmp_path / 'run', range(1, 5), 0, wandb=True)
    (run_id, history), = _wandb_history(tmp_path / 'run').items()  # written into the run folder
    assert [s for s, _ in history] == [2, 4] and history[1][1]['eval_top1'] == 4


def test_missing_packages_name_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, 'wandb', None)  # what `import` sees when it is not installed
    with pytest.raises(ImportError, match=r"log_wandb needs the wandb package: pip install 'timm-bot\[wandb\]'"):
        check_logger_extras(wandb=True)
    monkeypatch.setitem(sys.modules, 'torch.utils.tensorboard', None)
    with pytest.raises(ImportError, match=r"pip install 'timm-bot\[tensorboard\]'"):
        MetricsLogger(tmp_path, tensorboard=True)
    MetricsLogger(tmp_path).log(1, {'train/loss': 1.0})  # both off: nothing needed, nothing written
    assert not any(tmp_path.iterdir())
