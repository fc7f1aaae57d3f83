"""The package as users install and import it: one version number, the public API, and the own-loop example."""
import ast
import importlib.metadata
import json
import math
import re
from pathlib import Path

import pytest
from conftest import run_script, script_env

import timm_bot

REPO = Path(__file__).resolve().parents[1]


def test_one_version_number():
    """Issue 23 bug 5: the metadata's version is read from ``timm_bot.__version__`` (also saved in checkpoints)."""
    tomllib = pytest.importorskip('tomllib', reason='Python 3.11+ reads pyproject.toml')
    project = tomllib.loads((REPO / 'pyproject.toml').read_text())
    assert 'version' not in project['project'] and 'version' in project['project']['dynamic']
    assert project['tool']['setuptools']['dynamic']['version'] == {'attr': 'timm_bot.__version__'}
    dist = importlib.metadata.distribution('timm-bot')
    if json.loads(dist.read_text('direct_url.json') or '{}').get('url') == REPO.as_uri():  # CI: pip install -e .
        assert dist.version == timm_bot.__version__, 'the installed metadata is stale: pip install -e . again'


def test_readme_lists_the_public_api():
    """The README's "Public API" section names exactly ``timm_bot.__all__``, each importable."""
    section = (REPO / 'README.md').read_text().split('## Public API', 1)[1].split('\n## ', 1)[0]
    listed = set(re.findall(r'^- `(\w+)[(`]', section, flags=re.M))
    assert listed == set(timm_bot.__all__) and all(hasattr(timm_bot, name) for name in timm_bot.__all__)
    assert {'paper_init_', 'create_image_dataset', 'DistillationLoss', 'create_paper_scheduler'} <= listed


EXAMPLE = REPO / 'examples' / 'own_training_loop.py'


def test_example_uses_the_public_api_only():
    tree = ast.parse(EXAMPLE.read_text())
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and getattr(n.value, 'id', '') == 'timm_bot'}
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert used and used <= set(timm_bot.__all__), used - set(timm_bot.__all__)
    assert not [n for n in imports if 'timm_bot.' in ast.unparse(n) or 'from timm_bot' in ast.unparse(n)]


def test_example_own_training_loop_runs():
    """Issue 23: the example loop trains a few batches (mixup, smoothing, a teacher, gradient accumulation) and
    evaluates, so it cannot rot; its lr follows the paper's warmup per update: after 1 update of 11, 2 eta / 11."""
    res = run_script(EXAMPLE, '--max-batches', '3', '--grad-accum-steps', '2', '--teacher', 'resnet18d_tiny_bot',
                     env=script_env(PYTHONPATH=str(REPO)))
    assert 'lr 0.2 = 0.4 x 128/256 (linear scaling, section 3.1); 11 updates per epoch' in res.out, res.describe()
    epoch = re.search(r'^epoch 1: loss (\S+), lr (\S+)$', res.out, flags=re.M)
    assert epoch and math.isfinite(float(epoch[1])) and float(epoch[2]) == pytest.approx(2 * 0.2 / 11, rel=1e-3)
    assert re.search(r'^val top-1 \d+\.\d\d% \(359 images\)$', res.out, flags=re.M), res.describe()
    assert 'random teacher' in res.err and 'residual branches end at gamma 0' in res.out
