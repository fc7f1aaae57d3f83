"""Atomic, pickle-safe checkpoints (timm_bot.checkpoint): crashes and kills never leave a broken file."""
import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch

import timm_bot  # noqa: F401  (registers the _bot models)
from timm_bot.checkpoint import UnsafeCheckpointError, create_model_from_checkpoint, load_checkpoint, save_checkpoint


def train_checkpoint(model, **extra) -> dict:
    return {'arch': 'resnet18d_tiny_bot', 'model_args': {}, 'num_classes': model.num_classes,
            'state_dict': model.state_dict(), 'label_names': [str(i) for i in range(model.num_classes)],
            'data_config': {'mean': [0.5] * 3, 'std': [0.25] * 3, 'input_size': [3, 32, 32], 'crop_pct': 1.0,
                            'interpolation': 'bicubic'}, **extra}


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def test_roundtrip_leaves_no_temp_file(tmp_path):
    state = {'t': torch.randn(3, 4), 'i': 7, 's': 'x', 'l': [1, None], 'd': {'n': torch.arange(3)}}
    save_checkpoint(state, tmp_path / 'sub' / 'c.pth')
    save_checkpoint(dict(state, i=8), tmp_path / 'sub' / 'c.pth')
    loaded = load_checkpoint(tmp_path / 'sub' / 'c.pth')
    assert torch.equal(loaded['t'], state['t']) and loaded['i'] == 8 and loaded['l'] == [1, None]
    assert os.listdir(tmp_path / 'sub') == ['c.pth']


def test_a_failed_save_keeps_the_old_file(tmp_path):
    path = tmp_path / 'c.pth'
    save_checkpoint({'epoch': 1}, path)
    with pytest.raises(TypeError, match='weights_only'):  # an object weights-only loading would refuse
        save_checkpoint({'epoch': 2, 'args': argparse.Namespace(lr=0.1)}, path)
    assert load_checkpoint(path) == {'epoch': 1} and os.listdir(tmp_path) == ['c.pth']


def test_sigkill_during_writes_never_corrupts_the_checkpoint(tmp_path):
    """A writer saving 4 MB checkpoints in a loop is SIGKILLed 5 times at random moments: the file always loads,
    and the next save removes the killed writer's temp file."""
    path = tmp_path / 'last.pth.tar'
    save_checkpoint({'step': -1}, path)
    code = ('import sys, torch; from timm_bot.checkpoint import save_checkpoint\n'
            'w = torch.randn(1_000_000)\nfor i in range(10**6): save_checkpoint({"step": i, "w": w}, sys.argv[1])')
    for kill in range(5):
        p = subprocess.Popen([sys.executable, '-c', code, str(path)])
        time.sleep(2.5 + 0.37 * kill)
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert isinstance(load_checkpoint(path)['step'], int)
    save_checkpoint({'step': 0}, path)
    assert os.listdir(tmp_path) == ['last.pth.tar']


def test_code_executing_pickles_are_refused_without_running(tmp_path):
    torch.save({'x': Payload(tmp_path / 'probe')}, tmp_path / 'probe.pth')
    torch.load(tmp_path / 'probe.pth', weights_only=False)
    assert (tmp_path / 'probe').exists(), 'the payload is not live: the test would prove nothing'
    torch.save({'state_dict': Payload(tmp_path / 'pwned')}, tmp_path / 'evil.pth')
    for load in (load_checkpoint, create_model_from_checkpoint):
        with pytest.raises(UnsafeCheckpointError, match='execute arbitrary code'):
            load(tmp_path / 'evil.pth')
    assert not (tmp_path / 'pwned').exists()


@pytest.mark.parametrize('content, match', [
    (b'model: resnet18d\nlr: 0.1\n', 'is not a checkpoint'),  # a YAML file
    (b'PK\x03\x04garbage' * 10, 'truncated or not a checkpoint'),
    (b'', 'is not a checkpoint'),
])
def test_files_that_are_not_checkpoints(tmp_path, content, match):
    path = tmp_path / 'x.pth.tar'
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as info:
        load_checkpoint(path)
    assert not isinstance(info.value, UnsafeCheckpointError) and '\n' not in str(info.value)


def test_truncated_checkpoint_and_folders(tmp_path):
    save_checkpoint({'w': torch.randn(10_000)}, tmp_path / 'c.pth')
    data = (tmp_path / 'c.pth').read_bytes()
    (tmp_path / 'c.pth').write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match='truncated'):
        load_checkpoint(tmp_path / 'c.pth')
    with pytest.raises(ValueError, match='is a folder'):
        load_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / 'missing.pth')


def test_model_from_checkpoint_with_ema_and_preprocessing(tmp_path):
    model = timm.create_model('resnet18d_tiny_bot', num_classes=7)
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    save_checkpoint(train_checkpoint(model, state_dict_ema=ema), tmp_path / 'c.pth')
    rebuilt, ckpt = create_model_from_checkpoint(tmp_path / 'c.pth')
    x = torch.randn(2, 3, 32, 32)
    assert not rebuilt.training and torch.equal(rebuilt(x), model.eval()(x))
    cfg = timm.data.resolve_data_config(model=rebuilt)
    assert cfg['mean'] == (0.5,) * 3 and cfg['interpolation'] == 'bicubic' and cfg['input_size'] == (3, 32, 32)
    ema_model, _ = create_model_from_checkpoint(tmp_path / 'c.pth', use_ema=True)
    assert torch.equal(ema_model.state_dict()['fc.bias'], ema['fc.bias'])


def test_model_from_checkpoint_errors_are_one_line(tmp_path):
    model = timm.create_model('resnet18d_tiny_bot', num_classes=7)
    save_checkpoint(train_checkpoint(model), tmp_path / 'no_ema.pth')
    with pytest.raises(ValueError, match='no EMA weights'):
        create_model_from_checkpoint(tmp_path / 'no_ema.pth', use_ema=True)
    save_checkpoint(train_checkpoint(model, num_classes=5), tmp_path / 'mismatch.pth')
    with pytest.raises(ValueError, match='do not fit resnet18d_tiny_bot') as info:
        create_model_from_checkpoint(tmp_path / 'mismatch.pth')
    assert 'fc.weight' in str(info.value) and '\n' not in str(info.value)
    save_checkpoint(model.state_dict(), tmp_path / 'bare.pth')
    with pytest.raises(ValueError, match='not a train.py checkpoint'):
        create_model_from_checkpoint(tmp_path / 'bare.pth')


def test_export_folder_is_a_checkpoint(tmp_path):
    model = timm.create_model('resnet18d', num_classes=3).eval()
    timm.models.save_for_hf(model, str(tmp_path / 'export'), model_config={'label_names': ['a', 'b', 'c']})
    rebuilt, ckpt = create_model_from_checkpoint(tmp_path / 'export')
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(rebuilt(x), model(x)) and ckpt['label_names'] == ['a', 'b', 'c'] and ckpt['num_classes'] == 3


UNREACHABLE_HUB = '''
import logging, sys
logging.basicConfig(level=logging.INFO, format='%(message)s')  # as train.py: any retry line would show
import timm_bot
from timm_bot.checkpoint import create_pretrained_model, resolve_architecture
for load in (lambda: timm_bot.load_teacher('resnet50d_bot', 10), lambda: create_pretrained_model('resnet50d_bot'),
             lambda: resolve_architecture('hf-hub:someone/foo'), lambda: create_pretrained_model('resnet18d_tiny_bot')):
    try:
        load()
    except ValueError as e:
        print('error:', e)
'''


def test_weights_neither_cached_nor_reachable_fail_at_once(tmp_path):
    """Issue 23: no network, HF_HUB_OFFLINE unset, empty cache: one line naming the Hub id and the fix for the right key
    (no huggingface_hub retries, which took ~50 s and printed each line twice); a model with no weights says so."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(('HF_', 'HUGGING_FACE'))}
    env.update(HF_HOME=str(tmp_path / 'hf'), HF_ENDPOINT='http://127.0.0.1:9', OMP_NUM_THREADS='1')  # refused at once
    p = subprocess.run([sys.executable, '-c', UNREACHABLE_HUB], env=env, capture_output=True, text=True, timeout=300,
                       cwd=Path(__file__).parents[1])
    lines = (p.stdout + p.stderr).strip().splitlines()
    assert p.returncode == 0 and len(lines) == 4 and all(line.startswith('error: ') for line in lines), lines
    for line, key, hub_id in zip(lines, ('teacher', 'model', 'model'), ('timm/resnet50d.gluon_in1k',) * 2 +
                                 ('someone/foo',)):
        assert f'{hub_id} is not in the Hugging Face cache and the Hub cannot be reached' in line, line
        assert f'use a copy as {key}: local-dir:PATH' in line and 'HF_HUB_OFFLINE=1' in line, line
    assert "model 'resnet18d_tiny_bot' has no pretrained weights anywhere" in lines[3]
    assert 'pretrained: false' in lines[3] and 'Hugging Face cache' not in lines[3]
