"""Whether a sweep's Optuna studies and MLflow runs agree, read-only (``sweep check``).

Optuna is the source of truth: each trial that counts against the budget has exactly one MLflow
run (orphans set aside by recovery left out) whose status is the one its outcome maps to, no
trial's run is left RUNNING once the trial is finished, and each re-evaluation (configuration,
seed) counts once. What disagrees is a ``Damage`` naming the store and the trial.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sweep.core.keys import Attr, Tag
from sweep.core.outcome import Tally
from sweep.stores import reeval, tracking
from sweep.stores.damage import Damage
from sweep.stores.studies import SweepStudy, outcome_of, study_name

RUNNING = "RUNNING"
HAND = "nothing repairs this by itself: restore the stores from a copy"


@dataclass(frozen=True)
class Where:
    """A sweep's stores as ``Damage`` names them, and what to read in them."""

    name: str
    optimizers: tuple[str, ...]
    sweep_id: str | None
    storage: str  # Optuna storage URL
    tracking_uri: str
    optuna_file: Path  # how a Damage names each store: its file in the sweep dir, or its URL without password
    mlflow_file: Path
    repair: str  # the command that repairs the sweep (``SweepDir.repair_command``)
    finished: bool = False  # the sweep says it finished: then no run at all may be RUNNING
    checkpoint_every: int = 0  # the config's: which epochs a trial checkpoints
    epochs: int = 0


@dataclass
class Agreement:
    """What ``compare`` found: damage, notes (an interrupted sweep, which ``sweep resume``
    finishes, is not damage), and how much it read."""

    damage: list[Damage] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    trials: int = 0
    runs: int = 0
    to_close: list[tuple[str, str, int, str]] = field(default_factory=list)  # (role, optimizer, number, run id)
    to_end: list[tuple[str, str]] = field(default_factory=list)  # (what, run id) of a finished sweep's open runs
    experiment_id: str | None = None
    run_ids: set[str] = field(default_factory=set)  # every run of the experiment (a model's source run is one)
    # runs whose checkpoint the sweep keeps: (what, run id)
    keeps_checkpoint: list[tuple[str, str]] = field(default_factory=list)  # each optimizer's best trial's (a note)
    model_runs: list[tuple[str, str]] = field(default_factory=list)  # each current model's run (damage)


def compare(where: Where) -> Agreement:
    """Read every study of the sweep and its experiment's runs, and say where they disagree."""
    found = Agreement()
    experiment = tracking.client(where.tracking_uri).get_experiment_by_name(where.name)
    runs = []
    if experiment is not None:
        owner = experiment.tags.get(Tag.SWEEP_ID)
        if where.sweep_id and owner and owner != where.sweep_id:
            found.damage.append(
                Damage(
                    where.mlflow_file,
                    f"experiment {where.name!r} belongs to sweep id {owner}, not {where.sweep_id}",
                    "another sweep's record: resume this one from its own folder",
                )
            )
        runs = tracking.client(where.tracking_uri).search_runs([experiment.experiment_id], max_results=50_000)
        found.experiment_id, found.run_ids = experiment.experiment_id, {r.info.run_id for r in runs}
        _sweep_level_runs(where, found, runs)
    for opt in where.optimizers:
        for role, is_reeval in ((tracking.TRIAL_ROLE, False), (tracking.REEVAL_ROLE, True)):
            study = SweepStudy.find(where.storage, study_name(where.name, opt, reeval=is_reeval))
            mine = [
                r
                for r in runs
                if r.data.tags.get(Tag.ROLE) == role
                and r.data.tags.get(Tag.OPTIMIZER) == opt
                and Tag.ORPHANED not in r.data.tags
            ]
            _compare_study(where, found, opt, role, study, mine)
    if experiment is None and found.trials:
        found.damage.append(
            Damage(
                where.mlflow_file,
                f"has no experiment {where.name!r} for the {found.trials} trials Optuna holds",
                HAND,
            )
        )
    return found


def _sweep_level_runs(where: Where, found: Agreement, runs: list) -> None:
    """The parent and report runs: closed once the sweep finished; and the run of each model a
    parent names, whose checkpoint the sweep keeps (the model was built from it)."""
    for r in runs:
        role = r.data.tags.get(Tag.ROLE)
        if role in (tracking.PARENT_ROLE, tracking.SWEEP_ROLE) and where.finished and r.info.status == RUNNING:
            opt = r.data.tags.get(Tag.OPTIMIZER)
            what = f"{opt}'s parent run" if role == tracking.PARENT_ROLE else "the report run"
            found.damage.append(
                Damage(
                    where.mlflow_file,
                    f"{what} {r.info.run_id} is left RUNNING though the sweep finished",
                    f"run {where.repair} (it closes it)",
                )
            )
            found.to_end.append((what, r.info.run_id))
    # the models the parents name now (a resumed sweep may have logged another since, from a run
    # whose checkpoint was then tidied away)
    current = {r.data.tags.get(Tag.MODEL_URI) for r in runs if r.data.tags.get(Tag.ROLE) == tracking.PARENT_ROLE}
    for r in runs:
        uri = r.data.tags.get(Tag.MODEL_URI)
        if r.data.tags.get(Tag.ROLE) == tracking.REEVAL_ROLE and uri and uri in current:
            found.model_runs.append((f"the run of {uri}", r.info.run_id))


def _compare_study(where: Where, found: Agreement, opt: str, role: str, study: SweepStudy | None, runs: list) -> None:
    what = "re-evaluation" if role == tracking.REEVAL_ROLE else "trial"
    by_number: dict[int, list] = {}
    for r in runs:
        by_number.setdefault(int(r.data.tags[Tag.TRIAL]), []).append(r)
    found.runs += len(runs)
    trials = study.trials() if study is not None else []
    found.trials += len(trials)
    if study is not None:
        owner = study.study.user_attrs.get(Attr.SWEEP_ID)
        if where.sweep_id and owner and owner != where.sweep_id:
            found.damage.append(
                Damage(
                    where.optuna_file, f"study {study.name!r} belongs to sweep id {owner}, not {where.sweep_id}", HAND
                )
            )
    numbers = {t.number for t in trials}
    for number in sorted(set(by_number) - numbers):
        found.damage.append(
            Damage(
                where.mlflow_file,
                f"{opt} {what} {number} has an MLflow run but no Optuna record (lost from the Optuna storage)",
                "`sweep resume` sets the run aside and runs the trial again",
            )
        )
    for t in trials:
        _compare_trial(where, found, opt, role, what, t, by_number.get(t.number, []))
    if role == tracking.TRIAL_ROLE:
        _best_keeps_checkpoint(where, found, opt, trials)
    if role == tracking.REEVAL_ROLE:
        counted = Counter(
            key for t in trials if (key := reeval.key_of(t)) and (o := outcome_of(t)) and o.record.uses_budget
        )
        for (source, seed), n in sorted(counted.items()):
            if n > 1:
                found.damage.append(
                    Damage(
                        where.optuna_file,
                        f"{opt}: trial {source}'s re-evaluation with seed {seed} counts {n} times",
                        HAND,
                    )
                )


def _best_keeps_checkpoint(where: Where, found: Agreement, opt: str, trials: list) -> None:
    """The search's best trial keeps its checkpoint (``checkpoints.Retention``), if it wrote one:
    trials checkpoint every ``checkpoint_every`` epochs and after their last."""
    finished = {o.number: o for t in trials if (o := outcome_of(t)) is not None}
    best = Tally.of(0, finished.values()).best_number
    if best is None or not where.checkpoint_every:
        return
    ran = finished[best].metrics.get("epochs")
    run_id = trials[best].user_attrs.get(Attr.MLFLOW_RUN) if best < len(trials) else None
    if run_id and ran is not None and (ran >= where.checkpoint_every or ran >= where.epochs):
        found.keeps_checkpoint.append((f"{opt}'s best trial {best}", run_id))


def _compare_trial(where: Where, found: Agreement, opt: str, role: str, what: str, trial, runs: list) -> None:
    """One trial against its runs."""
    label = f"{opt} {what} {trial.number}"
    outcome = outcome_of(trial)
    if len(runs) > 1:
        ids = ", ".join(r.info.run_id for r in runs)
        found.damage.append(
            Damage(where.mlflow_file, f"{label} has {len(runs)} runs ({ids})", "tell them apart in the MLflow UI"),
        )
    if outcome is None:
        if trial.state.name == RUNNING:
            found.notes.append(f"{label} was interrupted (RUNNING in Optuna): `sweep resume` runs it again")
        return
    if not runs:
        if outcome.record.uses_budget:
            found.damage.append(Damage(where.mlflow_file, f"{label} ({outcome.status.value}) has no MLflow run", HAND))
        return
    run = runs[0]
    status, expected = run.info.status, outcome.record.mlflow_status
    if status == RUNNING:
        found.damage.append(
            Damage(
                where.mlflow_file,
                f"{label}'s run {run.info.run_id} is left RUNNING though Optuna finished it ({outcome.status.value})",
                f"run {where.repair} (it closes it from Optuna's record)",
            )
        )
        found.to_close.append((role, opt, trial.number, run.info.run_id))
    elif status != expected:
        found.damage.append(
            Damage(
                where.mlflow_file,
                f"{label}'s run {run.info.run_id} is {status}, but Optuna's outcome "
                f"({outcome.status.value}) is {expected}",
                HAND,
            )
        )
