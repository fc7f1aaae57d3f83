"""The README's Quickstart is the contract: two commands, and .ci/run runs the second one verbatim."""
import re
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _quickstart_commands() -> list[str]:
    section = ROOT.joinpath('README.md').read_text().split('## Quickstart', 1)[1].split('\n## ', 1)[0]
    return re.findall(r'```bash\n(.*?)\n```', section, flags=re.S)


def test_quickstart_has_exactly_two_commands():
    commands = _quickstart_commands()
    assert len(commands) == 2 and all('\n' not in c for c in commands)
    assert 'train.py --hparams hparams/quickstart.yaml' in commands[0]
    assert 'pytest' in commands[1] and 'ruff check' in commands[1]
    assert all(c.startswith('python3 -m venv --clear .venv') for c in commands)  # fresh venv each time


def test_ci_runs_the_readme_test_command():
    ci = ROOT.joinpath('.ci', 'run').read_text()
    assert _quickstart_commands()[1] in ci.splitlines()
