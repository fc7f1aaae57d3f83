"""validate.py as a user runs it (a subprocess), on checkpoints built here without train.py: the metrics of the saved
weights, result files named after the checkpoint, labels compared, and one-line exit-2 errors before any work.

All invocations start together (one torch thread each) and are checked afterwards: the cost is mostly imports.
"""
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import timm
import timm.data
import torch
from helpers_data import write_image_folder
from torch.utils.data import DataLoader

from timm_bot.checkpoint import create_model_from_checkpoint, save_checkpoint
from timm_bot.data import collate_skip_bad, create_image_dataset
from timm_bot.evaluate import evaluate

pytest.importorskip('sklearn', reason='the data is written from the embedded digits (scikit-learn)')
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
LABELS = [str(i) for i in range(10)]
DATA_CONFIG = {'input_size': [3, 32, 32], 'crop_pct': 1.0, 'interpolation': 'bilinear',
               'mean': [0.485, 0.456, 0.406], 'std': [0.229, 0.224, 0.225], 'crop_mode': 'center'}


@dataclass
class Run:
    rc: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith('error: ')]


def _write_checkpoint(path: Path) -> None:
    """A checkpoint in train.py's format: random resnet18d_tiny_bot weights, and different EMA weights."""
    torch.manual_seed(0)
    model = timm.create_model('resnet18d_tiny_bot', num_classes=10)
    ema = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    save_checkpoint({'arch': 'resnet18d_tiny_bot', 'model_args': {}, 'source': None, 'num_classes': 10,
                     'label_names': LABELS, 'state_dict': model.state_dict(), 'state_dict_ema': ema,
                     'data_config': DATA_CONFIG, 'args': {}, 'epoch': 1, 'batch_in_epoch': 0, 'global_step': 10,
                     'best': {'top1': 10.0, 'epoch': 0}, 'history': [], 'version': 1}, path)
    timm.models.save_for_hf(model, path.parent / 'export', model_config={'label_names': LABELS},
                            data_config=DATA_CONFIG, safe_serialization=True)
    # Issue 23 bug 4: saved from one's own loop, no num_classes: the head tells it (10), or nothing does (no head)
    save_checkpoint({'state_dict': model.state_dict(), 'arch': 'resnet18d_tiny_bot'}, path.parent / 'own.pth')
    shutil.copyfile(path, path.parent / 'model_best.pth.tar')  # the run folder's best, as train.py leaves it
    model.reset_classifier(0)
    save_checkpoint({'state_dict': model.state_dict(), 'arch': 'resnet18d_tiny_bot'}, path.parent / 'headless.pth')


def _reference(ckpt: Path, use_ema: bool, data: Path) -> dict:
    """What validate.py must report: evaluate() in this process on the checkpoint's own eval preprocessing."""
    model, _ = create_model_from_checkpoint(ckpt, use_ema)
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
    loader = DataLoader(create_image_dataset(data, 'val', transform), batch_size=64, collate_fn=collate_skip_bad)
    return evaluate(model, loader, torch.device('cpu'))


@pytest.fixture(scope='module')
def runs(tmp_path_factory) -> tuple[Path, dict[str, Run]]:
    tmp = tmp_path_factory.mktemp('validate')
    ckpt = tmp / 'run' / 'last.pth.tar'
    _write_checkpoint(ckpt)
    small = write_image_folder(tmp / 'small', split='val', limit_per_class=3).parent  # 30 images
    five = write_image_folder(tmp / 'five', split='val', limit_per_class=1)  # classes 0-4 only
    for cls in '56789':
        shutil.rmtree(five / cls)
    letters = write_image_folder(tmp / 'letters', split='val', limit_per_class=1)  # 10 classes, other names
    for cls in LABELS:
        (letters / cls).rename(letters / 'abcdefghij'[int(cls)])
    (tmp / 'hparams.yaml').write_text('model: resnet18d_tiny_bot\nlr: 0.1\n')
    none = tmp / 'absent'  # bad input must be refused before the checkpoint or the data is even looked for
    named = {  # results file named by validate.py
        'ckpt': ['--checkpoint', ckpt, '--data_dir', small, '--batch_size', 8, '--log_interval', 1],
        'ema': ['--checkpoint', ckpt, '--use-ema', '--data-dir', small],
        'export': ['--checkpoint', tmp / 'run' / 'export', '--data-dir', small],
        'own': ['--checkpoint', tmp / 'run' / 'own.pth', '--data-dir', small],
        'run_dir': ['--checkpoint', tmp / 'run', '--data-dir', small / 'val', '--img-size', 36, '--crop-pct', 0.9],
        'model_default': ['--model', 'resnet18d_tiny_bot', '--data-dir', small],  # run in tmp: output/validate/
        'results_dir': ['--checkpoint', none, '--data-dir', none, '--results-file', tmp / 'missing' / 'r.json'],
    }
    cases = {  # --results-file NAME.json
        'random': ['--model', 'resnet18d_tiny_bot', '--data-dir', five.parent],
        'five': ['--checkpoint', ckpt, '--data-dir', five.parent],
        'letters': ['--checkpoint', ckpt, '--data-dir', letters.parent],
        'unknown_model': ['--model', 'resnet18dd', '--data-dir', none],
        'batch0': ['--checkpoint', none, '--data-dir', none, '--batch-size', 0],
        'yaml': ['--checkpoint', tmp / 'hparams.yaml', '--data-dir', none],
        'headless': ['--checkpoint', tmp / 'run' / 'headless.pth', '--data-dir', small],
        'cuda': ['--checkpoint', none, '--data-dir', none, '--device', 'cuda'],
        'gpu': ['--checkpoint', none, '--data-dir', none, '--device', 'gpu'],
    }
    cases = {**named, **{name: [*argv, '--results-file', tmp / f'{name}.json'] for name, argv in cases.items()}}
    env = {**os.environ, 'CUDA_VISIBLE_DEVICES': '', 'OMP_NUM_THREADS': '1', 'HF_HUB_OFFLINE': '1'}
    procs = {}
    for name, argv in cases.items():  # stdout/stderr to files: not a tty, and no pipe to fill up
        with open(tmp / f'{name}.out', 'w') as out, open(tmp / f'{name}.err', 'w') as err:
            procs[name] = subprocess.Popen([sys.executable, REPO / 'validate.py', '--workers', '0', *map(str, argv)],
                                           cwd=tmp if name == 'model_default' else REPO, env=env, stdout=out,
                                           stderr=err)
    return tmp, {name: Run(p.wait(timeout=600), (tmp / f'{name}.out').read_text(), (tmp / f'{name}.err').read_text())
                 for name, p in procs.items()}


def test_metrics_of_the_checkpoint_and_named_results(runs):
    tmp, res = runs
    ckpt = tmp / 'run' / 'last.pth.tar'
    results = {}
    for name, file, use_ema in (('ckpt', 'validate-last-small-val.json', False),
                                ('ema', 'validate-last-ema-small-val.json', True),
                                ('export', 'validate-export-small-val.json', False)):
        assert res[name].rc == 0, res[name].err
        results[name] = json.loads((tmp / 'run' / file).read_text())
        assert results[name]['use_ema'] is use_ema and results[name]['count'] == 30
        assert results[name]['checkpoint'] == str(tmp / 'run' / 'export' if name == 'export' else ckpt)
    for name, use_ema in (('ckpt', False), ('ema', True)):
        ref = _reference(ckpt, use_ema, tmp / 'small')
        torch.testing.assert_close(results[name]['loss'], ref['loss'], rtol=1e-5, atol=0)
        assert round(results[name]['top1'] * 0.3) == round(ref['top1'] * 0.3)
    assert results['ema']['loss'] != results['ckpt']['loss']  # the EMA weights were evaluated, not the others
    torch.testing.assert_close(results['export']['loss'], results['ckpt']['loss'], rtol=1e-5, atol=0)
    assert (results['ckpt']['img_size'], results['ckpt']['crop_pct']) == (32, 1.0)


def test_checkpoint_from_ones_own_loop(runs):
    """Issue 23 bug 4: {'state_dict', 'arch'} alone: the class count is the classifier's, the eval preprocessing the
    model's default (no data_config saved)."""
    tmp, res = runs
    assert res['own'].rc == 0, res['own'].err
    result = json.loads((tmp / 'run' / 'validate-own-small-val.json').read_text())
    assert result['count'] == 30 and result['model'] == 'resnet18d_tiny_bot' and result['img_size'] == 32


def test_run_folder_and_results_named_after_data_and_sizes(runs):
    """Issue 23: a run folder means its model_best.pth.tar (logged); the results file names the data source and the
    overridden sizes, so runs do not overwrite each other; --model results go to output/validate/, not the cwd."""
    tmp, res = runs
    assert res['run_dir'].rc == 0 and res['model_default'].rc == 0, res['run_dir'].err + res['model_default'].err
    assert f"{tmp / 'run'} is a run folder: using its model_best.pth.tar" in res['run_dir'].err
    result = json.loads((tmp / 'run' / 'validate-model_best-val-val-36px-crop0.9.json').read_text())
    assert (result['img_size'], result['crop_pct'], result['count']) == (36, 0.9, 30)
    assert result['checkpoint'] == str(tmp / 'run' / 'model_best.pth.tar')
    assert json.loads((tmp / 'output' / 'validate' / 'validate-resnet18d_tiny_bot-small-val.json').read_text())[
        'model'] == 'resnet18d_tiny_bot'
    assert not list(tmp.glob('validate-*.json')) and not list(REPO.glob('validate-*.json'))


def test_device_and_progress_lines_without_tty(runs):
    run = runs[1]['ckpt']
    lines = run.err.splitlines()
    assert 'on cpu' in lines[0], lines[0]
    progress = [line for line in lines if line.startswith('eval batch')]
    assert [p.split()[2] for p in progress] == ['1/4', '2/4', '3/4', '4/4'] and 'img/s' in progress[-1]
    assert 'top-1' in run.out


def test_random_weights_warned(runs):
    tmp, res = runs
    assert res['random'].rc == 0, res['random'].err
    assert 'RANDOM weights' in res['random'].err and (tmp / 'random.json').exists()
    assert 'RANDOM' not in res['ckpt'].err


@pytest.mark.parametrize('case, words', [
    ('unknown_model', ["'resnet18dd'", 'did you mean', 'resnet18d']),
    ('batch0', ['--batch-size 0']),
    ('results_dir', ['missing', 'does not exist']),
    ('yaml', ['hparams.yaml', 'not a checkpoint']),
    ('cuda', ["'cuda'", '0 CUDA device']),
    ('gpu', ["'gpu'", 'cuda:N']),
    ('headless', ['headless.pth', "no 'num_classes'", 'fc.weight']),
])
def test_bad_input_one_line_before_any_work(runs, case, words):
    run = runs[1][case]
    assert run.rc == 2, run.err
    assert run.err.strip().splitlines() == run.error_lines and len(run.error_lines) == 1, run.err
    assert all(w in run.error_lines[0] for w in words), run.error_lines[0]
    assert 'arbitrary code' not in run.err and not (runs[0] / f'{case}.json').exists()


def test_labels_compared(runs):
    tmp, res = runs
    for case, words in (('five', ["missing ['5', '6', '7', '8', '9']"]),
                        ('letters', ["missing ['0', '1'", "extra ['a', 'b'"])):
        run = res[case]
        assert run.rc == 2 and len(run.error_lines) == 1 and 'Traceback' not in run.err, run.err
        assert all(w in run.error_lines[0] for w in words), run.error_lines[0]
        assert not (tmp / f'{case}.json').exists()
