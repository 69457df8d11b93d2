"""How `sweep` ends: a command that returns ends at once (no interpreter teardown once torch,
Ray or MLflow is loaded) with its code; one that raises exits as Python decides."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
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


def test_the_autoscaler_monitor_of_this_process_s_ray_is_killed_first_and_nothing_else():
    """``_stop_ray`` kills Ray's autoscaler monitor before ``ray.shutdown`` (which would wait a
    second for it): a child of this process with its script in the command line; another child,
    and the monitor's script in a process that is not this one's child, are left alone."""
    import os

    from sweep import cli

    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    nested = f"import subprocess; subprocess.run({[*sleep, cli.AUTOSCALER_MONITOR]!r})"
    monitor = subprocess.Popen([*sleep, cli.AUTOSCALER_MONITOR])
    other = subprocess.Popen(sleep)
    parent = subprocess.Popen([sys.executable, "-c", nested], start_new_session=True)  # a monitor that is a grandchild
    try:
        time.sleep(1)  # the grandchild started
        cli._end_autoscaler_monitor()
        assert monitor.wait(timeout=10) == -signal.SIGKILL
        time.sleep(0.5)
        assert other.poll() is None and parent.poll() is None  # the parent's own code names the script
    finally:
        os.killpg(parent.pid, signal.SIGKILL)
        for process in (monitor, other, parent):
            process.kill()
            process.wait()
