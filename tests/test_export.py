"""timm_bot.export: checkpoint -> timm / Hub folder -> timm.create_model('local-dir:' | 'hf-hub:'), and the push.

Checkpoints are written directly in train.py's format (no training). The Hub is never contacted: ``hf-hub:`` loads
from a Hugging Face cache written here, ``HfApi``'s network methods are replaced, or the real client meets a closed
local port.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import timm
import timm.utils
import torch
import yaml
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.utils import filter_repo_objects

import timm_bot  # noqa: F401  (registers the *_bot models)
from timm_bot import export as export_mod
from timm_bot.checkpoint import create_model_from_checkpoint, resolve_architecture, save_checkpoint
from timm_bot.export import ExportError, HubPushError, check_repo_id, export_checkpoint, timm_architecture

REPO = Path(__file__).resolve().parents[1]
FILES = {'model.safetensors', 'config.json', 'README.md'}
TOKEN = 'hf_FAKE_secret_token_value_123'
CLOSED_PORT = 'http://127.0.0.1:9'  # nothing listens on the discard port: connections are refused at once
DATA_CONFIG = {'input_size': [3, 32, 32], 'crop_pct': 1.0, 'interpolation': 'bilinear', 'mean': [0.5, 0.4, 0.3],
               'std': [0.25, 0.2, 0.3], 'crop_mode': 'center'}
SUMMARY = [{'epoch': 0, 'train_loss': 2.0, 'eval_loss': 1.5, 'eval_top1': 50.0, 'eval_top5': 90.0, 'lr': 0.1},
           {'epoch': 1, 'train_loss': 1.0, 'eval_loss': 1.0, 'eval_top1': 62.5, 'eval_top5': 96.25, 'lr': 0.05},
           {'epoch': 2, 'train_loss': 0.9, 'eval_loss': 1.1, 'eval_top1': 60.0, 'eval_top5': 95.0, 'lr': 0.0}]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """No way to the real Hub, no token from the environment or a login, one torch thread."""
    torch.set_num_threads(1)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(huggingface_hub.constants, 'ENDPOINT', CLOSED_PORT)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_TOKEN_PATH', str(tmp_path / 'no-login' / 'token'))
    for name in ('HF_TOKEN', 'HUGGING_FACE_HUB_TOKEN'):
        monkeypatch.delenv(name, raising=False)


def make_run(folder: Path, arch: str = 'resnet18d_tiny_bot', ema: bool = False, epoch: int = 2, **extra) -> Path:
    """A run folder as train.py leaves it: model_best.pth.tar (saved after epoch ``epoch``), args.yaml, summary.csv."""
    torch.manual_seed(0)
    model_args = extra.pop('model_args', {})
    with torch.device('meta'):  # skip the init: every tensor is filled below
        model = timm.create_model(arch, **dict(model_args, num_classes=10)).to_empty(device='cpu')
    with torch.no_grad():  # random weights (fan-in scaled) and BN statistics, so that every tensor matters
        for t in model.state_dict().values():
            t.copy_(torch.randn_like(t) / t[0].numel() ** 0.5 if t.dim() > 1 else
                    torch.rand_like(t) * 0.5 + 0.5 if t.is_floating_point() else torch.ones_like(t))
    REFERENCE[folder] = logits(model)
    assert REFERENCE[folder].isfinite().all()  # else bit-identical logits would prove little
    args = dict(model=arch, data_dir='digits', val_split='val', epochs=3, smoothing=0.1, model_ema=ema,
                output=str(folder.parent))
    args.update(extra.pop('args', {}))
    state = dict(arch=arch, model_args=model_args, source=None, num_classes=10, label_names=[str(i) for i in range(10)],
                 state_dict=model.state_dict(), data_config=DATA_CONFIG, args=args, epoch=epoch, batch_in_epoch=0,
                 global_step=30, best={'top1': 62.5, 'epoch': 1}, history=SUMMARY[:epoch], version=1)
    state.update(extra)
    if ema:
        state['state_dict_ema'] = {k: v * 0.5 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    save_checkpoint(state, folder / 'model_best.pth.tar')
    (folder / 'args.yaml').write_text(yaml.safe_dump(args, sort_keys=False))
    for row in SUMMARY:  # timm's own writer, as train.py uses it
        timm.utils.update_summary(row['epoch'], {'loss': row['train_loss']},
                                  {k[5:]: row[k] for k in ('eval_loss', 'eval_top1', 'eval_top5')},
                                  folder / 'summary.csv', lr=row['lr'], write_header=row['epoch'] == 0)
    return folder / 'model_best.pth.tar'


REFERENCE: dict[Path, torch.Tensor] = {}  # run folder -> logits of the model make_run saved


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)))


def put_in_hf_cache(cache: Path, repo_id: str, export: Path) -> None:
    """``export`` as huggingface_hub caches a download: blobs/<sha256>, snapshots/<commit>/<file> -> blob, refs/main."""
    repo = cache / f'models--{repo_id.replace("/", "--")}'
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    (repo / 'blobs').mkdir(parents=True)
    (repo / 'snapshots' / commit).mkdir(parents=True)
    (repo / 'refs').mkdir()
    (repo / 'refs' / 'main').write_text(commit)
    for f in export.iterdir():
        blob = hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copyfile(f, repo / 'blobs' / blob)
        (repo / 'snapshots' / commit / f.name).symlink_to(f'../../blobs/{blob}')


def run_python(args: list[str], tmp: Path, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(('HF_', 'HUGGING_FACE'))}
    full_env.update(OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1', HF_HOME=str(tmp / 'hf-home'), PYTHONPATH=str(REPO))
    full_env.update(env)
    return subprocess.run([sys.executable, *args], cwd=tmp, env=full_env, capture_output=True, text=True, timeout=120)


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith('.')]


# ---------------------------------------------------------------------------------------------------------------------
# Plain-timm architectures, round trips, loading without timm_bot
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('arch, expected', [
    ('resnet18_bot', ('resnet18', {})), ('resnet34c_bot', ('resnet34', {'stem_type': 'deep', 'stem_width': 32})),
    ('resnet34d_bot', ('resnet34d', {})), ('resnet50b_bot', ('resnet50', {})), ('resnet50c_bot', ('resnet50c', {})),
    ('resnet18d_tiny_bot', ('resnet18d', {'channels': [16, 32, 64, 128]})),
    ('resnet26c_tiny_bot', ('resnet26', {'channels': [16, 32, 64, 128], 'stem_type': 'deep', 'stem_width': 32})),
    ('resnet50_bot', ('resnet50_bot', {})), ('resnet26_tiny_bot', ('resnet26_tiny_bot', {})),  # stride on the 1x1
    ('mobilenetv3_small_050', ('mobilenetv3_small_050', {})),
])
def test_timm_architecture(arch: str, expected: tuple):
    with torch.device('meta'):
        model = timm.create_model(arch, num_classes=10)
        assert timm_architecture(model, arch) == expected
        same = timm.create_model(expected[0], num_classes=10, **expected[1])
    assert [(k, v.shape) for k, v in same.state_dict().items()] == [(k, v.shape) for k, v in model.state_dict().items()]
    assert str(same).split('(', 1)[1] == str(model).split('(', 1)[1]  # the module tree, but for the class name


def test_round_trip_local_dir(tmp_path: Path):
    ckpt = make_run(tmp_path / 'run')
    out = export_checkpoint(tmp_path / 'run', tmp_path / 'out')  # a run folder means its model_best.pth.tar
    assert {p.name for p in out.iterdir()} == FILES and leftovers(tmp_path) == []
    config = json.loads((out / 'config.json').read_text())
    assert config['architecture'] == 'resnet18d' and config['model_args']['channels'] == [16, 32, 64, 128]
    assert config['label_names'] == [str(i) for i in range(10)]
    assert not {'hf_hub_id', 'url', 'tag', 'file', 'source'} & set(config['pretrained_cfg'])
    loaded = timm.create_model(f'local-dir:{out}', pretrained=True)
    assert type(loaded) is timm.models.ResNet and torch.equal(logits(loaded), REFERENCE[tmp_path / 'run'])
    assert torch.equal(logits(create_model_from_checkpoint(ckpt)[0]), REFERENCE[tmp_path / 'run'])
    resolved = timm.data.resolve_data_config(model=loaded)
    assert resolved['input_size'] == (3, 32, 32) and list(resolved['mean']) == DATA_CONFIG['mean']
    assert (resolved['crop_pct'], resolved['interpolation']) == (1.0, 'bilinear')


def test_checkpoint_from_ones_own_loop(tmp_path: Path, capsys: pytest.CaptureFixture):
    """Issue 23 bug 4: {'state_dict', 'arch'} from one's own loop exports (the classifier tells the class count);
    without a classifier to read it from: one line, exit 2, nothing written."""
    model = timm.create_model('resnet18d_tiny_bot', num_classes=7).eval()
    timm_bot.save_checkpoint({'state_dict': model.state_dict(), 'arch': 'resnet18d_tiny_bot'}, tmp_path / 'own.pth')
    assert export_mod.main([str(tmp_path / 'own.pth'), str(tmp_path / 'out')]) == 0
    loaded = timm.create_model(f'local-dir:{tmp_path / "out"}', pretrained=True)
    assert loaded.num_classes == 7 and torch.equal(logits(loaded), logits(model))
    assert '**Classes:** 7' in (tmp_path / 'out' / 'README.md').read_text()
    model.reset_classifier(0)
    timm_bot.save_checkpoint({'state_dict': model.state_dict(), 'arch': 'resnet18d_tiny_bot'}, tmp_path / 'bare.pth')
    capsys.readouterr()
    assert export_mod.main([str(tmp_path / 'bare.pth'), str(tmp_path / 'bare')]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and "no 'num_classes'" in err and 'fc.weight' in err, err
    assert not (tmp_path / 'bare').exists()


def test_ema_export_card_rows_are_the_ema_weights(tmp_path: Path):
    """Issue 23: with use_ema every row of the card (exported, best, final epoch) is the EMA weights', whose best
    epoch here differs from the raw model's."""
    ckpt = make_run(tmp_path / 'run', ema=True)  # saved after epoch 2 (the raw model's best)
    (tmp_path / 'run' / 'summary.csv').unlink()
    for epoch, top1, ema_top1 in ((0, 50.0, 40.0), (1, 62.5, 45.0), (2, 60.0, 70.0)):
        timm.utils.update_summary(epoch, {'loss': 1.0}, {'loss': 1.5, 'top1': top1, 'top5': 90.0, 'ema_loss': 0.5,
                                                         'ema_top1': ema_top1, 'ema_top5': 99.0},
                                  tmp_path / 'run' / 'summary.csv', lr=0.1, write_header=epoch == 0)
    card = (export_checkpoint(ckpt, tmp_path / 'out', use_ema=True) / 'README.md').read_text()
    assert '| exported weights | 2 | 45.00 | 99.00 | 0.5000 |' in card
    assert '| best epoch | 3 | 70.00 | 99.00 | 0.5000 |' in card and '62.50' not in card


def test_export_ema_weights(tmp_path: Path):
    ckpt = make_run(tmp_path / 'run', ema=True)
    out = export_checkpoint(ckpt, tmp_path / 'out', use_ema=True)
    ema, _ = create_model_from_checkpoint(ckpt, use_ema=True)
    plain, _ = create_model_from_checkpoint(ckpt)
    loaded = timm.create_model(f'local-dir:{out}', pretrained=True)
    assert torch.equal(logits(loaded), logits(ema)) and not torch.equal(logits(loaded), logits(plain))
    assert 'exponential moving average' in (out / 'README.md').read_text()


LOAD_WITHOUT_PLUGIN = r'''
import sys, torch
sys.modules['timm_bot'] = None  # `import timm_bot` fails from here on
import timm
try:
    import timm_bot  # noqa
    raise SystemExit('timm_bot was importable')
except ImportError:
    pass
torch.set_num_threads(1)
x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
out = {}
for name in sys.argv[2:]:
    for spec in (f'local-dir:{name}', f'hf-hub:someone/{name}'):
        with torch.no_grad():
            out[spec] = timm.create_model(spec, pretrained=True).eval()(x)
try:
    timm.create_model('local-dir:original', pretrained=True)
except RuntimeError as e:
    out['original'] = str(e)
torch.save(out, sys.argv[1])
'''


def test_loads_without_timm_bot_local_dir_and_offline_hub_cache(tmp_path: Path):
    """A fresh interpreter where ``import timm_bot`` fails: the B/C/D and tiny exports load with plain timm, from
    the folder and through the real ``hf-hub:`` client reading a Hugging Face cache, bit-identical to training."""
    for arch in ('resnet18d_tiny_bot', 'resnet50d_bot', 'resnet50_bot'):
        ckpt = make_run(tmp_path / f'run-{arch}', arch)
        name = 'original' if arch == 'resnet50_bot' else arch
        export_checkpoint(ckpt, tmp_path / name)
        put_in_hf_cache(tmp_path / 'hub', f'someone/{name}', tmp_path / name)
    result = run_python(['-c', LOAD_WITHOUT_PLUGIN, str(tmp_path / 'logits.pt'), 'resnet18d_tiny_bot', 'resnet50d_bot'],
                        tmp_path, HF_HUB_CACHE=str(tmp_path / 'hub'))
    assert result.returncode == 0, result.stderr[-3000:]
    got = torch.load(tmp_path / 'logits.pt')
    for name in ('resnet18d_tiny_bot', 'resnet50d_bot'):
        assert torch.equal(got[f'local-dir:{name}'], REFERENCE[tmp_path / f'run-{name}'])
        assert torch.equal(got[f'hf-hub:someone/{name}'], REFERENCE[tmp_path / f'run-{name}'])
    # The original ResNet (stride on the 1x1 conv) has no timm equivalent: it keeps its name, and needs the plugin.
    assert 'Unknown model (resnet50_bot)' in got['original']
    card = (tmp_path / 'original' / 'README.md').read_text()
    assert json.loads((tmp_path / 'original' / 'config.json').read_text())['architecture'] == 'resnet50_bot'
    assert 'import timm_bot' in card and 'pip install -e .' in card and 'pip install timm-bot' not in card
    assert 'import timm_bot' not in (tmp_path / 'resnet50d_bot' / 'README.md').read_text()


# ---------------------------------------------------------------------------------------------------------------------
# The model card: front matter, measured accuracy, no local paths; fine-tunes
# ---------------------------------------------------------------------------------------------------------------------

def test_card_front_matter_and_no_local_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    FakeHub(monkeypatch)
    monkeypatch.setenv('HF_TOKEN', TOKEN)
    home = str(Path.home())
    teacher = make_run(tmp_path / 'teacher', 'resnet26d_tiny_bot')
    ckpt = make_run(tmp_path / 'run', args={'data_dir': f'{home}/datasets/inet20', 'teacher': str(teacher),
                                            'export_dir': str(tmp_path / 'out'), 'resume': f'{home}/last.pth.tar'})
    out = export_checkpoint(ckpt, tmp_path / 'out', push_to_hub='someone/tiny-inet20')
    for f in out.iterdir():  # every byte, the safetensors header (its metadata) included
        data = f.read_bytes()
        for private in (home, str(tmp_path), str(tmp_path.resolve()), '/tmp/'):
            assert private.encode() not in data, (f.name, private)
    card = ModelCard.load(out / 'README.md')
    data = card.data
    assert data.library_name == 'timm' and data.license == 'apache-2.0' and data.datasets is None  # not a Hub id
    assert {'image-classification', 'timm'} <= set(data.tags) and data.base_model is None
    top = {r.metric_type: r for r in data.eval_results}  # the model-index: the epoch whose weights were saved
    assert top['accuracy'].metric_value == 62.5 and top['top_5_accuracy'].metric_value == 96.25
    assert top['accuracy'].dataset_name == 'inet20' and top['accuracy'].dataset_split == 'val'
    recipe = yaml.safe_load(card.text.split('```yaml\n')[1].split('```')[0])
    assert recipe['data_dir'] == 'inet20' and recipe['teacher'] == 'resnet26d_tiny_bot'
    assert recipe['smoothing'] == 0.1 and not {'output', 'export_dir', 'resume'} & set(recipe)
    assert "timm.create_model('hf-hub:someone/tiny-inet20', pretrained=True)" in card.text
    assert '| final epoch | 3 | 60.00 | 95.00 | 1.1000 |' in card.text  # from summary.csv: the whole run


@pytest.mark.parametrize('hub', [False, True])
def test_fine_tune_exports_after_its_source_is_gone(tmp_path: Path, hub: bool):
    """A fine-tune of an export records the resolved architecture; it exports once the source is deleted, and its
    card names the base model by Hub id or folder name, never by path (front matter: Hub ids only)."""
    export_checkpoint(make_run(tmp_path / 'run'), tmp_path / 'models' / 'foo')
    source = f'local-dir:{(tmp_path / "models" / "foo").resolve()}'
    arch, model_args, _ = resolve_architecture(source)
    source = 'hf-hub:someone/foo@main' if hub else source
    ckpt = make_run(tmp_path / 'fine', arch, model_args=model_args, source=source, args={'model': source})
    shutil.rmtree(tmp_path / 'models')
    out = export_checkpoint(ckpt, tmp_path / 'out')
    assert json.loads((out / 'config.json').read_text())['architecture'] == 'resnet18d'
    assert torch.equal(logits(timm.create_model(f'local-dir:{out}', pretrained=True)),
                       logits(create_model_from_checkpoint(ckpt)[0]))
    card = ModelCard.load(out / 'README.md')
    assert card.data.base_model == ('someone/foo' if hub else None)  # issue 23: a folder name is not a Hub id
    assert f"Fine-tuned from `{'someone/foo' if hub else 'foo'}`." in card.text and 'datasets' not in card.content
    assert str(tmp_path).encode() not in b''.join(f.read_bytes() for f in out.iterdir())


# ---------------------------------------------------------------------------------------------------------------------
# Atomic writing, the overwrite policy, one-line errors
# ---------------------------------------------------------------------------------------------------------------------

def test_overwrite_policy(tmp_path: Path):
    ckpt = make_run(tmp_path / 'run', ema=True)
    out = export_checkpoint(ckpt, tmp_path / 'out')
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ExportError, match='--overwrite'):
        export_checkpoint(ckpt, out, use_ema=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    export_checkpoint(ckpt, out, use_ema=True, overwrite=True)
    assert torch.equal(logits(timm.create_model(f'local-dir:{out}', pretrained=True)),
                       logits(create_model_from_checkpoint(ckpt, use_ema=True)[0]))
    (tmp_path / 'notes').mkdir()
    (tmp_path / 'notes' / 'notes.txt').write_text('keep me')
    with pytest.raises(ExportError, match='not a previous export'):
        export_checkpoint(ckpt, tmp_path / 'notes', overwrite=True)
    assert (tmp_path / 'notes' / 'notes.txt').read_text() == 'keep me'
    (tmp_path / 'empty').mkdir()
    assert {p.name for p in export_checkpoint(ckpt, tmp_path / 'empty').iterdir()} == FILES
    assert leftovers(tmp_path) == []


def test_failed_export_leaves_previous_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    ckpt = make_run(tmp_path / 'run', ema=True)
    out = export_checkpoint(ckpt, tmp_path / 'out')
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_save = export_mod.save_for_hf

    def save_then_fail(*args, **kwargs):
        real_save(*args, **kwargs)  # half an export on disk, then the disk is full
        raise OSError('No space left on device')

    monkeypatch.setattr(export_mod, 'save_for_hf', save_then_fail)
    for target, overwrite in ((out, True), (tmp_path / 'fresh', False)):
        with pytest.raises(OSError, match='No space left'):
            export_checkpoint(ckpt, target, use_ema=True, overwrite=overwrite)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not (tmp_path / 'fresh').exists() and leftovers(tmp_path) == []


def test_cli_bad_input_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture):
    ckpt = make_run(tmp_path / 'run')
    cases = [([str(ckpt), str(tmp_path / 'out'), '--use-ema'], 'no EMA weights'),
             ([str(tmp_path / 'missing.pth.tar'), str(tmp_path / 'out')], 'not found'),
             ([str(ckpt), str(tmp_path / 'out'), '--push-to-hub', 'a/b/c'], 'not a valid Hub repo id')]
    for argv, message in cases:
        assert export_mod.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count('\n') == 1 and err.startswith('error: ') and message in err, err
    assert not (tmp_path / 'out').exists() and leftovers(tmp_path) == []
    with pytest.raises(ExportError):
        check_repo_id('user/name with spaces')
    assert check_repo_id('user/name') == 'user/name'


# ---------------------------------------------------------------------------------------------------------------------
# Pushing: HfApi's network methods replaced, and the real client against a closed port
# ---------------------------------------------------------------------------------------------------------------------

class FakeHub:
    """Records ``HfApi.create_repo`` / ``upload_folder`` calls and the files the real pattern filter would send."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_with: Exception | None = None):
        self.calls, self.uploaded, self.tokens = [], {}, []

        def create_repo(api, repo_id, **kwargs):
            self.tokens.append(api.token)
            self.calls.append(('create_repo', dict(kwargs, repo_id=repo_id)))
            if fail_with is not None:
                raise fail_with
            return huggingface_hub.RepoUrl(f'https://huggingface.co/{repo_id}', endpoint='https://huggingface.co')

        def upload_folder(api, *, repo_id, folder_path, allow_patterns=None, ignore_patterns=None, **kwargs):
            self.calls.append(('upload_folder', dict(kwargs, repo_id=repo_id, allow_patterns=allow_patterns)))
            names = filter_repo_objects([p.name for p in Path(folder_path).iterdir()], allow_patterns=allow_patterns,
                                        ignore_patterns=ignore_patterns)
            self.uploaded = {n: (Path(folder_path) / n).read_bytes() for n in names}
            return huggingface_hub.CommitInfo(commit_url=f'https://huggingface.co/{repo_id}/commit/abc',
                                              commit_message='m', commit_description='', oid='abc', pr_url=None)

        monkeypatch.setattr(HfApi, 'create_repo', create_repo)
        monkeypatch.setattr(HfApi, 'upload_folder', upload_folder)


def test_push_uploads_only_the_export_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture):
    monkeypatch.setenv('HF_TOKEN', TOKEN)
    hub = FakeHub(monkeypatch)
    out = export_checkpoint(make_run(tmp_path / 'run'), tmp_path / 'out', push_to_hub='someone/tiny', private=True)
    assert [name for name, _ in hub.calls] == ['create_repo', 'upload_folder'] and hub.tokens == [TOKEN]
    assert hub.calls[0][1] == {'repo_id': 'someone/tiny', 'private': True, 'exist_ok': True, 'repo_type': 'model'}
    assert set(hub.uploaded) == FILES and 'resnet18d' in hub.calls[1][1]['commit_message']
    # an existing export, with stray files beside it, from the CLI
    (out / 'notes.pth').write_bytes(b'pickle')
    (out / '.cache').mkdir()
    hub = FakeHub(monkeypatch)
    assert export_mod.main([str(out), '--push-to-hub', 'someone/tiny']) == 0
    assert set(hub.uploaded) == FILES and hub.tokens == [TOKEN] and hub.calls[0][1]['private'] is False
    assert 'someone/tiny' in capsys.readouterr().out
    assert all(TOKEN.encode() not in data for data in hub.uploaded.values())


def test_push_failures_are_scrubbed_one_liners(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    out = export_checkpoint(make_run(tmp_path / 'run'), tmp_path / 'out')
    with pytest.raises(HubPushError, match='no Hugging Face token'):
        export_mod.push_export_to_hub(out, 'someone/tiny')

    class Forbidden(Exception):
        response = type('Response', (), {'status_code': 403})()

    FakeHub(monkeypatch, fail_with=Forbidden(f'403 Forbidden (Authorization: Bearer {TOKEN})\nmore'))
    with pytest.raises(HubPushError) as info:
        export_mod.push_export_to_hub(out, 'someone/tiny', token=TOKEN, private=True)
    message = str(info.value)
    assert TOKEN not in message and '***' in message and 'HTTP 403' in message and '\n' not in message
    assert f'retry with: python -m timm_bot.export {out} --push-to-hub someone/tiny --private' in message
    assert info.value.__cause__ is None and info.value.__context__ is None  # no chained error holds the token


def test_cli_push_failure_real_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture):
    """The real huggingface_hub client against a closed local port: exit 1, one line, no token; the export kept."""
    ckpt = make_run(tmp_path / 'run')
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.setenv('HF_TOKEN', TOKEN)
    assert export_mod.main([str(ckpt), str(tmp_path / 'out'), '--push-to-hub', 'user/repo']) == 1
    out, err = capfd.readouterr()  # file-descriptor level: whatever the client or its loggers print, too
    assert err.count('\n') == 1 and err.startswith('error: '), err
    assert f'could not reach the Hub at {CLOSED_PORT}' in err and 'user/repo' in err and 'retry with:' in err
    assert TOKEN not in out + err
    assert {p.name for p in (tmp_path / 'out').iterdir()} == FILES
    assert not [p for p in tmp_path.rglob('*') if p.is_file() and TOKEN.encode() in p.read_bytes()]
