"""What every bench in the suite shares: sizes, the machine's description, the JSON it writes, the table it prints.

Each bench is a script (``bench/<name>.py``) that runs on its own or under ``python -m bench``.
It takes ``--size ci|full`` and ``--json PATH``, measures, and calls ``finish`` with a typed
``BenchResult``: its rows (one dict per measured cell), and one ``Headline`` per target the
issue sets (value, target, whether it was met), so the suite's summary can say at a glance what
was met. The JSON records when and where it was measured (date, host, CPU, GPU, library
versions, load average) because these machines are shared and noisy: figures without that are
not comparable.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import os
import platform
import statistics
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from anywhere: import `sweep`, `models`, `optim`
    sys.path.insert(0, str(ROOT))

RESULTS_DIR = ROOT / "bench" / "results"


class Size(str, Enum):
    """``ci``: minutes on 2 CPU cores (the suite's default); ``full``: the figures for the README,
    sized for a GPU machine or a long CPU run."""

    CI = "ci"
    FULL = "full"


@dataclass(frozen=True)
class Headline:
    """One target of the speed issue, as measured: ``met`` is None where no target applies
    (a figure reported for its own sake) or where it could not be measured here."""

    name: str
    value: float | None
    unit: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""


@dataclass
class BenchResult:
    bench: str
    size: Size
    rows: list[dict[str, Any]] = field(default_factory=list)
    headlines: list[Headline] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)


def machine() -> dict[str, Any]:
    """Where and when this ran: the date, the host, its CPU and GPU, the library versions."""
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "memory_gib": _memory_gib(),
    }
    versions = {}
    for name in ("torch", "torchvision", "ray", "optuna", "mlflow", "numpy", "sqlalchemy"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:  # not installed: say so rather than fail the bench
            versions[name] = None
    info["versions"] = versions
    info["gpu"] = _gpu()
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _gpu() -> str | None:
    """The GPU's name, asked of nvidia-smi (no torch import: start-up benches time a clean process)."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0] if out else None


def parser(description: str) -> argparse.ArgumentParser:
    """The arguments every bench takes; a bench adds its own."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument(
        "--size",
        type=Size,
        choices=list(Size),
        default=Size.CI,
        help="ci: a couple of minutes on 2 CPU cores; full: the README's figures",
    )
    ap.add_argument(
        "--json", type=Path, default=None, help="where to write the result (default bench/results/<bench>.json)"
    )
    return ap


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def report_until_pruned(trial, curve: Sequence[float]) -> tuple[int, bool]:
    """Report a per-epoch curve to an Optuna trial as a worker does (epochs from 1), stopping where
    its pruner prunes; returns (epochs reported, pruned)."""
    ran = 0
    for ran, value in enumerate(curve, 1):
        trial.report(value, ran)
        if trial.should_prune():
            return ran, True
    return ran, False


def finish(result: BenchResult, json_path: Path | None = None) -> Path:
    """Write the result with the machine's description and print its table and headlines."""
    path = json_path or RESULTS_DIR / f"{result.bench}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "bench": result.bench,
        "size": result.size.value,
        "machine": machine(),
        "params": result.params,
        "headlines": [dataclasses.asdict(h) for h in result.headlines],
        "rows": result.rows,
        "notes": result.notes,
    }
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"\n## {result.bench} ({result.size.value})")
    print(table(result.rows))
    for h in result.headlines:
        print(headline_line(h))
    for note in result.notes:
        print(f"note: {note}")
    print(f"wrote {path}")
    return path


def headline_line(h: Headline | dict[str, Any]) -> str:
    h = h if isinstance(h, dict) else dataclasses.asdict(h)
    value = "n/a" if h["value"] is None else f"{h['value']:.3g}"
    verdict = {True: "met", False: "NOT met", None: "-"}[h["met"]]
    target = f" (target {h['target']})" if h["target"] else ""
    note = f" - {h['note']}" if h["note"] else ""
    return f"{h['name']}: {value}{(' ' + h['unit']) if h['unit'] else ''}{target}: {verdict}{note}"


def table(
    rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, fmt: Callable[[Any], str] | None = None
) -> str:
    """A Markdown table of the rows (the README pastes it as is)."""
    if not rows:
        return "(no rows)"
    columns = list(columns or dict.fromkeys(k for row in rows for k in row))
    fmt = fmt or _cell
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
