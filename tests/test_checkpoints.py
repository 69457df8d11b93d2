"""Checkpoints: a resumed trial ends bit-identical to one that never stopped (CPU), for every
registry optimizer (a Schedule-Free one checkpointed at its evaluation point), in-process and
through a real sweep whose worker is SIGKILLed; the run's store keeps only the latest checkpoint,
reads past a torn one (the proxy on a cluster: tests/test_cluster.py); and a finished sweep
keeps only each optimizer's best trial's checkpoint (every one with keep_checkpoints=true)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pytest
import torch
from mlflow import MlflowClient
from optuna.trial import TrialState

from optim import OPTIMIZERS
from optim.declared import BUILT_IN
from sweep.core.config import load_config
from sweep.core.outcome import Tally
from sweep.core.records import PruneTrial
from sweep.execution.launch import run_sweep
from sweep.execution.search import sample_trial
from sweep.stores import checkpoints
from sweep.stores.studies import open_storage, outcome_of, study_name
from sweep.train.solo import TrialConfig, run_trial
from tests.sweep_helpers import (
    default_storage,
    default_tracking_uri,
    mlflow_runs,
    studies,
    sweep_dir_of,
    sweep_with_a_killed_worker,
)

TIMING = (
    "seconds",
    "train_seconds",
    "eval_seconds",
    "epoch_seconds",
    "images_per_second",
)  # wall clock: differs run to run


def _same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)


def _same_outcome(resumed, uninterrupted) -> None:
    """Every final metric and every epoch's metrics equal to 1e-6, wall-clock times aside."""
    assert resumed.status == uninterrupted.status == "ok", (resumed.reason, uninterrupted.reason)
    assert resumed.metrics.keys() == uninterrupted.metrics.keys()
    for key in resumed.metrics.keys() - set(TIMING):
        assert resumed.metrics[key] == pytest.approx(uninterrupted.metrics[key], abs=1e-6), key
    assert len(resumed.history) == len(uninterrupted.history)
    for mine, theirs in zip(resumed.history, uninterrupted.history):
        for key, value in mine.logged().items():
            if key not in TIMING:
                assert value == pytest.approx(theirs.logged()[key], abs=1e-6), (mine.epoch, key)
    # train_seconds covers every epoch, the ones before the checkpoint too
    assert resumed.metrics["train_seconds"] == pytest.approx(sum(h.epoch_seconds for h in resumed.history))
    _same_curve(resumed, uninterrupted)


def _same_curve(resumed, uninterrupted) -> None:
    """The same evaluations (training seconds aside), the checkpoint's ones carried over."""
    assert [(p.steps, p.images, p.val_accuracy) for p in resumed.curve] == [
        (p.steps, p.images, p.val_accuracy) for p in uninterrupted.curve
    ]
    assert [p.train_seconds for p in resumed.curve] == sorted(p.train_seconds for p in resumed.curve)


# ---- in-process: stop after epoch 2, resume from its checkpoint file ---------------------------------


@pytest.mark.slow  # four 4-epoch trainings and their resumes: about 1-3 s each
@pytest.mark.parametrize(
    "optimizer, optimizer_params, schedule, schedule_params",
    [
        ("momentum", {"lr": 0.05, "momentum": 0.9}, "cosine", {}),
        ("nesterov", {"lr": 0.05, "momentum": 0.9}, "step", {"step_epochs": 1, "gamma": 0.5}),
        ("adam", {"lr": 0.003}, "onecycle", {"warmup_epochs": 1}),  # warm-up, then a per-batch schedule
        ("rmsprop", {"lr": 0.001}, "plateau", {"patience": 0}),  # ReduceLROnPlateau
    ],
    ids=["momentum-cosine", "nesterov-step", "adam-warmup-onecycle", "rmsprop-plateau"],
)
def test_resumed_trial_equals_uninterrupted(digits, tmp_path, optimizer, optimizer_params, schedule, schedule_params):
    cfg = TrialConfig(
        optimizer=optimizer,
        optimizer_params=optimizer_params,
        schedule=schedule,
        schedule_params=schedule_params,
        epochs=4,
        batch_size=64,
        seed=0,
    )
    uninterrupted_saves: list[checkpoints.Checkpoint] = []

    def save(checkpoint):
        if checkpoint.epoch == 2:  # through the file, as a retried worker reads it
            checkpoints.write(checkpoint, tmp_path / "epoch-2.pt")
        uninterrupted_saves.append(checkpoint)

    uninterrupted = run_trial(cfg, digits, save=save)
    reported, resumed_saves = [], []
    resumed = run_trial(
        cfg, digits, reported.append, resume=checkpoints.read(tmp_path / "epoch-2.pt"), save=resumed_saves.append
    )
    assert [m.epoch for m in reported] == [3, 4]  # the checkpoint's epochs are not reported again
    assert [c.epoch for c in resumed_saves] == [3, 4]
    assert [h.scheduled_lr for h in resumed.history] == [h.scheduled_lr for h in uninterrupted.history]
    _same_outcome(resumed, uninterrupted)
    _same_weights(resumed_saves[-1].model, uninterrupted_saves[-1].model)  # the final weights


def _identical(a, b, where: str = "") -> None:
    """Equal bit for bit through dicts, lists and tensors (NaN aside: none is expected)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


RESUME_IMAGES = 512  # of digits' 1,150 training images: 8 batches of 64 per epoch
EVAL_EVERY = 3  # steps: mid-epoch evaluations after steps 3, 6 | 9, 12, 15 | 18, 21 (epoch ends: 8, 16, 24)


@pytest.mark.slow  # a 3-epoch training and a 2-epoch resume per optimizer: about 1 s each
@pytest.mark.parametrize("optimizer", sorted(BUILT_IN))
def test_every_optimizer_resumes_bit_identically(digits, tmp_path, optimizer):
    """Each registry optimizer at its defaults, stopped after epoch 1 (the end of a one-epoch
    warm-up) and resumed from the checkpoint file: every epoch's metrics, the test metrics, the
    evaluation curve, the final weights and optimizer state equal bit for bit. A Schedule-Free
    optimizer trains with the constant schedule (the only one it takes), and is evaluated mid-epoch
    (``eval_every_steps``) at its evaluation point, then goes on training at its training point."""
    data = dataclasses.replace(digits, train_x=digits.train_x[:RESUME_IMAGES], train_y=digits.train_y[:RESUME_IMAGES])
    cfg = TrialConfig(
        optimizer=optimizer,
        schedule="constant" if OPTIMIZERS[optimizer].schedule_free else "cosine",
        schedule_params={"warmup_epochs": 1},
        epochs=3,
        batch_size=64,
        eval_every_steps=EVAL_EVERY,
    )
    uninterrupted_saves: list[checkpoints.Checkpoint] = []

    def save(checkpoint):
        if checkpoint.epoch == 1:
            checkpoints.write(checkpoint, tmp_path / "epoch-1.pt")
        uninterrupted_saves.append(checkpoint.detached())

    uninterrupted = run_trial(cfg, data, save=save)
    resumed_saves: list[checkpoints.Checkpoint] = []
    resumed = run_trial(
        cfg, data, resume=checkpoints.read(tmp_path / "epoch-1.pt"), save=lambda c: resumed_saves.append(c.detached())
    )
    assert uninterrupted.status == resumed.status == "ok", (uninterrupted.reason, resumed.reason)
    for key in uninterrupted.metrics.keys() - set(TIMING):
        assert resumed.metrics[key] == uninterrupted.metrics[key], key
    assert [h.epoch for h in resumed.history] == [1, 2, 3]
    for mine, theirs in zip(resumed.history, uninterrupted.history):
        assert {k: v for k, v in mine.logged().items() if k not in TIMING} == {
            k: v for k, v in theirs.logged().items() if k not in TIMING
        }, mine.epoch
    assert [c.epoch for c in resumed_saves] == [2, 3]
    assert [p.steps for p in uninterrupted.curve] == [3, 6, 8, 9, 12, 15, 16, 18, 21, 24]
    _same_curve(resumed, uninterrupted)
    _identical(resumed_saves[-1].model, uninterrupted_saves[-1].model, "model")
    _identical(resumed_saves[-1].optimizer, uninterrupted_saves[-1].optimizer, "optimizer")


@pytest.mark.slow  # trains
def test_checkpoint_every_and_no_checkpoint_of_a_pruned_epoch(digits):
    saved = []

    def stop_at_3(m):
        if m.epoch == 3:
            raise PruneTrial("stop")

    result = run_trial(
        TrialConfig(epochs=5, batch_size=64, checkpoint_every=2),
        digits,
        stop_at_3,
        save=lambda c: saved.append(c.epoch),
    )
    assert result.status == "pruned" and saved == [2]
    saved.clear()
    run_trial(TrialConfig(epochs=2, batch_size=64, checkpoint_every=0), digits, save=lambda c: saved.append(c.epoch))
    assert saved == []


# ---- the run's store (through the tracking server's artifact proxy: tests/test_cluster.py) ----------


@pytest.mark.slow
def test_store_keeps_the_latest_reads_past_a_torn_one_and_deletes(tmp_path, digits, capsys):
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri)
    location = (tmp_path / "artifacts").as_uri()
    run_id = client.create_run(client.create_experiment("ckpt", artifact_location=location)).info.run_id
    assert checkpoints.load_latest(tracking_uri, run_id) is None  # none yet: start over, nothing said
    saved = []
    run_trial(
        TrialConfig(epochs=2, batch_size=64),
        digits,
        save=lambda c: saved.append(checkpoints.save(tracking_uri, run_id, c)),
    )
    assert saved == [True, True] and checkpoints.stored_epochs(tracking_uri, run_id) == [2]
    if tracking_uri.startswith("http"):
        assert client.get_run(run_id).info.artifact_uri.startswith("mlflow-artifacts:")
    latest = checkpoints.load_latest(tracking_uri, run_id)
    assert latest.epoch == 2 and len(latest.history) == 2

    torn = tmp_path / "torn" / "epoch-0003.pt"  # a worker killed mid-upload
    torn.parent.mkdir()
    torn.write_bytes(b"half a checkpoint")
    client.log_artifact(run_id, str(torn), checkpoints.FOLDER)
    capsys.readouterr()
    assert checkpoints.load_latest(tracking_uri, run_id).epoch == 2
    assert capsys.readouterr().err.count("cannot read checkpoint epoch 3") == 1

    assert checkpoints.delete(tracking_uri, run_id) and checkpoints.stored_epochs(tracking_uri, run_id) == []
    assert checkpoints.delete(tracking_uri, run_id)  # none left: still fine

    # an upload that fails (here: the run's artifact folder would be under a file) is said; the trial goes on
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    unwritable = client.create_run(
        client.create_experiment("ckpt-unwritable", artifact_location=(blocker / "artifacts").as_uri())
    ).info.run_id
    with checkpoints.saver(tracking_uri, unwritable) as save:
        result = run_trial(TrialConfig(epochs=1, batch_size=64), digits, save=save)
    assert result.status == "ok", result.reason
    assert "checkpoints: could not store epoch 1 of run" in capsys.readouterr().err


# ---- through a real sweep: SIGKILL the worker after a checkpoint is stored -------------------------------


def _victim(storage_url: str, name: str, tracking_uri: str):
    """The running trial, once its run holds a checkpoint and epochs remain."""
    if not Path(storage_url[len("journal://") :]).exists():
        return None
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(storage_url))
    except KeyError:
        return None
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if "worker" in t.user_attrs and "mlflow_run_id" in t.user_attrs:
            if checkpoints.stored_epochs(tracking_uri, t.user_attrs["mlflow_run_id"]):
                return t
    return None


EPOCHS = 6


@pytest.mark.slow
def test_killed_worker_resumes_from_its_checkpoint(ray_address, sweep_overrides, digits):
    cfg = load_config(
        "quickstart",
        sweep_overrides
        + [
            "name=resume-after-kill",
            "optimizers=[momentum]",
            "trials=1",
            f"epochs={EPOCHS}",
            "batch_size=16",
            "workers=1",
            "pruner=none",
            "schedules=[step]",
            "schedule.step_epochs=2",
            "max_retries=1",
            "keep_checkpoints=true",
        ],
        mode="sweep",
    )
    sweep_dir = sweep_dir_of(cfg)
    storage_url, uri = default_storage(sweep_dir), default_tracking_uri(sweep_dir)
    victim, code = sweep_with_a_killed_worker(
        cfg,
        lambda: _victim(storage_url, study_name(cfg.name, "momentum"), uri),
        "a running trial with a stored checkpoint",
    )
    assert code == 0

    trial = studies(cfg, storage_url)["momentum"].trials[victim.number]
    assert trial.state == TrialState.COMPLETE and trial.user_attrs["attempt"] == 2
    resumed_from = trial.user_attrs["resumed_from_epoch"]
    print(f"\nthe retried attempt resumed from epoch {resumed_from} of {EPOCHS}")
    assert 0 < resumed_from < EPOCHS
    client, _, children = mlflow_runs(uri, cfg.name)
    run = children[0]
    assert run.data.tags["sweep.resumed_from_epoch"] == str(resumed_from)
    # nothing duplicated: one value per epoch in both stores
    assert sorted(trial.intermediate_values) == list(range(1, EPOCHS + 1))
    for key in ("val_accuracy", "train_loss", "scheduled_lr"):
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == list(range(1, EPOCHS + 1))

    # the same trial, never stopped, in this process
    final: list[checkpoints.Checkpoint] = []
    uninterrupted = run_trial(
        sample_trial(optuna.trial.FixedTrial(trial.params), "momentum", cfg), digits, save=final.append
    )
    for key, value in uninterrupted.metrics.items():
        if key not in TIMING:
            assert trial.user_attrs[f"final_{key}"] == pytest.approx(value, abs=1e-6), key
            assert run.data.metrics[f"final_{key}"] == pytest.approx(value, abs=1e-6), key
    assert trial.value == pytest.approx(uninterrupted.value, abs=1e-6)
    for epoch, value in trial.intermediate_values.items():
        assert value == pytest.approx(uninterrupted.history[epoch - 1].val_accuracy, abs=1e-6)
    stored = checkpoints.load_latest(uri, run.info.run_id)  # kept: keep_checkpoints=true
    assert stored.epoch == EPOCHS and checkpoints.stored_epochs(uri, run.info.run_id) == [EPOCHS]
    _same_weights(stored.model, final[-1].model)


# ---- cleanup ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_only_each_optimizers_best_keeps_its_checkpoint(ray_address, sweep_overrides):
    """keep_checkpoints=true keeps every finished trial's last one; resumed with false, the
    driver's pass leaves only each optimizer's best trial's."""
    overrides = sweep_overrides + ["name=tidy", "optimizers=[sgd,adam]", "trials=3", "pruner=none", "workers=2"]
    cfg = load_config("quickstart", overrides + ["keep_checkpoints=true"], mode="sweep")
    run_sweep(cfg)
    sweep_dir = sweep_dir_of(cfg)
    storage_url, uri = default_storage(sweep_dir), default_tracking_uri(sweep_dir)

    def kept() -> dict[str, dict[int, list[int]]]:
        return {
            opt: {t.number: checkpoints.stored_epochs(uri, t.user_attrs["mlflow_run_id"]) for t in study.trials}
            for opt, study in studies(cfg, storage_url).items()
        }

    every = kept()
    for opt, study in studies(cfg, storage_url).items():
        for t in study.trials:  # each finished trial: its last reported epoch, and only that one
            assert every[opt][t.number] == ([max(t.intermediate_values)] if t.intermediate_values else []), (opt, t)

    run_sweep(load_config("quickstart", overrides + ["keep_checkpoints=false"], mode="sweep"))  # a resume
    after = kept()
    for opt, study in studies(cfg, storage_url).items():
        best = Tally.of(0, filter(None, map(outcome_of, study.trials))).best_number  # diverged is not best
        assert after[opt][best] == every[opt][best] != [], opt
        assert not any(epochs for number, epochs in after[opt].items() if number != best), after


def test_without_a_tracking_server_artifacts_go_to_the_sweep_directory():
    """Checkpoints of a sweep tracked in a database (sqlite or PostgreSQL) live in its directory,
    never in MLflow's fallback ./mlruns under whatever folder the driver runs in."""
    from sweep.stores.sweepdir import Stores

    assert Stores("journal:///s/optuna.journal", "sqlite:///s/mlflow.db").local_tracking
    assert Stores("journal:///s/optuna.journal", "postgresql://me@db/mlflow").local_tracking
    assert not Stores("postgresql://me@db/optuna", "http://mlflow:5000").local_tracking


def test_a_detached_checkpoint_is_not_changed_by_training_on(digits):
    """The saver writes in the background while the next epoch trains: what it writes is a copy."""
    import torch

    saved = []
    run_trial(TrialConfig(optimizer="momentum", optimizer_params={"lr": 0.05}, epochs=1), digits, save=saved.append)
    live = saved[0]
    copy = live.detached()
    before = {k: v.clone() for k, v in copy.model.items()}
    momentum_before = [s["momentum_buffer"].clone() for s in copy.optimizer["state"].values()]
    assert len(momentum_before) == len(before) > 0
    for tensor in live.model.values():
        tensor.add_(1.0)  # what the next epoch's steps do to the live tensors
    for state in live.optimizer["state"].values():
        state["momentum_buffer"].mul_(0.0)
    assert all(torch.equal(copy.model[k], before[k]) for k in before)
    assert all(torch.equal(s["momentum_buffer"], b) for s, b in zip(copy.optimizer["state"].values(), momentum_before))
    assert copy.history == live.history and copy.epoch == live.epoch
