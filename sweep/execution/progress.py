"""Live terminal view of a sweep: per optimizer, trials done / running / each outcome, best so far.

On a terminal it is a rich Live table redrawn in place; elsewhere (CI, logs) one line per finished
trial, so output stays readable in a file. Counts and "best" come from ``outcome.Tally``, the
same tally as the final table.
"""

from __future__ import annotations

import sys
import textwrap

from sweep.core.outcome import Status, Tally, TrialOutcome

WIDTH = 100  # a log line longer than this goes on over indented lines (a long reason), never wraps raw
INDENT = " " * 12  # under the text, past "[optimizer] "


def fitted(line: str, width: int = WIDTH) -> str:
    """``line`` as it is when it fits ``width``, else broken at spaces (inside long words if need
    be) into lines of at most ``width``, the ones after the first indented."""
    if len(line) <= width:
        return line
    return textwrap.fill(line, width, subsequent_indent=INDENT, break_on_hyphens=False)


class Progress:
    def __init__(self, rows: dict[str, Tally], live: bool | None = None, console=None):
        self.rows = rows
        self.live = sys.stdout.isatty() if live is None else live
        self.console = console  # a rich Console; None: the terminal
        self._live = None

    def __enter__(self):
        if self.live:
            from rich.live import Live

            self._live = Live(self._table(), refresh_per_second=4, transient=False, console=self.console)
            self._live.__enter__()
        return self

    def __exit__(self, *exc):
        if self._live is not None:
            self._live.update(self._table())
            self._live.__exit__(*exc)

    def started(self, optimizer: str) -> None:
        self.rows[optimizer].running += 1
        self._refresh()

    def finished(self, optimizer: str, outcome: TrialOutcome) -> None:
        row = self.rows[optimizer]
        row.running -= 1
        row.add(outcome)
        if self._live is None:
            shown = f" val_acc={outcome.metrics['val_accuracy']:.4f}" if "val_accuracy" in outcome.metrics else ""
            note = (
                f" ({outcome.reason})" if outcome.status in (Status.DIVERGED, Status.FAILED) and outcome.reason else ""
            )
            print(
                fitted(
                    f"[{optimizer:>9}] trial {outcome.number:3d} {outcome.status.value:<11}{shown}{note}  "
                    f"({row.done}/{row.budget} done, best {self._best(row)})"
                ),
                flush=True,
            )
        self._refresh()

    def note(self, optimizer: str, text: str) -> None:
        """A line about the optimizer outside the table (a re-evaluation finished)."""
        line = f"[{optimizer:>9}] {text}"
        if self._live is not None:
            self._live.console.print(line)  # rich folds it to the terminal's width
        else:
            print(fitted(line), flush=True)

    @staticmethod
    def _best(row: Tally) -> str:
        return "-" if row.best is None else f"{row.best:.4f}"

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._table())

    def _table(self):
        from rich.table import Table

        table = Table(title="sweep progress")
        columns = ["optimizer", "done", "running", *(s.value for s in Status), "best val acc"]
        for column in columns:
            table.add_column(column, justify="right")
        for name, row in self.rows.items():
            table.add_row(
                name,
                f"{row.done}/{row.budget}",
                str(row.running),
                *(str(row.counts[s]) for s in Status),
                self._best(row),
            )
        return table
