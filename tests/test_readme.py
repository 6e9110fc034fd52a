"""The README's promises: its example runs and says what it prints, and CI runs its test command."""

from __future__ import annotations

import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(REPO, "README.md")).read()


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"^(?!#)(\S.*)$", re.search(r"```bash\n(.*?)```", README, re.S).group(1), re.M)
    assert len(commands) == 2 and "main.py --config=configs/toy.py" in commands[0]
    ci_script = open(os.path.join(REPO, ".ci", "run")).read()
    assert commands[1] in ci_script.splitlines()


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
