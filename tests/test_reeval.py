"""The re-evaluation phase: its rules on real Optuna studies (quick), and a real sweep end to end:
runs, summary, parent runs, the logged model reproducing its test accuracy, top-up on resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
from optuna.trial import TrialState

from sweep.core.keys import Attr
from sweep.core.outcome import Status
from sweep.stores import reeval
from sweep.stores.studies import SweepStudy


def _finish(study: SweepStudy, value: float, status: Status = Status.OK) -> int:
    """A search trial with a sampled lr, reported and finished as a worker would."""
    trial = study.ask()
    trial.suggest_float("lr", 1e-4, 1.0, log=True)
    trial.report(value, 1)
    study.finish(trial.number, status, "", {"val_accuracy": value}, value)
    return trial.number


def _studies(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    search = SweepStudy.open(url, "s", "sgd", "id", sampler="random", pruner="none", seed=0, trials=4, epochs=1)
    again = SweepStudy.open_reeval(url, "s", "sgd", "id")
    return search, again


@pytest.mark.slow  # about 1.1 s: two journal studies with a dozen trials
def test_plan_queues_the_top_configurations_with_further_seeds_once(tmp_path):
    search, again = _studies(tmp_path)
    values = [0.5, 0.9, 0.8, 0.95]
    for v in values:
        _finish(search, v)
    _finish(search, 0.99, Status.DIVERGED)  # never re-evaluated: not a result
    planned = reeval.plan(search, again, sweep_seed=7, reeval_seeds=2, reeval_top=2)
    assert [(p.source.number, p.seed) for p in planned] == [(3, 8), (3, 9), (1, 8), (1, 9)]
    for p in planned:
        reeval.enqueue(again, p)
    assert reeval.plan(search, again, 7, 2, 2) == []  # waiting ones are not queued again
    assert reeval.plan(search, again, 7, 3, 2) and all(p.seed == 10 for p in reeval.plan(search, again, 7, 3, 2))

    first = again.ask()  # a re-evaluation hands out the search trial's parameters
    assert first.suggest_float("lr", 1e-4, 1.0, log=True) == search.record(3).params["lr"]
    assert (first.user_attrs[Attr.SOURCE_TRIAL], first.user_attrs[Attr.REEVAL_SEED]) == (3, 8)
    again.finish(first.number, Status.INTERRUPTED, "driver died")
    replanned = reeval.plan(search, again, 7, 2, 2)
    assert [(p.source.number, p.seed, p.retry_of) for p in replanned] == [(3, 8, first.number)]


def test_reported_configuration_is_chosen_by_mean_validation_never_by_test(tmp_path):
    search, again = _studies(tmp_path)
    for v in (0.9, 0.95):
        _finish(search, v)
    assert reeval.reported(search, again, 2) == reeval.Reported(1, (), None)  # none re-evaluated yet
    for p in reeval.plan(search, again, 0, 2, 2):
        reeval.enqueue(again, p)
    # trial 1 (search best) re-evaluates worse on validation than trial 0; its test scores are higher
    scores = {(1, 1): (0.80, 0.99), (1, 2): (0.82, 0.99), (0, 1): (0.90, 0.50), (0, 2): (0.88, 0.50)}
    numbers = {}
    for _ in scores:
        trial = again.ask()
        key = (trial.user_attrs[Attr.SOURCE_TRIAL], trial.user_attrs[Attr.REEVAL_SEED])
        val, test = scores[key]
        again.finish(trial.number, Status.OK, "", {"val_accuracy": val, "test_accuracy": test}, val)
        numbers[key] = trial.number
    chosen = reeval.reported(search, again, 2)
    assert chosen.source == 0
    assert [reeval.key_of(t) for t, _ in chosen.reevals] == [(0, 1), (0, 2)]
    assert chosen.model_trial == numbers[(0, 1)]  # its best validation seed
    assert reeval.reported(search, again, 1).source == 1  # top 1: the search's best, whatever it scores


# ---- a real sweep ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_sweep_reevaluates_reports_and_logs_a_model_that_reproduces_its_test_accuracy(
    ray_address, sweep_overrides, capsys
):
    import mlflow
    import torch
    from mlflow import MlflowClient

    from sweep.cli import main
    from sweep.core.config import load_config
    from sweep.core.datasets import load_dataset
    from sweep.execution.launch import run_sweep
    from sweep.stores.sweepdir import SweepDir
    from tests.sweep_helpers import default_storage, default_tracking_uri, sweep_dir_of

    base = sweep_overrides + [
        "name=reeval",
        "optimizers=[sgd,adam]",
        "trials=3",
        "epochs=2",
        "pruner=none",
        f"ray_address={ray_address}",
    ]
    cfg = load_config("quickstart", base + ["reeval_seeds=2"], mode="sweep")
    result = run_sweep(cfg)
    sweep_dir = sweep_dir_of(cfg)
    storage, uri = default_storage(sweep_dir), default_tracking_uri(sweep_dir)
    summary = json.loads((sweep_dir / "summary.json").read_text())
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(cfg.name).experiment_id
    runs = client.search_runs([exp], max_results=1000)
    by_role = {
        role: [r for r in runs if r.data.tags.get("sweep.role") == role]
        for role in ("parent", "trial", "reeval", "sweep")
    }
    assert [len(by_role[k]) for k in ("parent", "trial", "reeval", "sweep")] == [2, 6, 4, 1]
    data = load_dataset("digits", seed=0)
    for opt in cfg.optimizers:
        search = SweepStudy.find(storage, f"{cfg.name}/{opt}")
        again = SweepStudy.find(storage, f"{cfg.name}/{opt}/reeval")
        best = max((t for t in search.trials() if t.state == TrialState.COMPLETE), key=lambda t: (t.value, -t.number))
        trials = again.trials()
        assert sorted(reeval.key_of(t) for t in trials) == [(best.number, 1), (best.number, 2)]
        assert all(t.state == TrialState.COMPLETE and t.params == best.params for t in trials)
        tests = [t.user_attrs["final_test_accuracy"] for t in sorted(trials, key=lambda t: reeval.key_of(t))]
        row = summary["optimizers"][opt]
        assert row["seeds"] == 2 and row["best_trial"] == best.number
        assert row["test_accuracy_mean"] == pytest.approx(np.mean(tests))
        assert row["test_accuracy_std"] == pytest.approx(np.std(tests, ddof=1))
        runs_of = {r.info.run_id: r for r in by_role["reeval"] if r.data.tags["sweep.optimizer"] == opt}
        assert sorted(runs_of) == sorted(t.user_attrs[Attr.MLFLOW_RUN] for t in trials)
        parent = next(r for r in by_role["parent"] if r.data.tags["sweep.optimizer"] == opt)
        for t in trials:
            run = runs_of[t.user_attrs[Attr.MLFLOW_RUN]]
            assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parent.info.run_id
            assert run.data.params["seed"] == str(t.user_attrs[Attr.REEVAL_SEED])
            assert run.data.tags["sweep.source_trial"] == str(best.number)
        parent = client.get_run(parent.info.run_id)
        assert parent.info.status == "FINISHED"
        assert parent.data.metrics["test_accuracy_mean"] == pytest.approx(row["test_accuracy_mean"])
        assert parent.data.tags["sweep.best_run_id"] == best.user_attrs[Attr.MLFLOW_RUN]

        # the model: loadable by URI, and it scores exactly its run's reported test accuracy
        model_trial = max(trials, key=lambda t: (t.value, -t.number))
        assert row["model_uri"] == parent.data.tags["sweep.model_uri"]
        mlflow.set_tracking_uri(uri)
        model = mlflow.pytorch.load_model(row["model_uri"])
        with torch.no_grad():
            predicted = model(torch.from_numpy(data.test_x)).argmax(1).numpy()
        assert float((predicted == data.test_y).mean()) == pytest.approx(
            model_trial.user_attrs["final_test_accuracy"], abs=1e-9
        )

    sweep_run = by_role["sweep"][0]
    artifacts = {f.path for f in client.list_artifacts(sweep_run.info.run_id, "report")}
    assert {"report/report.html", "report/comparison.csv", "report/comparison.md"} <= artifacts
    assert (result.report.html == SweepDir(sweep_dir).report / "report.html") and result.report.html.is_file()

    # `sweep report NAME` rebuilds it from the stores alone
    (sweep_dir / "report" / "report.html").unlink()
    assert main(["report", cfg.name, "--output-dir", cfg.output_dir]) == 0
    assert f"report:  {sweep_dir / 'report' / 'report.html'}" in capsys.readouterr().out
    assert (sweep_dir / "report" / "report.html").is_file()

    # resume with one more seed: one more re-evaluation each, no new search trial, nothing twice
    run_sweep(load_config("quickstart", base + ["reeval_seeds=3"], mode="sweep"))
    for opt in cfg.optimizers:
        assert len(SweepStudy.find(storage, f"{cfg.name}/{opt}").trials()) == 3
        keys = [reeval.key_of(t) for t in SweepStudy.find(storage, f"{cfg.name}/{opt}/reeval").trials()]
        assert sorted(k[1] for k in keys) == [1, 2, 3] and len(set(keys)) == 3
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert {row["seeds"] for row in summary["optimizers"].values()} == {3}
