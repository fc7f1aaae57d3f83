"""Safe, atomic checkpoint I/O (timm_bot.checkpoint)."""
import argparse
import os

import pytest
import timm
import torch

import timm_bot  # noqa: F401
from timm_bot.checkpoint import (
    UnsafeCheckpointError,
    create_model_from_checkpoint,
    extract_state_dict,
    load_checkpoint,
    save_checkpoint,
)
from timm_bot.models import PAPER_MEAN, PAPER_STD

ARCH = 'resnet18d_tiny_bot'


def _train_ckpt(model, **extra):
    return {
        'arch': ARCH, 'num_classes': model.num_classes, 'state_dict': model.state_dict(),
        'data_config': {'mean': [0.5, 0.5, 0.5], 'std': [0.25, 0.25, 0.25], 'input_size': [3, 32, 32],
                        'crop_pct': 1.0, 'interpolation': 'bicubic'},
        'label_names': [f'class{i}' for i in range(model.num_classes)],
        'args': {'lr': 0.1, 'smoothing': 0.1, 'mixup': None}, 'epoch': 3, **extra,
    }


def _files(directory):
    return sorted(p.name for p in directory.iterdir())


def test_roundtrip(tmp_path):
    state = {'t': torch.randn(3, 4), 'i': 7, 'f': 0.5, 's': 'x', 'l': [1, 'a', None], 'd': {'n': torch.arange(3)}}
    path = tmp_path / 'sub' / 'ckpt.pth'
    save_checkpoint(state, path)
    assert _files(path.parent) == ['ckpt.pth']  # no temp file left
    loaded = load_checkpoint(path)
    assert torch.equal(loaded['t'], state['t']) and torch.equal(loaded['d']['n'], state['d']['n'])
    assert {k: loaded[k] for k in 'ifsl'} == {k: state[k] for k in 'ifsl'}


def test_save_replaces_existing_file(tmp_path):
    path = tmp_path / 'ckpt.pth'
    save_checkpoint({'epoch': 1}, path)
    save_checkpoint({'epoch': 2}, path)
    assert load_checkpoint(path)['epoch'] == 2
    assert _files(tmp_path) == ['ckpt.pth']


def test_crash_during_save_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / 'ckpt.pth'
    save_checkpoint({'epoch': 1, 'w': torch.ones(100)}, path)
    real_save = torch.save

    def half_save_then_crash(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.seek(0)
        f.truncate(f.tell() // 2 + 10)
        raise OSError('disk full (simulated)')

    monkeypatch.setattr(torch, 'save', half_save_then_crash)
    with pytest.raises(OSError, match='simulated'):
        save_checkpoint({'epoch': 2, 'w': torch.zeros(100)}, path)
    monkeypatch.undo()
    loaded = load_checkpoint(path)
    assert loaded['epoch'] == 1 and torch.equal(loaded['w'], torch.ones(100))
    assert _files(tmp_path) == ['ckpt.pth']


def test_save_refuses_what_weights_only_cannot_load(tmp_path):
    path = tmp_path / 'ckpt.pth'
    save_checkpoint({'epoch': 1}, path)
    with pytest.raises(TypeError, match='argparse.Namespace'):
        save_checkpoint({'epoch': 2, 'args': argparse.Namespace(lr=0.1)}, path)
    assert load_checkpoint(path)['epoch'] == 1
    assert _files(tmp_path) == ['ckpt.pth']


class _Payload:
    """A pickle that creates a file when unpickled -- stands in for arbitrary code execution."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return open, (self.target, 'w')


def test_malicious_pickle_is_refused(tmp_path):
    evil, marker = tmp_path / 'evil.pth', tmp_path / 'pwned'
    torch.save({'state_dict': _Payload(marker)}, evil)
    # the payload is real: unsafe loading would create a file
    probe = tmp_path / 'probe'
    torch.save({'x': _Payload(probe)}, tmp_path / 'probe.pth')
    torch.load(tmp_path / 'probe.pth', weights_only=False)
    assert probe.exists()

    with pytest.raises(UnsafeCheckpointError, match='execute arbitrary code') as info:
        load_checkpoint(evil)
    assert isinstance(info.value, ValueError)
    assert 'evil.pth' in str(info.value)
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError):
        create_model_from_checkpoint(evil)
    assert not marker.exists()


def test_plain_pickle_file_is_refused(tmp_path):
    path = tmp_path / 'legacy.pkl'
    with open(path, 'wb') as f:
        torch.save({'args': argparse.Namespace(lr=0.1)}, f, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeCheckpointError, match='Namespace'):
        load_checkpoint(path)


@pytest.mark.parametrize('cut', [0.5, 0.0])
def test_truncated_file(tmp_path, cut):
    path = tmp_path / 'ckpt.pth'
    save_checkpoint({'w': torch.randn(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * cut)])
    with pytest.raises(ValueError, match='ckpt.pth') as info:
        load_checkpoint(path)
    assert not isinstance(info.value, UnsafeCheckpointError)
    assert 'corrupt' in str(info.value)


def test_garbage_and_non_dict(tmp_path):
    garbage = tmp_path / 'garbage.pth'
    garbage.write_bytes(b'not a checkpoint' * 10)
    with pytest.raises(ValueError, match='garbage.pth'):
        load_checkpoint(garbage)
    tensor_file = tmp_path / 'tensor.pth'
    torch.save(torch.ones(2), tensor_file)
    with pytest.raises(ValueError, match='expected a dict'):
        load_checkpoint(tensor_file)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='not found'):
        load_checkpoint(tmp_path / 'nope.pth')


def test_create_model_from_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model(ARCH, num_classes=7).eval()
    path = tmp_path / 'ckpt.pth'
    save_checkpoint(_train_ckpt(model), path)
    restored, ckpt = create_model_from_checkpoint(path)
    assert not restored.training and restored.num_classes == 7 and ckpt['epoch'] == 3
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(restored(x), model(x), rtol=0, atol=0)
    cfg = timm.data.resolve_data_config(model=restored)
    assert cfg['mean'] == (0.5, 0.5, 0.5) and cfg['interpolation'] == 'bicubic'


def test_create_model_ema_and_prefix(tmp_path):
    torch.manual_seed(0)
    model, ema = timm.create_model(ARCH).eval(), timm.create_model(ARCH).eval()
    ddp_state = {f'module.{k}': v for k, v in model.state_dict().items()}
    path = tmp_path / 'ckpt.pth'
    save_checkpoint(_train_ckpt(model, state_dict=ddp_state, state_dict_ema=ema.state_dict()), path)
    x = torch.randn(2, 3, 32, 32)
    restored, _ = create_model_from_checkpoint(path)
    torch.testing.assert_close(restored(x), model(x), rtol=0, atol=0)
    restored_ema, _ = create_model_from_checkpoint(path, use_ema=True)
    torch.testing.assert_close(restored_ema(x), ema(x), rtol=0, atol=0)

    save_checkpoint(_train_ckpt(model), path)
    with pytest.raises(ValueError, match='state_dict_ema'):
        create_model_from_checkpoint(path, use_ema=True)


def test_create_model_mismatch_names_what_differs(tmp_path):
    model = timm.create_model(ARCH, num_classes=5)
    path = tmp_path / 'ckpt.pth'
    save_checkpoint(_train_ckpt(model, num_classes=10), path)
    with pytest.raises(ValueError, match=r"arch='resnet18d_tiny_bot', num_classes=10.*fc.weight: checkpoint \(5, "):
        create_model_from_checkpoint(path)
    state = model.state_dict()
    del state['fc.bias']
    save_checkpoint(_train_ckpt(model, state_dict=state), path)
    with pytest.raises(ValueError, match='missing keys: fc.bias'):
        create_model_from_checkpoint(path)


def test_bare_state_dict(tmp_path):
    model = timm.create_model(ARCH)
    path = tmp_path / 'weights.pth'
    save_checkpoint({f'module.{k}': v for k, v in model.state_dict().items()}, path)
    state = extract_state_dict(load_checkpoint(path))
    assert set(state) == set(model.state_dict())
    with pytest.raises(ValueError, match='bare state dict'):
        create_model_from_checkpoint(path)


def test_safetensors_weights(tmp_path):
    from safetensors.torch import save_file

    model = timm.create_model(ARCH)
    path = tmp_path / 'weights.safetensors'
    save_file(model.state_dict(), path)
    state = extract_state_dict(load_checkpoint(path))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match='weights.safetensors'):
        load_checkpoint(path)


def test_model_default_cfg_untouched_for_other_models(tmp_path):
    """Applying a checkpoint's data_config must not leak into timm's registry default for the arch."""
    model = timm.create_model(ARCH)
    path = tmp_path / 'ckpt.pth'
    save_checkpoint(_train_ckpt(model), path)
    create_model_from_checkpoint(path)
    assert timm.create_model(ARCH).pretrained_cfg['mean'] == PAPER_MEAN
    assert tuple(timm.create_model(ARCH).pretrained_cfg['std']) == PAPER_STD


def test_saved_file_is_loadable_with_plain_torch(tmp_path):
    path = tmp_path / 'ckpt.pth'
    save_checkpoint({'epoch': 5}, path)
    assert torch.load(path, weights_only=True) == {'epoch': 5}
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~_umask()  # not mkstemp's 0o600


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_save_removes_temp_files_of_killed_writers(tmp_path):
    path = tmp_path / 'last.pth.tar'
    dead_pid = 2 ** 22 + 12345  # above the default pid_max: no such process
    stale = tmp_path / f'.last.pth.tar.{dead_pid}.deadbeef.tmp'
    stale.write_bytes(b'half a checkpoint')
    unrelated = tmp_path / f'.other.pth.tar.{dead_pid}.deadbeef.tmp'
    unrelated.write_bytes(b'x')
    save_checkpoint({'epoch': 1}, path)
    assert not stale.exists() and unrelated.exists()
    assert load_checkpoint(path)['epoch'] == 1
