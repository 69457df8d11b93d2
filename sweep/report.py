"""End-of-sweep comparison (JSON, CSV, Markdown, MLflow), ``sweep ls`` and ``sweep ui``.

All figures are read back from the Optuna studies, the source of truth, so a resumed sweep's
report covers every trial it ever ran.
"""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from optuna.trial import TrialState

from sweep.config import ConfigError
from sweep.lock import is_locked
from sweep.studies import INTERRUPTED

COLUMNS = ("optimizer", "best_val_accuracy", "test_accuracy", "complete", "diverged", "pruned", "failed",
           "interrupted", "train_seconds", "best_params")


def summarize(study) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    interrupted = sum(t.user_attrs.get("fail_reason") == INTERRUPTED for t in failed)
    best = max(complete, key=lambda t: t.value, default=None)
    return {
        "best_val_accuracy": best.value if best else None,
        "test_accuracy": best.user_attrs.get("final_test_accuracy") if best else None,
        "best_trial": best.number if best else None,
        "best_params": best.user_attrs.get("hyperparameters", best.params) if best else {},
        "best_optuna_params": best.params if best else {},
        "complete": len(complete),
        "diverged": sum(t.user_attrs.get("status") == "diverged" for t in complete),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "failed": len(failed) - interrupted,
        "interrupted": interrupted,
        "train_seconds": round(sum(t.user_attrs.get("final_train_seconds", 0.0) for t in trials), 2),
    }


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, dict):
        return " ".join(f"{k}={_cell(v) if not isinstance(v, float) else f'{v:.3g}'}" for k, v in value.items())
    return str(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def csv_table(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "best_params": json.dumps(row["best_params"])})
    return out.getvalue()


def write(cfg: dict[str, Any], sweep_dir: Path, studies: dict, tracker, parents: dict[str, str]) -> list[dict]:
    rows = [{"optimizer": opt, **summarize(study)} for opt, study in studies.items()]
    md, table_csv = markdown_table(rows), csv_table(rows)
    summary = {"name": cfg["name"], "dataset": cfg["dataset"], "model": cfg["model"], "epochs": cfg["epochs"],
               "trials_per_optimizer": cfg["trials"], "storage": cfg["storage"],
               "tracking_uri": cfg["tracking_uri"], "optimizers": {r["optimizer"]: r for r in rows}}
    (sweep_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (sweep_dir / "comparison.md").write_text(md + "\n")
    (sweep_dir / "comparison.csv").write_text(table_csv)
    for row in rows:
        metrics = {k: row[k] for k in ("best_val_accuracy", "test_accuracy", "complete", "pruned", "failed",
                                       "diverged", "train_seconds") if row[k] is not None}
        tracker.finish_parent(parents[row["optimizer"]], metrics, f"Sweep {cfg['name']!r}: every optimizer\n\n{md}\n")
    return rows


def write_state(sweep_dir: Path, text: str) -> None:
    (sweep_dir / "state").write_text(text + "\n")


def read_state(sweep_dir: Path) -> str:
    path = sweep_dir / "state"
    return path.read_text().strip() if path.exists() else "unknown"


def sweep_state(sweep_dir: Path) -> str:
    """running / finished / interrupted; "running" with no driver holding the lock means it died."""
    words = read_state(sweep_dir).split()
    state = words[0] if words else "unknown"
    if state == "running" and not is_locked(sweep_dir):
        return "interrupted"
    return state


def list_sweeps(output_dir: str) -> int:
    root = Path(output_dir)
    sweeps = sorted(p for p in root.glob("*") if (p / "sweep.yaml").exists()) if root.exists() else []
    if not sweeps:
        print(f"no sweeps under {root.resolve()}")
        return 0
    print(f"{'name':<24} {'state':<12} {'optimizers':<10} {'trials':>7}  best (optimizer: val acc)")
    for path in sweeps:
        cfg = yaml.safe_load((path / "sweep.yaml").read_text())
        best = ""
        summary = path / "summary.json"
        if summary.exists():
            opts = json.loads(summary.read_text())["optimizers"]
            scored = [(r["best_val_accuracy"], o) for o, r in opts.items() if r["best_val_accuracy"] is not None]
            if scored:
                value, name = max(scored)
                best = f"{name}: {value:.4f}"
        print(f"{path.name:<24} {sweep_state(path):<12} {len(cfg['optimizers']):<10} {cfg['trials']:>7}  {best}")
    return 0


def find_sweep(name: str | None, output_dir: str) -> Path:
    root = Path(output_dir)
    if name is not None:
        path = root / name
        if not (path / "sweep.yaml").exists():
            raise ConfigError("name", f"no sweep {name!r} under {root.resolve()}")
        return path
    sweeps = sorted((p for p in root.glob("*/sweep.yaml")), key=lambda p: p.stat().st_mtime) if root.exists() else []
    if not sweeps:
        raise ConfigError("name", f"no sweeps under {root.resolve()}; run `sweep run` first")
    return sweeps[-1].parent


def _tracking_uri(sweep_dir: Path) -> tuple[dict, str]:
    from sweep.tracking import default_tracking_uri

    cfg = yaml.safe_load((sweep_dir / "sweep.yaml").read_text())
    return cfg, cfg["tracking_uri"] or default_tracking_uri(sweep_dir.resolve())


def ui_command(name: str | None, output_dir: str, host: str, port: int) -> list[str]:
    _, uri = _tracking_uri(find_sweep(name, output_dir))
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host, "--port", str(port)]


def runs_table_url(base: str, experiment_id: str) -> str:
    """``workflowType`` stops MLflow 3 opening its GenAI overview instead of the runs."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def ui_url(name: str | None, output_dir: str, host: str, port: int) -> str:
    from mlflow import MlflowClient

    cfg, uri = _tracking_uri(find_sweep(name, output_dir))
    experiment = MlflowClient(uri).get_experiment_by_name(cfg["name"])
    base = f"http://{host}:{port}"
    return base if experiment is None else runs_table_url(base, experiment.experiment_id)


def open_ui(name: str | None, output_dir: str, host: str, port: int) -> int:
    cfg, uri = _tracking_uri(find_sweep(name, output_dir))
    if uri.startswith(("http://", "https://")):  # a tracking server already serves the UI
        print(f"sweep {cfg['name']!r} logs to the MLflow server at {uri}: open it there "
              f"(experiment {cfg['name']!r})")
        return 0
    command = ui_command(name, output_dir, host, port)
    print(f"MLflow UI for {uri}\n  {ui_url(name, output_dir, host, port)}  (Ctrl-C stops it)", flush=True)
    return subprocess.call(command)
