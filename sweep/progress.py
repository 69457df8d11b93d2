"""Live terminal view of a sweep: per optimizer, trials done / pruned / failed and best so far.

On a terminal it is a rich Live table redrawn in place; elsewhere (CI, logs) one line per finished
trial, so output stays readable in a file.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass
class OptimizerProgress:
    budget: int
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    best: float | None = None

    @property
    def done(self) -> int:
        return self.complete + self.pruned + self.failed


class Progress:
    def __init__(self, rows: dict[str, OptimizerProgress], live: bool | None = None, console=None):
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

    def finished(self, optimizer: str, number: int, state: str, value: float | None, note: str = "") -> None:
        row = self.rows[optimizer]
        row.running -= 1
        if state == "COMPLETE":
            row.complete += 1
        elif state == "PRUNED":
            row.pruned += 1
        else:
            row.failed += 1
        if state in ("COMPLETE", "PRUNED") and value is not None:
            row.best = value if row.best is None else max(row.best, value)
        if self._live is None:
            shown = "" if value is None else f" val_acc={value:.4f}"
            print(f"[{optimizer:>9}] trial {number:3d} {state:<8}{shown}{' ' + note if note else ''}  "
                  f"({row.done}/{row.budget} done, best {self._best(row)})", flush=True)
        self._refresh()

    @staticmethod
    def _best(row: OptimizerProgress) -> str:
        return "-" if row.best is None else f"{row.best:.4f}"

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._table())

    def _table(self):
        from rich.table import Table

        table = Table(title="sweep progress")
        for column in ("optimizer", "done", "running", "complete", "pruned", "failed", "best val acc"):
            table.add_column(column, justify="right")
        for name, row in self.rows.items():
            table.add_row(name, f"{row.done}/{row.budget}", str(row.running), str(row.complete),
                          str(row.pruned), str(row.failed), self._best(row))
        return table
