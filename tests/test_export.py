"""Export to a timm / Hugging Face Hub folder and push (timm_bot.export).

A real one-epoch train.py run on the embedded digits (module-scoped, shared) is exported and reloaded through
``timm.create_model('local-dir:...')``; the Hub is never contacted: the upload path runs against a patched ``HfApi``
(only its network methods are replaced) and the failure path against a closed local port.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest
import timm
import torch
import yaml
from huggingface_hub import HfApi, ModelCard

import timm_bot  # noqa: F401  (registers the _bot models before timm.create_model)
from timm_bot import export as export_mod
from timm_bot.checkpoint import create_model_from_checkpoint, load_checkpoint, save_checkpoint
from timm_bot.export import (
    PAPER_BIBTEX,
    ExportError,
    HubPushError,
    export_checkpoint,
    push_export_to_hub,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
ARCH = 'resnet18d_tiny_bot'
FAKE_TOKEN = 'hf_FAKE_secret_token_value_123'
CLOSED_PORT_ENDPOINT = 'http://127.0.0.1:9'  # the discard port: nothing listens, connections are refused at once
EXPORT_FILES = {'model.safetensors', 'config.json', 'README.md'}

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _single_thread_and_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """One thread (the machine is shared) and no way to reach the real Hub from this process: offline mode on,
    endpoint a closed local port, no token from the environment or a login cache."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(huggingface_hub.constants, 'ENDPOINT', CLOSED_PORT_ENDPOINT)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_TOKEN_PATH', str(tmp_path / 'no-hf-home' / 'token'))
    for name in ('HF_TOKEN', 'HUGGING_FACE_HUB_TOKEN', 'HF_OIDC_RESOURCE'):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('HF_HUB_DISABLE_TELEMETRY', '1')
    yield
    torch.set_num_threads(threads)


def _subprocess_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ('HF_TOKEN', 'HUGGING_FACE_HUB_TOKEN', 'HF_OIDC_RESOURCE')}
    env.update(OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', HF_HUB_DISABLE_TELEMETRY='1', HF_HUB_OFFLINE='1',
               HF_HOME=str(tmp / 'hf-home'), PYTHONUNBUFFERED='1')
    env.update(extra)
    return env


def _run(args: list[str], tmp: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=_subprocess_env(tmp, **env),
                          capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------------------------------------------------------
# Fixtures: one real training run (shared), its exports, and a synthetic checkpoint for the fast tests
# ---------------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train.py (subprocess), one epoch on digits with model EMA, then validate.py on its checkpoint
    (validate-val.json beside it).
    warmup_epochs 0: the quickstart's 1-epoch warmup must be shorter than the run."""
    pytest.importorskip('sklearn', reason='the digits dataset needs scikit-learn (pip install timm-bot[demo])')
    tmp = tmp_path_factory.mktemp('export_run')
    result = _run(['train.py', '--hparams', 'hparams/quickstart.yaml', '--epochs', '1', '--warmup_epochs', '0',
                   '--workers', '0', '--plots', 'false', '--model_ema', 'true', '--output', str(tmp),
                   '--experiment', 'run'], tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp / 'run'
    # validate.py's main in this process (one interpreter start-up less); test_validate_py_accepts_export runs the
    # script itself on the export.
    spec = importlib.util.spec_from_file_location('_validate_script', REPO_ROOT / 'validate.py')
    validate_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(validate_script)
    torch.set_num_threads(1)
    assert validate_script.main(['--checkpoint', str(run / 'model_best.pth.tar'), '--data-dir', 'digits',
                                 '--workers', '0']) == 0
    assert (run / 'validate-val.json').is_file()
    return run


@pytest.fixture(scope='module')
def exported(trained_run: Path) -> Path:
    torch.set_num_threads(1)
    return export_checkpoint(trained_run / 'model_best.pth.tar', trained_run.parent / 'export')


def _synthetic_checkpoint(path: Path, ema: bool = True) -> Path:
    """A train.py-format checkpoint of a randomly initialized tiny model (no summary.csv / args.yaml beside it)."""
    torch.manual_seed(0)
    model = timm.create_model(ARCH, num_classes=10)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    state = {
        'arch': ARCH, 'num_classes': 10, 'label_names': [f'class{i}' for i in range(10)],
        'state_dict': model.state_dict(),
        'data_config': {'input_size': [3, 32, 32], 'crop_pct': 1.0, 'interpolation': 'bilinear',
                        'mean': [0.5, 0.5, 0.5], 'std': [0.25, 0.25, 0.25], 'crop_mode': 'center'},
        'args': {'model': ARCH, 'data_dir': 'digits', 'epochs': 2, 'smoothing': 0.1, 'mixup': 0.0},
        'epoch': 2, 'batch_in_epoch': 0, 'best': {'top1': 60.0, 'epoch': 1},
        'history': [{'epoch': 0, 'train_loss': 2.0, 'eval_loss': 1.5, 'eval_top1': 50.0, 'eval_top5': 90.0,
                     'lr': 0.1},
                    {'epoch': 1, 'train_loss': 1.0, 'eval_loss': 1.0, 'eval_top1': 60.0, 'eval_top5': 95.0,
                     'lr': 0.0}],
    }
    if ema:
        state['state_dict_ema'] = {k: v + 0.01 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(state, path)
    return path


@pytest.fixture
def synthetic_ckpt(tmp_path: Path) -> Path:
    return _synthetic_checkpoint(tmp_path / 'run' / 'model_best.pth.tar')


def _logits(model: torch.nn.Module, seed: int = 0) -> torch.Tensor:
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(x)


def _load_export(folder: Path) -> torch.nn.Module:
    return timm.create_model(f'local-dir:{folder}', pretrained=True).eval()


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if '.tmp-' in p.name or '.old-' in p.name)


# ---------------------------------------------------------------------------------------------------------------------
# Round trip: checkpoint -> folder -> timm.create_model('local-dir:...'), bit for bit
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_export_loads_bit_identical(trained_run: Path, exported: Path):
    assert {p.name for p in exported.iterdir()} == EXPORT_FILES  # safetensors only: no pickle in the folder
    assert _leftovers(exported.parent) == []
    reference, ckpt = create_model_from_checkpoint(trained_run / 'model_best.pth.tar')
    loaded = _load_export(exported)
    assert type(loaded) is type(reference) and loaded.num_classes == 10
    ref_state, loaded_state = reference.state_dict(), loaded.state_dict()
    assert ref_state.keys() == loaded_state.keys()
    assert all(torch.equal(ref_state[k], loaded_state[k]) for k in ref_state)
    assert torch.equal(_logits(loaded), _logits(reference))
    # The training run's preprocessing (32x32 digits), not the architecture's defaults, is what timm resolves.
    data_config = ckpt['data_config']
    resolved = timm.data.resolve_data_config({}, model=loaded)
    assert resolved['input_size'] == (3, 32, 32)
    assert resolved['crop_pct'] == data_config['crop_pct']
    assert resolved['interpolation'] == data_config['interpolation']
    assert list(resolved['mean']) == list(data_config['mean']) and list(resolved['std']) == list(data_config['std'])
    assert loaded.pretrained_cfg['label_names'] == ckpt['label_names']


@pytest.mark.slow
def test_config_json(trained_run: Path, exported: Path):
    config = json.loads((exported / 'config.json').read_text())
    ckpt = load_checkpoint(trained_run / 'model_best.pth.tar')
    assert config['architecture'] == ARCH and config['num_classes'] == 10
    assert config['label_names'] == ckpt['label_names'] == [str(i) for i in range(10)]
    cfg = config['pretrained_cfg']
    assert cfg['input_size'] == [3, 32, 32]
    for key in ('crop_pct', 'interpolation', 'mean', 'std', 'crop_mode'):
        assert cfg[key] == ckpt['data_config'][key], key
    assert cfg['paper_ids'] == 'arXiv:1812.01187' and cfg['license'] == 'apache-2.0'
    assert not {'tag', 'hf_hub_id', 'origin_url', 'url', 'file'} & set(cfg)  # nothing about other weights


@pytest.mark.slow
def test_export_ema_weights(trained_run: Path, tmp_path: Path):
    out = export_checkpoint(trained_run / 'model_best.pth.tar', tmp_path / 'ema', use_ema=True)
    reference, _ = create_model_from_checkpoint(trained_run / 'model_best.pth.tar', use_ema=True)
    plain, _ = create_model_from_checkpoint(trained_run / 'model_best.pth.tar')
    loaded = _load_export(out)
    assert torch.equal(_logits(loaded), _logits(reference))
    assert not torch.equal(_logits(loaded), _logits(plain))
    assert 'exponential moving average (EMA)' in (out / 'README.md').read_text()


def test_use_ema_without_ema_weights(tmp_path: Path):
    ckpt = _synthetic_checkpoint(tmp_path / 'run' / 'ckpt.pth.tar', ema=False)
    with pytest.raises(ExportError, match='no EMA weights'):
        export_checkpoint(ckpt, tmp_path / 'out', use_ema=True)
    assert not (tmp_path / 'out').exists() and _leftovers(tmp_path) == []


@pytest.mark.slow
def test_validate_py_accepts_export(trained_run: Path, exported: Path, tmp_path: Path):
    results_file = tmp_path / 'validate-export.json'
    result = _run(['validate.py', '--model', f'local-dir:{exported}', '--data-dir', 'digits', '--workers', '0',
                   '--results-file', str(results_file)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    from_export = json.loads(results_file.read_text())
    from_checkpoint = json.loads((trained_run / 'validate-val.json').read_text())
    assert from_export['count'] == from_checkpoint['count'] > 0
    assert from_export['top1'] == from_checkpoint['top1']
    assert from_export['top5'] == from_checkpoint['top5']
    assert from_export['img_size'] == 32


# ---------------------------------------------------------------------------------------------------------------------
# The model card
# ---------------------------------------------------------------------------------------------------------------------

def _front_matter(card: str) -> dict[str, Any]:
    assert card.startswith('---\n')
    return yaml.safe_load(card.split('---\n', 2)[1])


def _tables(card: str) -> list[list[list[str]]]:
    """Markdown tables as lists of rows of cells (separator rows dropped)."""
    tables, current = [], []
    for line in card.splitlines():
        if line.startswith('|'):
            cells = [c.strip() for c in line.strip().strip('|').split('|')]
            if not all(re.fullmatch(r':?-+:?', c) for c in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables + ([current] if current else [])


def _table_with(card: str, header_cell: str) -> dict[str, dict[str, str]]:
    """The table whose header has ``header_cell``, as {first cell: {header: cell}}."""
    table = next(t for t in _tables(card) if header_cell in t[0])
    return {row[0]: dict(zip(table[0], row)) for row in table[1:]}


def _summary(run: Path) -> list[dict[str, float]]:
    with (run / 'summary.csv').open(newline='') as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


@pytest.mark.slow
def test_card_front_matter_and_metrics(trained_run: Path, exported: Path):
    card = (exported / 'README.md').read_text()
    meta = _front_matter(card)
    assert meta['library_name'] == 'timm' and meta['license'] == 'apache-2.0'
    assert {'image-classification', 'timm'} <= set(meta['tags'])
    assert meta['pipeline_tag'] == 'image-classification'
    rows = _summary(trained_run)
    ckpt = load_checkpoint(trained_run / 'model_best.pth.tar')
    weights_row = next(r for r in rows if int(r['epoch']) == ckpt['epoch'] - 1)
    # model-index, read the way the Hub reads it
    results = {r.metric_type: r for r in ModelCard(card).data.eval_results}
    assert results['accuracy'].metric_value == pytest.approx(weights_row['eval_top1'], abs=1e-4)
    assert results['top_5_accuracy'].metric_value == pytest.approx(weights_row['eval_top5'], abs=1e-4)
    assert results['accuracy'].dataset_name == 'digits' and results['accuracy'].dataset_split == 'val'
    # results table vs summary.csv
    table = _table_with(card, 'top-1 (%)')
    best = max(rows, key=lambda r: r['eval_top1'])
    for label, row in (('best epoch (by top-1)', best), ('final epoch', rows[-1]), ('exported weights', weights_row)):
        assert int(table[label]['epoch']) == int(row['epoch']) + 1, label
        assert float(table[label]['top-1 (%)']) == pytest.approx(row['eval_top1'], abs=0.005 + 1e-9), label
        assert float(table[label]['top-5 (%)']) == pytest.approx(row['eval_top5'], abs=0.005 + 1e-9), label
        assert float(table[label]['eval loss']) == pytest.approx(row['eval_loss'], abs=5e-5 + 1e-9), label
        assert float(table[label]['EMA top-1 (%)']) == pytest.approx(row['eval_ema_top1'], abs=0.005 + 1e-9)
    # validate.py results beside the checkpoint
    validated = json.loads((trained_run / 'validate-val.json').read_text())
    vtable = _table_with(card, 'images')
    assert float(vtable['validate-val.json']['top-1 (%)']) == pytest.approx(validated['top1'], abs=0.005 + 1e-9)
    assert int(vtable['validate-val.json']['images']) == validated['count']
    assert vtable['validate-val.json']['weights'] == 'model_best.pth.tar'


@pytest.mark.slow
def test_card_recipe_usage_and_citation(trained_run: Path, exported: Path):
    card = (exported / 'README.md').read_text()
    recipe = yaml.safe_load(re.search(r'```yaml\n(.*?)\n```', card, re.S).group(1))
    assert recipe == yaml.safe_load((trained_run / 'args.yaml').read_text())
    tricks = _table_with(card, 'paper section')
    assert tricks['Label smoothing']['this run'].startswith('epsilon 0.1')
    assert tricks['Optimizer']['this run'].startswith('nag')
    assert tricks['Model tweak']['paper section'] == '4' and 'ResNet-D' in tricks['Model tweak']['this run']
    assert tricks['Mixup']['this run'] == 'off'
    usage = re.search(r'```python\n(.*?)\n```', card, re.S).group(1)
    assert 0 <= usage.index('import timm_bot') < usage.index("timm.create_model('hf-hub:")
    assert PAPER_BIBTEX in card and '@inproceedings{he2019bag' in card


# ---------------------------------------------------------------------------------------------------------------------
# Atomic writing and the overwrite policy
# ---------------------------------------------------------------------------------------------------------------------

def test_overwrite_policy(synthetic_ckpt: Path, tmp_path: Path):
    out = tmp_path / 'out'
    export_checkpoint(synthetic_ckpt, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ExportError, match='--overwrite'):
        export_checkpoint(synthetic_ckpt, out, use_ema=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    export_checkpoint(synthetic_ckpt, out, use_ema=True, overwrite=True)
    reference, _ = create_model_from_checkpoint(synthetic_ckpt, use_ema=True)
    assert torch.equal(_logits(_load_export(out)), _logits(reference))
    # an existing folder that is not an export is never replaced, an empty one is used
    other = tmp_path / 'notes'
    other.mkdir()
    (other / 'notes.txt').write_text('keep me')
    with pytest.raises(ExportError, match='not a previous export'):
        export_checkpoint(synthetic_ckpt, other, overwrite=True)
    assert (other / 'notes.txt').read_text() == 'keep me'
    (tmp_path / 'empty').mkdir()
    export_checkpoint(synthetic_ckpt, tmp_path / 'empty')
    assert {p.name for p in (tmp_path / 'empty').iterdir()} == EXPORT_FILES
    # never into the folder holding the checkpoint
    with pytest.raises(ExportError, match='contains the checkpoint'):
        export_checkpoint(synthetic_ckpt, synthetic_ckpt.parent, overwrite=True)
    assert synthetic_ckpt.is_file()
    assert _leftovers(tmp_path) == []


def test_failed_export_leaves_previous_intact(synthetic_ckpt: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch):
    out = tmp_path / 'out'
    export_checkpoint(synthetic_ckpt, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_save = export_mod.save_for_hf

    def save_then_fail(model, save_directory, **kwargs):
        real_save(model, save_directory, **kwargs)  # half an export on disk...
        raise OSError('No space left on device')  # ...then the disk fills up

    monkeypatch.setattr(export_mod, 'save_for_hf', save_then_fail)
    with pytest.raises(OSError, match='No space left'):
        export_checkpoint(synthetic_ckpt, out, use_ema=True, overwrite=True)
    with pytest.raises(OSError, match='No space left'):
        export_checkpoint(synthetic_ckpt, tmp_path / 'fresh')
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not (tmp_path / 'fresh').exists() and _leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------------------------------
# Pushing: the network boundary (HfApi's methods) replaced, and the real client against a closed port
# ---------------------------------------------------------------------------------------------------------------------

class _FakeHub:
    """Stands in for the Hub behind ``HfApi.create_repo`` / ``create_branch`` / ``upload_folder`` and records what
    would have been sent (the uploaded files are read at call time, as the real client would)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_with: BaseException | None = None):
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.uploaded: dict[str, bytes] = {}
        self.tokens: list[Any] = []
        hub = self

        def create_repo(api, repo_id, **kwargs):
            hub.tokens.append(api.token)
            hub.calls.append(('create_repo', dict(kwargs, repo_id=repo_id)))
            if fail_with is not None:
                raise fail_with
            return huggingface_hub.RepoUrl(f'https://huggingface.co/{repo_id}', endpoint='https://huggingface.co')

        def create_branch(api, repo_id, **kwargs):
            hub.calls.append(('create_branch', dict(kwargs, repo_id=repo_id)))

        def upload_folder(api, **kwargs):
            hub.calls.append(('upload_folder', kwargs))
            folder = Path(kwargs['folder_path'])
            hub.uploaded = {p.name: p.read_bytes() for p in folder.iterdir()}
            return huggingface_hub.CommitInfo(
                commit_url=f'https://huggingface.co/{kwargs["repo_id"]}/commit/abc123', commit_message='m',
                commit_description='', oid='abc123', pr_url=None)

        monkeypatch.setattr(HfApi, 'create_repo', create_repo)
        monkeypatch.setattr(HfApi, 'create_branch', create_branch)
        monkeypatch.setattr(HfApi, 'upload_folder', upload_folder)

    def call(self, name: str) -> dict[str, Any]:
        return next(kwargs for n, kwargs in self.calls if n == name)


def test_push_uploads_the_export(synthetic_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv('HF_TOKEN', FAKE_TOKEN)
    hub = _FakeHub(monkeypatch)
    out = export_checkpoint(synthetic_ckpt, tmp_path / 'out', push_to_hub='someone/tiny-digits', private=True,
                            revision='v1', commit_message='First model')
    assert [name for name, _ in hub.calls] == ['create_repo', 'create_branch', 'upload_folder']
    assert hub.call('create_repo') == {'repo_id': 'someone/tiny-digits', 'private': True, 'exist_ok': True,
                                       'repo_type': 'model'}
    assert hub.call('create_branch')['branch'] == 'v1' and hub.call('create_branch')['exist_ok'] is True
    upload = hub.call('upload_folder')
    assert upload['repo_id'] == 'someone/tiny-digits' and Path(upload['folder_path']) == out
    assert upload['revision'] == 'v1' and upload['commit_message'] == 'First model'
    assert '*.bin' in upload['ignore_patterns'] and '*.pth' in upload['ignore_patterns']
    assert hub.tokens == [FAKE_TOKEN]  # resolved by huggingface_hub's own lookup (HF_TOKEN)
    assert set(hub.uploaded) == EXPORT_FILES
    card = hub.uploaded['README.md'].decode()
    assert "timm.create_model('hf-hub:someone/tiny-digits', pretrained=True)" in card
    # No summary.csv / args.yaml beside this checkpoint: the card uses the checkpoint's history and args.
    assert "from the checkpoint's `history`" in card and "the checkpoint's `args`" in card
    assert float(_table_with(card, 'top-1 (%)')['best epoch (by top-1)']['top-1 (%)']) == 60.0
    assert all(FAKE_TOKEN.encode() not in data for data in hub.uploaded.values())


def test_push_defaults_and_no_revision(synthetic_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    hub = _FakeHub(monkeypatch)
    out = export_checkpoint(synthetic_ckpt, tmp_path / 'out')
    url = push_export_to_hub(out, 'someone/tiny', token=FAKE_TOKEN)
    assert url.endswith('/commit/abc123')
    assert [name for name, _ in hub.calls] == ['create_repo', 'upload_folder']
    assert hub.call('create_repo')['private'] is False and hub.call('upload_folder')['revision'] is None
    assert ARCH in hub.call('upload_folder')['commit_message']


def test_push_without_token(synthetic_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    hub = _FakeHub(monkeypatch)
    with pytest.raises(HubPushError, match='no Hugging Face token') as info:
        export_checkpoint(synthetic_ckpt, tmp_path / 'out', push_to_hub='someone/tiny')
    assert hub.calls == []
    assert f'python -m timm_bot.export {tmp_path / "out"} --push-to-hub someone/tiny' in str(info.value)
    assert {p.name for p in (tmp_path / 'out').iterdir()} == EXPORT_FILES


def test_push_error_is_scrubbed(synthetic_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    class Forbidden(Exception):
        response = type('Response', (), {'status_code': 403})()

    monkeypatch.setenv('HF_TOKEN', FAKE_TOKEN)
    _FakeHub(monkeypatch, fail_with=Forbidden(f'403 Forbidden (request had Authorization: Bearer {FAKE_TOKEN})'))
    with pytest.raises(HubPushError) as info:
        export_checkpoint(synthetic_ckpt, tmp_path / 'out', push_to_hub='someone/tiny', private=True)
    message = str(info.value)
    assert FAKE_TOKEN not in message and '***' in message and 'HTTP 403' in message
    assert '--push-to-hub someone/tiny --private' in message
    assert info.value.__cause__ is None and info.value.__context__ is None  # no chained exception holds the token
    assert {p.name for p in (tmp_path / 'out').iterdir()} == EXPORT_FILES


def test_bad_repo_id_is_refused_before_writing(synthetic_ckpt: Path, tmp_path: Path):
    with pytest.raises(ExportError, match='not a valid Hub repo id'):
        export_checkpoint(synthetic_ckpt, tmp_path / 'out', push_to_hub='a/b/c')
    assert not (tmp_path / 'out').exists()


@pytest.mark.slow
def test_cli_push_failure_real_client(synthetic_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The real huggingface_hub client against a closed local port: exit 1, one clear line, the export intact and
    loadable, the token nowhere; then the printed retry command uploads the folder (network boundary patched)."""
    out = tmp_path / 'out'
    result = _run(['-m', 'timm_bot.export', str(synthetic_ckpt), str(out), '--push-to-hub', 'user/repo'], tmp_path,
                  timeout=120, HF_ENDPOINT=CLOSED_PORT_ENDPOINT, HF_TOKEN=FAKE_TOKEN, HF_HUB_OFFLINE='0')
    assert result.returncode == 1, result.stderr
    assert FAKE_TOKEN not in result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1, result.stderr
    assert 'user/repo' in errors[0] and 'could not reach the Hub at http://127.0.0.1:9' in errors[0]
    assert 'Traceback' not in result.stderr
    assert {p.name for p in out.iterdir()} == EXPORT_FILES
    for path in tmp_path.rglob('*'):
        if path.is_file():
            assert FAKE_TOKEN.encode() not in path.read_bytes(), path
    reference, _ = create_model_from_checkpoint(synthetic_ckpt)
    assert torch.equal(_logits(_load_export(out)), _logits(reference))

    retry = re.search(r'retry with: (python -m timm_bot\.export .*?) \(or: hf upload', errors[0]).group(1)
    argv = shlex.split(retry)
    assert argv[:3] == ['python', '-m', 'timm_bot.export'] and argv[3] == str(out)
    monkeypatch.setenv('HF_TOKEN', FAKE_TOKEN)
    hub = _FakeHub(monkeypatch)
    assert export_mod.main(argv[3:]) == 0
    assert hub.call('upload_folder')['repo_id'] == 'user/repo' and set(hub.uploaded) == EXPORT_FILES
