"""The package as users install and import it: one version number, the public API, and the own-loop example."""
import importlib.metadata
import json
from pathlib import Path

import pytest

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
