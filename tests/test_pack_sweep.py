"""``pack=N`` in a real sweep (the session's Ray, real Optuna storage and MLflow store): the records
are those of the same sweep run one trial per task, but for the tag naming each trial's pack; a
pack whose worker dies goes on solo, every member from its own checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from optuna.trial import TrialState

from sweep.core.config import load_config
from sweep.core.datasets import load_data
from sweep.execution.launch import run_sweep
from sweep.stores.studies import study_name
from sweep.train import memory as pack_memory
from tests.sweep_helpers import (
    default_storage,
    default_tracking_uri,
    mlflow_runs,
    runs_per_trial,
    studies,
    sweep_dir_of,
    sweep_with_a_killed_worker,
)
from tests.test_worker_death import _running_trial_with_an_epoch

pytestmark = pytest.mark.slow  # sweeps on the session's Ray

OPTIMIZERS = ("sgd", "adam")
VOLATILE = (
    "seconds",
    "epoch_seconds",
    "images_per_second",
    "train_seconds",
    "eval_seconds",
    "setup_seconds",
    "report_seconds",
)


def _records(cfg):
    """Per (optimizer, trial): its parameters, state, value and per-epoch values; its run's params,
    metric names, status and tags (timings left out: they are measured, not computed)."""
    sweep_dir = sweep_dir_of(cfg)
    by_opt = studies(cfg, default_storage(sweep_dir))
    client, parents, children = mlflow_runs(default_tracking_uri(sweep_dir), cfg.name)
    assert set(runs_per_trial(children).values()) == {1}
    runs = {(r.data.tags["sweep.optimizer"], int(r.data.tags["optuna.trial_number"])): r for r in children}
    records = {}
    for opt, study in by_opt.items():
        for t in study.trials:
            run = runs[(opt, t.number)]
            history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_accuracy")}
            records[(opt, t.number)] = dict(
                params=t.params,
                state=t.state,
                value=t.value,
                intermediate=t.intermediate_values,
                status=t.user_attrs["status"],
                run_params=run.data.params,
                run_status=run.info.status,
                metrics=sorted(k for k in run.data.metrics if not k.endswith(VOLATILE)),
                history=history,
                test=run.data.metrics["final_test_accuracy"],
                tags=sorted(k for k in run.data.tags if k not in ("sweep.pack", "sweep.execution.worker")),
            )
    return records, parents, children, by_opt


def test_a_packed_sweep_records_what_the_solo_sweep_does(ray_address, sweep_overrides, digits):
    common = [
        "optimizers=[sgd,adam]",
        "trials=3",
        "workers=2",
        "sampler=random",
        "pruner=none",
        "schedules=[constant,onecycle]",
    ]
    solo_cfg = load_config("quickstart", sweep_overrides + common + ["name=solo"], mode="sweep")
    cfg = load_config("quickstart", sweep_overrides + common + ["name=packed", "pack=3"], mode="sweep")
    # room for 2 members of 3: each pack runs as sub-packs of 2 and 1
    member = pack_memory.member_bytes(cfg.trial_config("adam"), load_data(cfg), torch.device("cpu"))
    cfg = cfg.replace(pack_memory_mb=2.5 * member / pack_memory.HEADROOM / 2**20)
    assert run_sweep(solo_cfg).rows and run_sweep(cfg).rows

    solo, _, _, _ = _records(solo_cfg)
    packed, parents, children, by_opt = _records(cfg)
    assert solo.keys() == packed.keys() and len(packed) == 6
    for key, record in packed.items():
        expected = solo[key]
        for field in ("params", "state", "status", "run_status", "metrics", "tags"):
            assert record[field] == expected[field], (key, field)
        # bit-identical training (pack_update=exact), so the same accuracies at every epoch
        assert record["value"] == expected["value"] and record["intermediate"] == expected["intermediate"], key
        assert record["history"] == expected["history"] and record["test"] == expected["test"], key
        assert {k: v for k, v in record["run_params"].items()} == expected["run_params"], key
    for run in children:  # the one difference: the tag naming the pack
        opt, number = run.data.tags["sweep.optimizer"], int(run.data.tags["optuna.trial_number"])
        members = run.data.tags["sweep.pack"].split(",")
        assert str(number) in members and len(members) in (1, 2)
        assert by_opt[opt].trials[number].user_attrs["pack"] == run.data.tags["sweep.pack"]
    for opt in OPTIMIZERS:  # 3 trials: one pack of 3 (sub-packs of 2 and 1)
        assert sorted(len(t.user_attrs["pack"].split(",")) for t in by_opt[opt].trials) == [1, 2, 2]
    solo_summary = json.loads((sweep_dir_of(solo_cfg) / "summary.json").read_text())["optimizers"]
    summary = json.loads((sweep_dir_of(cfg) / "summary.json").read_text())["optimizers"]
    for opt in OPTIMIZERS:
        for field in ("ok", "pruned", "failed", "diverged", "best_val_accuracy", "best_params"):
            assert summary[opt][field] == solo_summary[opt][field], (opt, field)


def test_a_pack_whose_worker_dies_goes_on_solo_from_each_checkpoint(ray_address, sweep_overrides):
    epochs = 5
    cfg = load_config(
        "quickstart",
        sweep_overrides
        + [
            "name=pack-worker-dies",
            "optimizers=[momentum]",
            "trials=2",
            "pack=2",
            f"epochs={epochs}",
            "batch_size=8",
            "workers=1",
            "pruner=none",
            "schedules=[constant]",
            "optimizer.lr=0.01",
            "max_retries=1",
        ],
        mode="sweep",
    )
    sweep_dir = sweep_dir_of(cfg)
    storage_url = default_storage(sweep_dir)

    def three_epochs_in():  # by then epoch 1's checkpoint is stored (a write waits for the one before)
        trial = _running_trial_with_an_epoch(storage_url, study_name(cfg.name, "momentum"))
        return trial if trial is not None and len(trial.intermediate_values) >= 3 else None

    victim, code = sweep_with_a_killed_worker(cfg, three_epochs_in, "a running packed trial 3 epochs in")
    assert code == 0
    study = studies(cfg, storage_url)["momentum"]
    client, _, children = mlflow_runs(default_tracking_uri(sweep_dir), cfg.name)
    assert len(study.trials) == 2 and len(children) == 2 and set(runs_per_trial(children).values()) == {1}
    for trial in study.trials:
        assert trial.state == TrialState.COMPLETE and trial.user_attrs["attempt"] == 2
        assert trial.user_attrs["pack"] == "0,1"
        assert trial.user_attrs["resumed_from_epoch"] >= 1  # from the checkpoint the pack stored for it
        assert sorted(trial.intermediate_values) == list(range(1, epochs + 1))
        run = next(r for r in children if r.info.run_id == trial.user_attrs["mlflow_run_id"])
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy"))
        assert steps == list(range(1, epochs + 1))  # no epoch logged twice
        assert run.info.status == "FINISHED" and run.data.tags["sweep.pack"] == "0,1"
