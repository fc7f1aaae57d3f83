"""End-to-end validate.py on checkpoints written by train.py (issue 4): the numbers training logged for the saved
checkpoint, and clear errors for data that does not fit the model.

The three invocations run through ``Scripts.run_many`` (one subprocess importing torch/timm once, a forked child per
invocation executing validate.py as ``__main__``, see conftest._ZYGOTE).
"""
import json

import pytest
from conftest import Case, read_summary

pytest.importorskip('sklearn', reason='the end-to-end runs use the embedded digits (scikit-learn)')
pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def validations(scripts, shared_results, baseline_run, ddp_run, ddp_data) -> dict:
    """name -> (ScriptResult, results JSON path), computed once per session (also under xdist)."""
    return shared_results('validations', lambda root: _validate_all(scripts, root, baseline_run, ddp_run, ddp_data))


def _validate_all(scripts, root, baseline_run, ddp_run, ddp_data) -> dict:
    from timm_bot.data import write_image_folder

    five = root / 'five'  # only 5 of the 10 digit classes
    split = write_image_folder(five, split='val', limit_per_class=2)
    for cls in '56789':
        for f in (split / cls).iterdir():
            f.unlink()
        (split / cls).rmdir()
    cases = {
        'baseline': (baseline_run / 'last.pth.tar', 'digits'),
        'ddp': (ddp_run[0] / 'last.pth.tar', ddp_data),
        'mismatch': (baseline_run / 'last.pth.tar', five),
    }
    results = scripts.run_many([Case(['--checkpoint', ckpt, '--data-dir', data, '--workers', '0', '--results-file',
                                      root / f'{name}.json'], script='validate.py')
                                for name, (ckpt, data) in cases.items()], root / 'logs')
    return {name: (res, root / f'{name}.json') for name, res in zip(cases, results)}


def _same_metrics(metrics: dict, row: dict) -> dict:
    """Differences between validate.py's JSON and a summary.csv row: same number of top-1/top-5 hits (evaluate()
    accumulates float32 percentages, so the percentages agree to ~1e-6 only) and the same mean loss (rel 1e-5)."""
    count, diff = metrics['count'], {}
    for k in ('top1', 'top5'):
        if round(metrics[k] * count / 100) != round(float(row[f'eval_{k}']) * count / 100):
            diff[k] = (metrics[k], float(row[f'eval_{k}']))
    if metrics['loss'] != pytest.approx(float(row['eval_loss']), rel=1e-5):
        diff['loss'] = (metrics['loss'], float(row['eval_loss']))
    return diff


def test_reproduces_the_summary_of_the_epoch(validations, baseline_run):
    """validate.py on the baseline's last.pth.tar gives the eval_top1/top5/loss train.py logged for that epoch."""
    res, results = validations['baseline']
    assert res.rc == 0, res.describe()
    metrics = json.loads(results.read_text())
    assert metrics['count'] == 359  # the embedded digits' val split
    diff = _same_metrics(metrics, read_summary(baseline_run)[-1])
    assert not diff, f'validate.py vs summary.csv: {diff}'
    assert (metrics['img_size'], metrics['crop_pct']) == (32, 1.0)  # the checkpoint's own eval preprocessing
    assert f'top-1 {metrics["top1"]:.3f}%' in res.out


def test_reproduces_the_summary_of_a_two_process_run(validations, ddp_run):
    """Under torchrun each rank evaluates its shard of the val split (29 images: 15 + 14) with its own model copy;
    the summary must still be the metric of the saved checkpoint on the whole split."""
    res, results = validations['ddp']
    assert res.rc == 0, res.describe()
    metrics = json.loads(results.read_text())
    assert metrics['count'] == 29
    diff = _same_metrics(metrics, read_summary(ddp_run[0])[-1])
    assert not diff, f'validate.py vs summary.csv {diff}: the 2-process evaluation is not that of the saved checkpoint'


def test_class_count_mismatch_exits_2(validations):
    """A 10-class checkpoint on a folder holding only 5 of the digit classes: one clear line, exit 2, no JSON."""
    res, results = validations['mismatch']
    assert res.rc == 2, res.describe()
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), res.err
    assert '10 classes' in lines[0] and 'has 5' in lines[0], lines[0]
    assert not results.exists()
