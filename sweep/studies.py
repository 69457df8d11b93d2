"""Optuna side of a sweep: storage, sampler and pruner by name, and one study per optimizer.

The study is the single source of truth for trial state; everything else (MLflow, the summary)
is derived from it.
"""
from __future__ import annotations

import functools
import sqlite3
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

DIRECTION = "maximize"  # validation accuracy
INTERRUPTED = "interrupted"
optuna.logging.set_verbosity(optuna.logging.WARNING)


def default_storage(sweep_dir: Path) -> str:
    """The embedded default: an append-only journal file (see bench/storage_contention.py)."""
    return f"journal:///{(sweep_dir / 'optuna.journal').resolve()}"


@functools.lru_cache(maxsize=8)
def open_storage(url: str) -> optuna.storages.BaseStorage:
    """One storage object per process and URL (workers reuse it across trials)."""
    if url.startswith("journal:///"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(url[len("journal://"):]))
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        if path and not Path(path).exists():
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(path) as conn:  # WAL lets readers and one writer work concurrently
            conn.execute("PRAGMA journal_mode=WAL")
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})


# Samplers and pruners by config name, as data. Every optimizer's study gets the same sampler with
# the same seed: a fair comparison. TPE's constant liar keeps parallel workers from all sampling
# the same point while their trials are running.
SAMPLERS: dict[str, Callable[[int, int], optuna.samplers.BaseSampler]] = {
    "tpe": lambda seed, trials: optuna.samplers.TPESampler(
        seed=seed, constant_liar=True, n_startup_trials=max(2, min(10, trials // 3))),
    "random": lambda seed, trials: optuna.samplers.RandomSampler(seed=seed),
    "qmc": lambda seed, trials: optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False),
    "cmaes": lambda seed, trials: optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False),
    "gp": lambda seed, trials: optuna.samplers.GPSampler(seed=seed),
}

# Each epoch is one step of the pruner's resource (``epochs`` is the most a trial gets).
PRUNERS: dict[str, Callable[[int], optuna.pruners.BasePruner]] = {
    "median": lambda epochs: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
    "asha": lambda epochs: optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
    "hyperband": lambda epochs: optuna.pruners.HyperbandPruner(
        min_resource=1, max_resource=max(1, epochs), reduction_factor=3),
    "none": lambda epochs: optuna.pruners.NopPruner(),
}


def make_sampler(name: str, seed: int, trials: int) -> optuna.samplers.BaseSampler:
    return SAMPLERS[name](seed, trials)


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    return PRUNERS[name](epochs)


def study_name(sweep_name: str, optimizer: str) -> str:
    return f"{sweep_name}/{optimizer}"


def open_study(cfg: dict[str, Any], storage_url: str, optimizer: str, sweep_id: str) -> optuna.Study:
    """Create or load the optimizer's study; its sampler goes on from where the last driver stopped.

    A fresh driver reseeds the sampler with ``seed + trials so far``: the bare seed again would
    replay the draws a resumed sweep already ran. On a new sweep every study starts from the
    same seed. TPE's start-up length is fixed by the first run's budget, so a top-up keeps it.
    """
    study = optuna.create_study(study_name=study_name(cfg["name"], optimizer), storage=open_storage(storage_url),
                                direction=DIRECTION, load_if_exists=True,
                                pruner=make_pruner(cfg["pruner"], cfg["epochs"]))
    for key, value in (("sweep_id", sweep_id), ("sampler_budget", cfg["trials"])):
        if key not in study.user_attrs:
            study.set_user_attr(key, value)
    study.sampler = make_sampler(cfg["sampler"], cfg["seed"] + len(study.get_trials(deepcopy=False)),
                                 study.user_attrs["sampler_budget"])
    return study


def foreign_studies(cfg: dict[str, Any], sweep_id: str) -> list[str]:
    """Studies of this sweep's name in the storage that another sweep (another id) created."""
    prefix = study_name(cfg["name"], "")
    return [summary.study_name for summary in optuna.get_all_study_summaries(open_storage(cfg["storage"]),
                                                                           include_best_trial=False)
            if summary.study_name.startswith(prefix) and summary.user_attrs.get("sweep_id", sweep_id) != sweep_id]


def is_finished(trial: optuna.trial.FrozenTrial) -> bool:
    """Counts against the budget: complete, pruned, or failed for a reason other than interruption."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and trial.user_attrs.get("fail_reason") != INTERRUPTED
