"""Smoke runs of the benchmark scripts (benchmarks/*.py) with tiny sizes: they run and report the expected fields.

The pipeline and ablation benchmarks need the CIFAR-10 tars in ../shared/data and are skipped without them.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / 'benchmarks'


@pytest.fixture(scope='module')
def bench():
    """Import the benchmark scripts (they import their helpers from their own folder)."""
    sys.path.insert(0, str(BENCH))
    import importlib
    names = ('models', 'pipeline', 'ablation', 'augment', '_common', 'gpu_check')
    mods = {n: importlib.import_module(n) for n in names}
    yield mods
    sys.path.remove(str(BENCH))


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _machine_ok(m: dict) -> None:
    assert m['cores'] >= 1 and m['torch'] and m['timm'] and m['cpu'] and m['date']


def test_models_smoke(bench, tmp_path):
    out = tmp_path / 'models.json'
    assert bench['models'].main(['--smoke', '--threads', '0', '--out', str(out)]) == 0
    res = json.loads(out.read_text())
    _machine_ok(res['machine'])
    rows = {r['model']: r for r in res['results']}
    assert set(rows) == {'resnet50_bot', 'resnet50d_bot', 'resnet50d'}
    for r in rows.values():
        for key in ('params_m', 'gmacs', 'train_img_s', 'infer_img_s', 'train_rel', 'infer_rel'):
            assert _positive(r[key]), (r['model'], key, r[key])
    assert rows['resnet50_bot']['train_rel'] == 1.0
    assert 25 < rows['resnet50d_bot']['params_m'] < 26
    assert rows['resnet50d_bot']['gmacs'] > rows['resnet50_bot']['gmacs']  # deep stem costs MACs
    pair = res['resnet50d_vs_timm']
    assert pair['same_params'] and pair['same_macs'] and _positive(pair['train_ratio'])


def test_augment_smoke(bench, tmp_path):
    """224 px data cost on 4 of scikit-learn's photographs (re-encoded 500x375 JPEGs): every stage measured."""
    pytest.importorskip('sklearn.datasets', reason='the photographs come with scikit-learn (the test extra)')
    out = tmp_path / 'augment.json'
    assert bench['augment'].main(['--smoke', '--threads', '0', '--out', str(out)]) == 0
    res = json.loads(out.read_text())
    _machine_ok(res['machine'])
    assert res['n_images'] == 4 and res['image_sizes'] == [[500, 375]]
    costs = res['cpu_ms_per_image']
    assert set(costs) == {'decode', 'timm_default', 'paper_per_image', 'paper_loader', 'collate_float32',
                          'collate_uint8', 'device_side'} and all(_positive(v) for v in costs.values())
    assert _positive(res['loader_vs_timm']) and all(_positive(v) for v in res['end_to_end_cpu_ms_per_image'].values())
    assert '| paper_loader |' in res['table']


@pytest.mark.slow
def test_pipeline_smoke(bench, shared_data, tmp_path):
    out = tmp_path / 'pipeline.json'
    argv = ['--smoke', '--threads', '0', '--data-dir', str(shared_data / 'cifar10-mini'),
            '--work-dir', str(tmp_path / 'work'), '--out', str(out)]
    threads_before = torch.get_num_threads()
    assert bench['pipeline'].main(argv) == 0
    assert torch.get_num_threads() == threads_before  # train.py's thread choice is undone after each run
    res = json.loads(out.read_text())
    _machine_ok(res['machine'])
    configs = {r['config']: r for r in res['results']}
    threads = configs['real_w0']['threads']  # the bare loops run on the threads train.py chose
    assert {f'bare_t{threads}', 'real_w0', f'bare+teacher_t{threads}', 'real_distill_w0'} <= set(configs)
    for r in configs.values():
        assert _positive(r['img_s']) and _positive(r['ratio']) and _positive(r['cpu_ms_per_img'])
        assert r['threads'] == threads and _positive(r['ratio_vs_fastest_bare'])
    assert _positive(configs['real_w0']['cpu_ratio']) and configs['real_w0']['reference'] == f'bare_t{threads}'
    assert configs['real_distill_w0']['reference'] == f'bare+teacher_t{threads}'
    assert _positive(res['best_ratio']) and _positive(res['teacher_cost'] + 1)
    assert all(_positive(v) for v in res['data_cost_ms_per_image'].values())


def test_pipeline_parses_train_log(bench):
    line = 'epoch 2/2: train loss 2.0189, val loss 2.1, top-1 19.22%, top-5 64.35%, lr 0.1, 458 img/s'
    assert bench['pipeline'].EPOCH_RE.findall(line) == [('2', '2', '458')]


def test_ablation_statistics(bench):
    """mean ± std, SE of the difference of means (Welch) and the 2 SE verdict, on hand-made numbers."""
    abl = bench['ablation']
    s = abl.summarize([1.0, 2.0, 3.0])
    assert s['n'] == 3 and s['mean'] == pytest.approx(2.0) and s['std'] == pytest.approx(1.0)
    assert abl.summarize([5.0])['std'] is None and abl.summarize([])['mean'] is None
    c = abl.compare([4.0, 5.0, 6.0], [1.0, 2.0, 3.0])  # delta 3, SE sqrt(1/3 + 1/3) = 0.816
    assert c['delta'] == pytest.approx(3.0) and c['se'] == pytest.approx(math.sqrt(2 / 3)) and c['outside'] is True
    c = abl.compare([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])  # delta 1 < 2 SE = 1.63
    assert c['outside'] is False and abl.verdict(c) == 'inside noise'
    assert c['seeds_needed'] == 8  # 2 sqrt(2 / n) < 1  <=>  n > 8
    c = abl.compare([10.0, 10.5, 9.5, 10.0], [8.0, 8.5])  # Welch, unequal n: SE = sqrt(0.1667/4 + 0.125/2)
    assert c['se'] == pytest.approx(math.sqrt(1 / 6 / 4 + 0.125 / 2)) and c['outside'] is True
    assert abl.verdict(c) == '**outside noise**'
    c = abl.compare([40.0], [30.0, 31.0])  # one seed: a delta but no verdict
    assert c['delta'] == pytest.approx(9.5) and c['se'] is None and abl.verdict(c) == 'n/a (< 2 seeds)'
    assert abl.compare([], [1.0, 2.0])['delta'] is None


def test_ablation_recipes_are_cumulative(bench):
    """Each ladder row = the previous row + its own change (resolved exactly as train.py resolves them)."""
    abl = bench['ablation']

    def hp(run):
        args = ['--hparams', *run.files, '--data_dir', 'digits', '--seed', str(run.seed)]
        return abl.resolve(args + (['--model', run.model] if run.model else []) + (['--teacher', 'T'] if run.distill
                                                                                    else []))

    rows = {r.name: hp(abl.ladder_run(r.name, 42)) for r in abl.LADDER + abl.OPTIONAL + (abl.TEACHER,)}
    base = rows['baseline']
    assert base['model'] == 'resnet26_tiny_bot' and base['sched'] == 'step' and base['decay_milestones'] == [2, 4, 6]
    assert base['batch_size'] == 32 and base['lr'] is None and base['img_size'] == 32 and base['epochs'] == 8
    assert not base['zero_init_last'] and not base['no_bias_decay'] and base['warmup_epochs'] == 0
    assert base['smoothing'] == 0 and base['mixup'] == 0 and base['teacher'] is None

    def diff(a, b):
        return {k for k in rows[a] if rows[a][k] != rows[b][k]}

    expected = {'efficient': {'batch_size', 'warmup_epochs', 'zero_init_last', 'no_bias_decay'},
                'resnet_b': {'model'}, 'resnet_c': {'model'}, 'resnet_d': {'model'}, 'cosine': {'sched'},
                'label_smoothing': {'smoothing'}, 'mixup': {'mixup'}, 'distill': {'teacher'}}
    for row in abl.LADDER[1:]:
        assert diff(row.name, row.prev) == expected[row.name], row.name
    assert diff('mixup_long', 'mixup') == {'epochs'} and rows['mixup_long']['epochs'] == 16
    assert diff('distill_no_mixup', 'label_smoothing') == {'teacher'}
    assert diff('teacher', 'label_smoothing') == {'epochs'} and rows['teacher']['model'] == 'resnet26d_tiny_bot'
    assert [rows[r]['model'] for r in ('resnet_b', 'resnet_c', 'resnet_d')] == [
        'resnet26b_tiny_bot', 'resnet26c_tiny_bot', 'resnet26d_tiny_bot']
    # Table 7: the baseline recipe is the ladder's baseline on another model; refined (+ distill) on resnet26d is
    # the ladder's mixup (distill) row, so the runner runs it once.
    t7 = {r.name: hp(abl.table7_run(r.name, 'resnet26d_tiny_bot', 42)) for r in abl.T7}
    assert {k for k in base if base[k] != t7['baseline'][k]} == {'model'}
    assert t7['refined'] == rows['mixup'] and t7['refined_distill'] == rows['distill']


def test_ablation_plan(bench):
    abl = bench['ablation']
    args = abl.parse_args(['--preset', 'smoke', '--ladder', 'baseline,distill', '--archs', 'convnext_atto'])
    runs = abl.plan(args, [42, 43])
    keys = [r.key for r in runs]
    assert keys[:3] == ['ladder/baseline/resnet26_tiny_bot/42', 'ladder/teacher/resnet26d_tiny_bot/42',
                        'ladder/distill/resnet26d_tiny_bot/42']  # the teacher right before its first student
    assert keys.count('ladder/teacher/resnet26d_tiny_bot/42') == 1 and len(keys) == 2 * (2 + 3) + 1
    assert keys[-1] == 'table7/refined_distill/convnext_atto/43'  # seed-major: every cell of seed 42 first
    with pytest.raises(SystemExit, match='unknown'):
        abl.plan(abl.parse_args(['--ladder', 'cosine,nope']), [42])


@pytest.mark.slow
def test_ablation_smoke(bench, shared_data, tmp_path, capsys):
    """One ladder row and one Table 7 cell, 1 seed, on a tiny subset; then resume and report."""
    abl = bench['ablation']
    argv = ['--preset', 'smoke', '--ladder', 'baseline', '--table7', 'baseline', '--archs', 'mobilenetv3_small_050',
            '--seeds', '42', '--train-per-class', '5', '--val-per-class', '2', '--output', str(tmp_path / 'abl'),
            '--results-dir', str(tmp_path / 'results')]
    assert abl.main(argv) == 0
    root = tmp_path / 'abl' / 'smoke'
    res = json.loads((root / 'results.json').read_text())
    assert set(res['runs']) == {'ladder/baseline/resnet26_tiny_bot/42', 'table7/baseline/mobilenetv3_small_050/42'}
    for r in res['runs'].values():
        assert r['status'] == 'done' and 0 <= r['top1'] <= 100 and r['epochs'] == 1
        assert r['command'].startswith('python train.py --hparams benchmarks/recipes/ladder_base.yaml')
    assert res['runs']['table7/baseline/mobilenetv3_small_050/42']['hparams']['model'] == 'mobilenetv3_small_050'
    assert res['data']['n_train'] == 50 and res['data']['n_val'] == 20 and res['pending'] == []
    md = (root / 'ablation.md').read_text()
    assert '| baseline |' in md and 'pending' in md and '75.87' in md and '| mobilenetv3_small_050 |' in md
    assert '69.03' in md  # the paper's MobileNet baseline beside ours
    assert (root / 'ablation.png').stat().st_size > 0 and (tmp_path / 'results' / 'ablation_smoke.md').is_file()
    # A second call trains nothing: both runs are done.
    capsys.readouterr()
    assert abl.main(argv) == 0
    assert '0 to train' in capsys.readouterr().out
    # An interrupted run (checkpoint on disk, not in results.json) is continued with train.py --resume.
    del res['runs']['ladder/baseline/resnet26_tiny_bot/42']
    (root / 'results.json').write_text(json.dumps(res))
    assert abl.main(argv) == 0
    out = capsys.readouterr().out
    assert 'train.py --resume' in out and '1 to train' in out
    assert 'nothing to do' in (root / 'logs' / 'ladder-baseline-resnet26_tiny_bot-s42.log').read_text()


def test_gpu_check_smoke(bench, tmp_path):
    """The GPU check on the CPU, tiny: a deterministic fp16 AMP run with channels-last, EMA and a teacher, the same
    run SIGKILLed mid-epoch 2 and resumed equals it bit for bit; validate; an export plain timm loads."""
    pytest.importorskip('sklearn.datasets', reason='the photographs come with scikit-learn (the test extra)')
    out = tmp_path / 'gpu_check.json'
    assert bench['gpu_check'].main(['--device', 'cpu', '--smoke', '--work-dir', str(tmp_path), '--out', str(out)]) == 0
    res = json.loads(out.read_text())
    steps = {'deterministic_reference', 'killed_and_resumed', 'validate', 'export', 'plain_timm_loads_export'}
    assert steps <= set(res) and all(res[s]['ok'] for s in steps)
    assert res['killed_and_resumed']['bitwise_equal'] is True
    assert _positive(res['speed']['train_py_img_s']) and res['speed']['timm_train_py_img_s'] is None
