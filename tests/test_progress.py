"""The progress view: one line per finished trial in a log, a live per-optimizer table on a terminal."""
from __future__ import annotations

import io

from rich.console import Console

from sweep.progress import OptimizerProgress, Progress


def _play(progress: Progress) -> None:
    with progress:
        progress.started("sgd")
        progress.started("adam")
        progress.finished("sgd", 0, "COMPLETE", 0.91)
        progress.started("sgd")
        progress.finished("sgd", 1, "PRUNED", 0.42)
        progress.finished("adam", 0, "FAIL", None, "failed")


def test_log_lines_count_states_and_best(capsys):
    rows = {"sgd": OptimizerProgress(budget=3), "adam": OptimizerProgress(budget=3)}
    _play(Progress(rows, live=False))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert "trial   0 COMPLETE val_acc=0.9100" in lines[0] and "(1/3 done, best 0.9100)" in lines[0]
    assert "PRUNED" in lines[1] and "(2/3 done, best 0.9100)" in lines[1]
    assert "[     adam] trial   0 FAIL" in lines[2] and "failed" in lines[2] and "best -" in lines[2]
    assert (rows["sgd"].complete, rows["sgd"].pruned, rows["sgd"].running, rows["adam"].failed) == (1, 1, 0, 1)


def test_live_table_on_a_terminal():
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100, color_system=None)
    rows = {"sgd": OptimizerProgress(budget=3), "adam": OptimizerProgress(budget=3)}
    _play(Progress(rows, live=True, console=console))
    final = screen.getvalue().split("sweep progress")[-1]  # the last redraw
    sgd = next(line for line in final.splitlines() if "sgd" in line).split()
    adam = next(line for line in final.splitlines() if "adam" in line).split()
    assert [cell for cell in sgd if cell not in "│┃|"] == ["sgd", "2/3", "0", "1", "1", "0", "0.9100"]
    assert [cell for cell in adam if cell not in "│┃|"] == ["adam", "1/3", "0", "0", "0", "1", "-"]
