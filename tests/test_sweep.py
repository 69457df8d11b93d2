"""The sweep engine end to end: real Ray, real Optuna storage, real MLflow store."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from optuna.trial import TrialState

from sweep.cli import main
from sweep.core.config import load_config
from sweep.core.keys import Attr, Tag
from sweep.core.target import parse_curve, time_to_target
from sweep.execution.launch import run_sweep
from tests.sweep_helpers import (
    default_storage,
    default_tracking_uri,
    mlflow_runs,
    runs_per_trial,
    studies,
    sweep_dir_of,
)

pytestmark = pytest.mark.slow  # every test runs a sweep on the session's Ray


def test_two_optimizers_four_trials_two_workers(ray_address, sweep_overrides):
    cfg = load_config(
        "quickstart",
        sweep_overrides
        + [
            "name=counts",
            "optimizers=[sgd,adam]",
            "trials=4",
            "workers=2",
            "pruner=none",
            "optimizer.lr=0.01",
            "schedules=[constant,cosine]",
            "batch_sizes=[32,64]",
            "target_accuracy=0.5",
            "eval_every_steps=10",
        ],
        mode="sweep",
    )
    assert run_sweep(cfg).rows
    sweep_dir = sweep_dir_of(cfg)
    by_opt = studies(cfg, default_storage(sweep_dir))
    trials = [t for s in by_opt.values() for t in s.get_trials()]
    assert len(trials) == 8
    assert all(t.state == TrialState.COMPLETE for t in trials)

    client, parents, children = mlflow_runs(default_tracking_uri(sweep_dir), cfg.name)
    assert len(parents) == 2 and len(children) == 8
    assert sorted(r.data.tags["sweep.optimizer"] for r in parents) == ["adam", "sgd"]
    assert all("| adam |" in r.data.tags["mlflow.note.content"] and r.info.status == "FINISHED" for r in parents)
    assert set(runs_per_trial(children).values()) == {1}
    parent_ids = {r.info.run_id for r in parents}
    for run in children:
        opt, number = run.data.tags["sweep.optimizer"], int(run.data.tags["optuna.trial_number"])
        trial = by_opt[opt].trials[number]
        assert run.data.tags["mlflow.parentRunId"] in parent_ids
        assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
        assert run.info.status == "FINISHED" and run.data.tags["optuna.state"] == "COMPLETE"
        assert run.data.params["optimizer"] == opt
        for key, value in trial.params.items():
            assert run.data.params[key] == str(value), key
        assert trial.params["batch_size"] in (32, 64)  # searched, recorded as the run's batch_size
        assert trial.user_attrs["hyperparameters"]["batch_size"] == trial.params["batch_size"]
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2]  # epochs count from 1
        assert math.isclose(history[-1].value if history[-1].step == 2 else history[0].value, trial.value)
        assert run.data.tags["sweep.status"] == trial.user_attrs["status"] == "ok"
        assert run.data.metrics["final_test_accuracy"] > 0
        _assert_time_to_target(trial, run, cfg)

    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert set(summary["optimizers"]) == {"sgd", "adam"}
    for opt, row in summary["optimizers"].items():
        assert row["ok"] == 4 and row["pruned"] == 0 and row["failed"] == 0
        assert row["best_val_accuracy"] == max(t.value for t in by_opt[opt].trials)
        assert row["best_params"]["lr"] == 0.01 and row["best_params"]["schedule"] in ("constant", "cosine")
        assert row["best_params"]["batch_size"] in (32, 64)
    adam = summary["optimizers"]["adam"]  # shown as beta1, searched as log(1 - beta1)
    assert math.isclose(adam["best_params"]["beta1"], 1 - adam["best_optuna_params"]["one_minus_beta1"])
    assert (sweep_dir / "report" / "comparison.csv").read_text().count("\n") == 3
    assert "| adam |" in (sweep_dir / "report" / "comparison.md").read_text()


def _assert_time_to_target(trial, run, cfg) -> None:
    """The trial's curve (every 10 steps and each epoch's end) is its attribute, its time to the
    target its final metrics in both stores, and the run's tag says it in words."""
    curve = parse_curve(trial.user_attrs[Attr.CURVE])
    steps_per_epoch = math.ceil(curve[-1].images / cfg.epochs / trial.params["batch_size"])
    ends = {steps_per_epoch, 2 * steps_per_epoch}
    assert [p.steps for p in curve] == sorted({*range(10, 2 * steps_per_epoch, 10), *ends})
    assert curve[-1].val_accuracy == trial.value
    assert math.isclose(curve[-1].train_seconds, run.data.metrics["final_train_seconds"], rel_tol=1e-9)
    assert run.data.params["target_accuracy"] == "0.5" and run.data.params["eval_every_steps"] == "10"
    reached = time_to_target(curve, 0.5)
    assert run.data.metrics["final_target_reached"] == trial.user_attrs["final_target_reached"] == (reached is not None)
    if reached is not None:
        assert run.data.metrics["final_steps_to_target"] == reached.steps
        assert run.data.metrics["final_time_to_target_s"] == pytest.approx(reached.seconds)
        assert run.data.tags[Tag.TARGET].startswith("reached 0.5 at ")
    else:
        assert "final_time_to_target_s" not in run.data.metrics
        assert run.data.tags[Tag.TARGET].startswith("not reached: best ")


def test_pruned_trials_are_pruned_in_optuna_and_mlflow(ray_address, sweep_overrides):
    cfg = load_config(
        "quickstart",
        sweep_overrides
        + [
            "name=pruning",
            "optimizers=[sgd]",
            "trials=6",
            "epochs=3",
            "workers=1",
            "sampler=random",
            "pruner=median",
            "schedules=[constant]",
        ],
        mode="sweep",
    )
    assert run_sweep(cfg).rows
    sweep_dir = sweep_dir_of(cfg)
    study = studies(cfg, default_storage(sweep_dir))["sgd"]
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned, [(t.state, t.intermediate_values) for t in study.trials]
    _, _, children = mlflow_runs(default_tracking_uri(sweep_dir), cfg.name)
    state_of_run = {int(r.data.tags["optuna.trial_number"]): r.data.tags["optuna.state"] for r in children}
    run_of = {int(r.data.tags["optuna.trial_number"]): r for r in children}
    for t in study.trials:
        assert state_of_run[t.number] == t.state.name
        if t.state == TrialState.PRUNED:  # named one way in both stores, and visible at a glance
            run = run_of[t.number]
            assert t.user_attrs["status"] == run.data.tags["sweep.status"] == "pruned"
            assert run.info.status == "KILLED" and "final_val_accuracy" in run.data.metrics
    assert all(len(t.intermediate_values) < 3 for t in pruned)
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert summary["optimizers"]["sgd"]["pruned"] == len(pruned)


def test_resume_tops_up_the_budget_without_rerunning(ray_address, sweep_overrides, tmp_path):
    base = sweep_overrides + ["name=topup", "optimizers=[adagrad]", "epochs=1", "workers=2", "sampler=random"]
    assert run_sweep(load_config("quickstart", base + ["trials=2"], mode="sweep")).rows
    cfg = load_config("quickstart", base + ["trials=4"], mode="sweep")
    output_dir = str(sweep_dir_of(cfg).parent)
    assert main(["resume", "topup", "trials=4", "--output-dir", output_dir]) == 0
    assert main(["resume", "topup", "epochs=5", "--output-dir", output_dir]) == 2  # would mix experiments
    study = studies(cfg, default_storage(sweep_dir_of(cfg)))["adagrad"]
    assert len(study.trials) == 4
    lrs = [t.params["lr"] for t in study.trials]
    assert len(set(lrs)) == 4, lrs  # the resumed sampler does not replay the first run's draws
    _, parents, children = mlflow_runs(default_tracking_uri(sweep_dir_of(cfg)), cfg.name)
    assert len(parents) == 1 and len(children) == 4

    # the sweep moved: resuming from its new place uses the stores there, not the old paths
    moved = tmp_path / "moved"
    shutil.copytree(output_dir, moved)
    shutil.rmtree(output_dir)
    assert main(["resume", "topup", "trials=5", "--output-dir", str(moved)]) == 0
    moved_cfg = cfg.replace(output_dir=str(moved))
    assert len(studies(moved_cfg, default_storage(sweep_dir_of(moved_cfg)))["adagrad"].trials) == 5
    assert not Path(output_dir).exists(), sorted(str(p) for p in Path(output_dir).rglob("*"))[:20]


def test_resume_keeps_every_optimizer(ray_address, sweep_overrides, tmp_path, capsys):
    base = sweep_overrides + ["name=keep", "epochs=1", "trials=1"]
    assert run_sweep(load_config("quickstart", base + ["optimizers=[sgd,adam]"], mode="sweep")).rows
    before = sorted(p.name for p in sweep_dir_of(load_config("quickstart", base, mode="sweep")).iterdir())
    capsys.readouterr()
    assert main(["run", "quickstart", *base, "optimizers=[sgd]"]) == 2
    assert capsys.readouterr().err.startswith("sweep: error: optimizers: sweep 'keep' already has studies for adam")
    assert main(["run", "quickstart", *base, "optimizers=[sgd,adam,adamw]"]) == 0  # adding one is fine
    assert sorted(json.loads((tmp_path / "sweeps" / "keep" / "summary.json").read_text())["optimizers"]) == [
        "adam",
        "adamw",
        "sgd",
    ]
    assert before == sorted(p.name for p in (tmp_path / "sweeps" / "keep").iterdir())


def test_same_name_from_another_directory_is_refused(ray_address, tmp_path, capsys):
    """Two sweeps that share stores must not merge because they share a name."""
    shared = [
        f"storage=sqlite:///{tmp_path}/optuna.db",
        f"tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        "name=twin",
        "optimizers=[sgd]",
        "trials=1",
        "epochs=1",
        "reeval_seeds=0",
        "report_figures=false",
    ]
    assert main(["run", "quickstart", f"output_dir={tmp_path / 'first'}", *shared]) == 0
    capsys.readouterr()
    assert main(["run", "quickstart", f"output_dir={tmp_path / 'second'}", *shared]) == 2
    assert capsys.readouterr().err.startswith("sweep: error: name: ")
    assert not (tmp_path / "second").exists()
    assert main(["run", "quickstart", f"output_dir={tmp_path / 'first'}", *shared, "trials=2"]) == 0  # its own


@pytest.mark.postgres
def test_postgresql_storage(ray_address, sweep_overrides, pg_storage):
    import uuid

    name = f"pg-{uuid.uuid4().hex[:8]}"
    cfg = load_config(
        "quickstart",
        sweep_overrides
        + [f"name={name}", "optimizers=[adam]", "trials=2", "epochs=1", "workers=2", f"storage={pg_storage}"],
        mode="sweep",
    )
    assert run_sweep(cfg).rows
    study = studies(cfg, cfg.storage)["adam"]
    assert len([t for t in study.trials if t.state.is_finished()]) == 2


def test_every_registry_optimizer_runs_in_a_sweep_and_shows_up_in_the_report(ray_address, sweep_overrides):
    """One trial of every built-in optimizer (constant and cosine offered: the schedule-free ones
    take constant alone), re-evaluated once: each has its row in the ranking, the Markdown table,
    the HTML page and an MLflow parent run."""
    from optim import OPTIMIZERS
    from optim.declared import BUILT_IN

    names = [n for n in OPTIMIZERS if n in BUILT_IN]
    overrides = [o for o in sweep_overrides if not o.startswith(("epochs=", "reeval_seeds=", "report_figures="))]
    cfg = load_config(
        "quickstart",
        overrides
        + [
            "name=registry",
            f"optimizers=[{','.join(names)}]",
            "trials=1",
            "epochs=1",
            "reeval_seeds=1",
            "schedules=[constant,cosine]",
            "pruner=none",
        ],
        mode="sweep",
    )
    result = run_sweep(cfg)
    assert sorted(row.optimizer for row in result.rows) == sorted(names)
    assert all(row.test is not None and row.test.n == 1 for row in result.rows), [
        (r.optimizer, r.counts) for r in result.rows
    ]
    sweep_dir = sweep_dir_of(cfg)
    markdown = (sweep_dir / "report" / "comparison.md").read_text()
    html = (sweep_dir / "report" / "report.html").read_text()
    for name in names:
        assert f"| {name} |" in markdown and name in html, name
    for name, study in studies(cfg, default_storage(sweep_dir)).items():
        if OPTIMIZERS[name].schedule_free:
            assert {t.params.get("schedule", "constant") for t in study.trials} == {"constant"}
    _, parents, _ = mlflow_runs(default_tracking_uri(sweep_dir), cfg.name)
    assert sorted(r.data.tags["sweep.optimizer"] for r in parents) == sorted(names)
