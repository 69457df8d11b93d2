"""A checkpoint that cannot be stored (here the sweep's ``artifacts/`` is a file, so every upload
fails as on a full disk) is said on the driver's terminal while the trial still trains, once per
trial however many epochs fail, and the trial's records keep it (``no_checkpoint`` in Optuna,
``sweep.no_checkpoint`` on its MLflow run). Before, only Ray's worker logs had it."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from sweep.core.config import SWEEP, load_config
from sweep.core.errors import StoreUnavailable
from sweep.execution.launch import run_sweep
from sweep.execution.progress import Progress
from sweep.stores.studies import open_storage, outcome_of, study_name
from sweep.stores.sweepdir import SweepDir
from sweep.stores.waiting import TrackingWatch
from tests.sweep_helpers import default_storage, default_tracking_uri, mlflow_runs, sweep_dir_of

EPOCHS = 4
SAID = "could not store its checkpoint (epoch 1: NotADirectoryError"


@pytest.mark.slow
@pytest.mark.parametrize("pack", [1, 2], ids=["solo", "pack"])
def test_a_checkpoint_that_cannot_be_stored_is_said_once_per_trial_as_it_trains(
    pack, ray_address, sweep_overrides, monkeypatch
):
    cfg = load_config(
        "quickstart",
        sweep_overrides
        + [
            f"name=no-checkpoint-{pack}",
            "optimizers=[sgd]",
            "trials=2",
            f"epochs={EPOCHS}",
            "batch_size=16",  # epochs of a second or more: the driver looks while they train
            "workers=2",
            f"pack={pack}",
            "pruner=none",
        ],
        mode=SWEEP,
    )
    folder = SweepDir.of(cfg.output_dir, cfg.name)
    folder.path.mkdir(parents=True)
    (folder.artifacts).write_text("")  # a file where the runs' artifact folders would go
    storage_url = default_storage(folder.path)
    monkeypatch.setattr(TrackingWatch, "poll_s", 0.3)  # the driver looks every 0.3 s (5 s in a sweep)

    said: list[tuple[int, str, TrialState]] = []  # (trial, line, the trial's state in Optuna then)
    note = Progress.note

    def spy(self, optimizer: str, text: str) -> None:
        if SAID in text:
            number = int(text.split(":")[0].split()[-1])
            study = optuna.load_study(study_name=study_name(cfg.name, "sgd"), storage=open_storage(storage_url))
            said.append((number, text, study.trials[number].state))
        note(self, optimizer, text)

    monkeypatch.setattr(Progress, "note", spy)
    # the report's own artifacts cannot be stored either: the sweep stops there, its trials kept
    with pytest.raises(StoreUnavailable, match="MLflow tracking store unavailable: NotADirectoryError"):
        run_sweep(cfg)

    assert sorted(number for number, _, _ in said) == [0, 1], said  # once per trial, not per epoch
    assert any(state == TrialState.RUNNING for _, _, state in said), said  # said while it trained
    study = optuna.load_study(study_name=study_name(cfg.name, "sgd"), storage=open_storage(storage_url))
    for trial in study.trials:
        recorded = trial.user_attrs["no_checkpoint"]
        assert recorded.startswith("epoch 1: NotADirectoryError") and outcome_of(trial).status.value == "ok"
        assert outcome_of(trial).no_checkpoint == recorded
    _, _, runs = mlflow_runs(default_tracking_uri(sweep_dir_of(cfg)), cfg.name)
    assert sorted(r.data.tags["sweep.no_checkpoint"][:27] for r in runs) == ["epoch 1: NotADirectoryError"] * 2
