"""The progress view: one line per finished trial in a log, a live per-optimizer table on a terminal.
Counts and "best" come from the same Tally as the final table: a pruned trial's value is not a best."""

from __future__ import annotations

import io

from rich.console import Console

from sweep.core.outcome import Status, Tally, TrialOutcome
from sweep.execution.progress import Progress


def _play(progress: Progress) -> None:
    with progress:
        progress.started("sgd")
        progress.started("adam")
        progress.finished("sgd", TrialOutcome(0, Status.OK, 0.91, metrics={"val_accuracy": 0.91}))
        progress.started("sgd")
        progress.finished("sgd", TrialOutcome(1, Status.PRUNED, None, "pruned", {"val_accuracy": 0.95}))
        progress.finished("adam", TrialOutcome(0, Status.FAILED, None, "RuntimeError: boom"))


def test_log_lines_count_states_and_best(capsys):
    rows = {"sgd": Tally(budget=3), "adam": Tally(budget=3)}
    _play(Progress(rows, live=False))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert "trial   0 ok" in lines[0] and "val_acc=0.9100" in lines[0] and "(1/3 done, best 0.9100)" in lines[0]
    assert "pruned" in lines[1] and "(2/3 done, best 0.9100)" in lines[1]  # 0.95 was pruned: not a best
    assert "[     adam] trial   0 failed" in lines[2] and "RuntimeError: boom" in lines[2] and "best -" in lines[2]
    sgd, adam = rows["sgd"], rows["adam"]
    assert (sgd.counts[Status.OK], sgd.counts[Status.PRUNED], sgd.running, adam.counts[Status.FAILED]) == (1, 1, 0, 1)


def test_live_table_on_a_terminal():
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=140, color_system=None)
    rows = {"sgd": Tally(budget=3), "adam": Tally(budget=3)}
    _play(Progress(rows, live=True, console=console))
    final = screen.getvalue().split("sweep progress")[-1]  # the last redraw
    sgd = next(line for line in final.splitlines() if "sgd" in line).split()
    adam = next(line for line in final.splitlines() if "adam" in line).split()
    # optimizer, done, running, ok, diverged, pruned, failed, interrupted, best
    assert [cell for cell in sgd if cell not in "│┃|"] == ["sgd", "2/3", "0", "1", "0", "1", "0", "0", "0.9100"]
    assert [cell for cell in adam if cell not in "│┃|"] == ["adam", "1/3", "0", "0", "0", "0", "1", "0", "-"]


def test_interrupted_trials_do_not_use_the_budget():
    tally = Tally.of(
        4, [TrialOutcome(0, Status.INTERRUPTED), TrialOutcome(1, Status.DIVERGED, 0.3), TrialOutcome(2, Status.OK, 0.2)]
    )
    assert tally.done == 2 and tally.best == 0.2 and tally.best_number == 2  # diverged is no result


def test_a_long_log_line_goes_on_over_indented_lines_within_100_columns(capsys):
    """A diverged or failed trial's reason can be long (an exception's message): the line goes on
    below, indented, rather than past 100 columns, and loses nothing."""
    reason = "ValueError: " + " ".join(f"word{i}" for i in range(40)) + " " + "x" * 130
    progress = Progress({"adam": Tally(budget=2)}, live=False)
    with progress:
        progress.started("adam")
        progress.finished("adam", TrialOutcome(1, Status.FAILED, None, reason))
        progress.note("adam", f"re-evaluation of trial 1 seed 1: failed ({reason})")
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) > 2 and max(map(len, lines)) <= 100, lines
    assert lines[0].startswith("[     adam] trial   1 failed") and all(
        line.startswith(" " * 12) for line in lines[1:] if not line.startswith("[")
    )
    assert "".join(out.split()).count("".join(reason.split())) == 2  # every character still there
    assert "(1/2 done, best -)" in out
