"""The README's promises: its example runs and says what it prints, and CI runs its test command."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.helpers import REPO

README = open(os.path.join(REPO, "README.md")).read()


def test_ci_runs_the_readme_test_command_in_a_fresh_environment():
    commands = re.findall(r"^(?!#)(\S.*)$", re.search(r"```bash\n(.*?)```", README, re.S).group(1), re.M)
    assert len(commands) == 2 and "main.py --config=configs/toy.py" in commands[0]
    test_command = commands[1]
    assert "-n 2" in test_command and "--durations=15" in test_command  # both cores; the slowest tests shown
    ci_lines = open(os.path.join(REPO, ".ci", "run")).read().splitlines()
    assert test_command in ci_lines
    # Before it, on every run: errors stop the script, the environment is removed and created afresh, and its
    # python3 comes first on PATH (so the README's command runs in it, and pytest's status is CI's).
    setup = ci_lines[: ci_lines.index(test_command)]
    assert "set -euo pipefail" in setup and "VENV=.ci-venv" in setup
    assert setup.index('rm -rf "$VENV"') < setup.index('python3 -m venv "$VENV"')
    assert 'export PATH="$PWD/$VENV/bin:$PATH"  # python3 below is the fresh environment\'s' in setup
    assert ".ci-venv/" in open(os.path.join(REPO, ".gitignore")).read().splitlines()


def test_readme_example_recovers_the_mixture_weights():
    example = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    result = subprocess.run(
        [sys.executable, "-c", example],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    weight = float(re.search(r"weight of the \+5 mode: ([0-9.]+)", result.stdout).group(1))
    assert abs(weight - 0.8) <= 0.04
