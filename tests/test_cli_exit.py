"""How `sweep` ends: a command that returns ends at once (no interpreter teardown once torch,
Ray or MLflow is loaded) with its code; one that raises exits as Python decides."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow  # each case a fresh interpreter that imports MLflow


def _exit_code(command_body: str) -> int:
    """The exit code of the program ``sweep`` whose command does ``command_body`` (MLflow loaded)."""
    code = (
        "import sys\nimport mlflow\nfrom sweep import cli\n"
        f"def command(argv):\n    {command_body}\n"
        "cli._main = command\nsys.argv = ['sweep']\nsys.exit(cli.main())\n"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, timeout=120).returncode


def test_a_command_that_returns_exits_with_its_code():
    assert _exit_code("return 2") == 2
    assert _exit_code("return 0") == 0


def test_a_command_that_raises_exits_as_python_decides():
    assert _exit_code("sys.exit(3)") == 3
    assert _exit_code("raise KeyboardInterrupt") == -signal.SIGINT  # a shell shows 130
    assert _exit_code("raise RuntimeError('boom')") == 1
