"""The sweep driver: one Optuna study per optimizer, trials on Ray workers, MLflow for every trial.

Flow: config -> studies (source of truth) -> ask -> trial on a Ray worker -> per-epoch reports to
Optuna (pruning) and MLflow -> the worker tells the study. The driver only asks, keeps ``workers``
trials in flight, and recovers after a crash: trials left RUNNING by a dead driver are failed as
``interrupted`` and enqueued again with the same parameters, each with its own MLflow run.
"""
from __future__ import annotations

import os
import socket
import sys
import uuid
from pathlib import Path
from typing import Any

import yaml
from optuna.trial import TrialState

from sweep import preflight, report, tracking
from sweep.config import ConfigError, load_config
from sweep.datasets import DatasetUnavailable, load_dataset
from sweep.lock import SweepLock, is_locked
from sweep.progress import OptimizerProgress, Progress
from sweep.search import chosen_hyperparameters, run_params, sample_trial
from sweep.studies import INTERRUPTED, default_storage, is_finished, open_study
from sweep.worker import TrialTask, execute

# Keys that define what a sweep measures: changing them on resume would mix two experiments.
FROZEN_KEYS = ("dataset", "model", "epochs", "batch_size", "val_fraction", "seed", "l1", "optimizer",
               "schedule", "schedules", "search_effective_lr", "sampler", "pruner", "divergence_factor",
               "bf16", "storage", "tracking_uri")
CONFIG_FILE, STATE_FILE, ID_FILE = "sweep.yaml", "state", "id"


def sweep_dir_of(cfg: dict[str, Any]) -> Path:
    return (Path(cfg["output_dir"]) / cfg["name"]).resolve()


def with_locations(cfg: dict[str, Any], sweep_dir: Path) -> dict[str, Any]:
    """Stores left unset live in the sweep directory (so a copied or moved sweep takes them along)."""
    cfg = dict(cfg)
    cfg["storage"] = cfg["storage"] or default_storage(sweep_dir)
    cfg["tracking_uri"] = cfg["tracking_uri"] or tracking.default_tracking_uri(sweep_dir)
    return cfg


def check_resumable(cfg: dict[str, Any], sweep_dir: Path) -> dict[str, Any]:
    """An existing sweep's saved config must agree on every key in FROZEN_KEYS, and keep its optimizers."""
    saved_path = sweep_dir / CONFIG_FILE
    if not saved_path.exists():
        return cfg
    saved = yaml.safe_load(saved_path.read_text())
    for key in FROZEN_KEYS:
        if key in ("storage", "tracking_uri") and cfg[key] is None:
            cfg[key] = saved.get(key)
        elif cfg[key] != saved.get(key):
            raise ConfigError(key, f"sweep {cfg['name']!r} exists with {key}={saved.get(key)!r}; "
                                   f"resume with that value or pick a new name=")
    dropped = [opt for opt in saved["optimizers"] if opt not in cfg["optimizers"]]
    if dropped:
        raise ConfigError("optimizers", f"sweep {cfg['name']!r} already has studies for {', '.join(dropped)}; "
                                        "keep them in optimizers= (you may add more)")
    return cfg


def run_sweep(cfg: dict[str, Any]) -> int:
    """Check everything that can be wrong before writing anything; then drive the sweep."""
    sweep_dir = sweep_dir_of(cfg)
    try:
        if is_locked(sweep_dir):
            raise ConfigError("name", f"sweep {cfg['name']!r} is being run by another driver "
                                      f"({report.read_state(sweep_dir)}); wait for it or stop it")
        cfg = check_resumable(dict(cfg), sweep_dir)
        sweep_id = (sweep_dir / ID_FILE).read_text().strip() if (sweep_dir / ID_FILE).exists() else uuid.uuid4().hex
        located = with_locations(cfg, sweep_dir)
        preflight.check_stores(located)
        preflight.check_same_sweep(located, sweep_id)
        preflight.warn_local_stores_on_cluster(located)
        data = load_dataset(cfg["dataset"], cfg["data_dir"], cfg["download"], cfg["val_fraction"], seed=cfg["seed"])
        init_ray(cfg)
        preflight.check_resources(cfg)
    except ConfigError as exc:
        print(f"sweep: error: {exc}", file=sys.stderr)
        return 2
    except DatasetUnavailable as exc:
        print(f"sweep: error: {exc.key}: {exc}", file=sys.stderr)
        return 2
    sweep_dir.mkdir(parents=True, exist_ok=True)
    lock = SweepLock(sweep_dir)
    if not lock.acquire():
        print(f"sweep: error: name: sweep {cfg['name']!r} was just started by another driver", file=sys.stderr)
        return 2
    try:
        (sweep_dir / CONFIG_FILE).write_text(yaml.safe_dump({**cfg, "output_dir": str(sweep_dir.parent)},
                                                            sort_keys=True))
        (sweep_dir / ID_FILE).write_text(sweep_id + "\n")
        report.write_state(sweep_dir, f"running {socket.gethostname()}:{os.getpid()}")
        rows = Driver(located, sweep_dir, data, sweep_id).run()
    except KeyboardInterrupt:
        report.write_state(sweep_dir, "interrupted")
        print(f"\ninterrupted; continue with: sweep resume {cfg['name']} --output-dir {sweep_dir.parent}")
        return 130
    except Exception as exc:  # a store went away mid-sweep: finished trials are safe, the rest resumes
        report.write_state(sweep_dir, "interrupted")
        print(f"sweep: error: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}\n"
              f"finished trials are kept; continue with: sweep resume {cfg['name']} --output-dir {sweep_dir.parent}",
              file=sys.stderr)
        return 1
    finally:
        lock.release()
    report.write_state(sweep_dir, "finished")
    print(report.markdown_table(rows))
    print(f"\nresults: {sweep_dir}  (summary.json, comparison.csv, comparison.md)\n"
          f"MLflow:  sweep ui {cfg['name']} --output-dir {sweep_dir.parent}")
    return 0


def resume_sweep(name: str, overrides: list[str], output_dir: str) -> int:
    """Reload the saved config; the sweep directory is where it is now (it may have been moved)."""
    saved = Path(output_dir) / name / CONFIG_FILE
    if not saved.exists():
        raise ConfigError("name", f"no sweep {name!r} under {output_dir} (see `sweep ls --output-dir ...`)")
    return run_sweep(load_config(str(saved), [*overrides, f"output_dir={Path(output_dir).resolve()}"], mode="sweep"))


def init_ray(cfg: dict[str, Any]) -> None:
    import ray

    if ray.is_initialized():
        return
    address = cfg["ray_address"]
    if address and address != "local":
        import models
        import optim
        import sweep

        ray.init(address=address, log_to_driver=False,
                 runtime_env={"py_modules": [sweep, models, optim]})
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)


class Driver:
    def __init__(self, cfg: dict[str, Any], sweep_dir: Path, data, sweep_id: str):
        self.cfg, self.sweep_dir, self.data = cfg, sweep_dir, data
        local_tracking = cfg["tracking_uri"].startswith("sqlite:")
        self.tracker = tracking.SweepTracker(cfg["tracking_uri"], cfg["name"],
                                             sweep_dir / "artifacts" if local_tracking else None, sweep_id)
        fixed = {k: cfg[k] for k in ("dataset", "model", "epochs", "batch_size", "sampler", "pruner", "trials", "seed")}
        self.studies, self.parents = {}, {}
        for opt in cfg["optimizers"]:
            study = open_study(cfg, cfg["storage"], opt, sweep_id)
            self.parents[opt] = self.tracker.parent_run(opt, fixed)
            study.set_user_attr("mlflow_run_id", self.parents[opt])
            self.studies[opt] = study

    def recover(self, opt: str) -> None:
        """Repair what a dead driver left: fail its RUNNING trials (study first, then their runs, as
        everywhere) and queue each interrupted trial again once. Every step can be repeated, and
        ``close_finished_runs`` closes a run this misses, so dying here is safe too."""
        study = self.studies[opt]
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            run_id = (t.user_attrs.get("mlflow_run_id") or self.tracker.find_trial_run(opt, t.number)
                      or self.tracker.trial_run(self.parents[opt], opt, t.number, t.params))
            study._storage.set_trial_user_attr(t._trial_id, "fail_reason", INTERRUPTED)
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            tracking.close_run_from_trial(self.tracker.uri, run_id, study._storage.get_trial(t._trial_id))
            print(f"[{opt:>9}] trial {t.number} was interrupted: marked FAIL")
        trials = study.get_trials(deepcopy=False)
        retried = {t.user_attrs.get("retry_of") for t in trials}
        room = self.cfg["trials"] - sum(is_finished(t) for t in trials) - sum(t.state == TrialState.WAITING
                                                                              for t in trials)
        for t in trials:
            if room > 0 and t.state == TrialState.FAIL and t.user_attrs.get("fail_reason") == INTERRUPTED \
                    and t.number not in retried:
                study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
                room -= 1
                print(f"[{opt:>9}] trial {t.number} queued again with the same parameters")

    def close_finished_runs(self) -> None:
        """Close trial runs left RUNNING although Optuna has the trial's outcome (a process died
        between the two writes); Optuna is the source of truth."""
        for (opt, number), run_id in self.tracker.running_trial_runs().items():
            study = self.studies.get(opt)
            if study is None:
                continue
            trial = study._storage.get_trial(
                study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number))
            if trial.state.is_finished():
                tracking.close_run_from_trial(self.tracker.uri, run_id, trial)

    def run(self) -> list[dict[str, Any]]:
        import ray

        cfg = self.cfg
        for opt in cfg["optimizers"]:
            self.recover(opt)
        self.close_finished_runs()
        init_ray(cfg)
        data_ref = ray.put(self.data)  # once per sweep; Ray ships it once per node
        remote = ray.remote(execute).options(num_cpus=cfg["num_cpus"], num_gpus=cfg["num_gpus"],
                                            max_retries=cfg["max_retries"])
        rows = {}
        for opt, study in self.studies.items():
            trials = study.get_trials(deepcopy=False)
            row = OptimizerProgress(budget=cfg["trials"])
            for t in trials:
                if is_finished(t):
                    state = t.state.name
                    row.complete += state == "COMPLETE"
                    row.pruned += state == "PRUNED"
                    row.failed += state == "FAIL"
                    if t.state != TrialState.FAIL and t.value is not None:
                        row.best = t.value if row.best is None else max(row.best, t.value)
            rows[opt] = row
        in_flight: dict[Any, tuple[str, int, str]] = {}
        with Progress(rows) as progress:
            while True:
                while len(in_flight) < cfg["workers"]:
                    candidates = [o for o, r in rows.items() if r.done + r.running < r.budget]
                    if not candidates:
                        break
                    opt = min(candidates, key=lambda o: rows[o].done + rows[o].running)
                    ref, number, run_id = self.submit(opt, remote, data_ref)
                    in_flight[ref] = (opt, number, run_id)
                    progress.started(opt)
                if not in_flight:
                    break
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                for ref in ready:
                    opt, number, run_id = in_flight.pop(ref)
                    out = self.collect(ref, opt, number, run_id)
                    note = out["status"] if out["status"] in ("diverged", "failed") else ""
                    progress.finished(opt, number, out["state"], out.get("value"), note)
        self.close_finished_runs()
        return report.write(cfg, self.sweep_dir, self.studies, self.tracker, self.parents)

    def submit(self, opt: str, remote, data_ref):
        study = self.studies[opt]
        trial = study.ask()
        tc = sample_trial(trial, opt, self.cfg)
        run_id = self.tracker.trial_run(self.parents[opt], opt, trial.number, run_params(tc, trial.params),
                                        retry_of=trial.user_attrs.get("retry_of"))
        trial.set_user_attr("mlflow_run_id", run_id)
        trial.set_user_attr("hyperparameters", chosen_hyperparameters(tc))
        task = TrialTask(self.cfg["storage"], study.study_name, trial._trial_id, trial.number,
                         self.cfg["tracking_uri"], run_id, self.cfg["pruner"], tc,
                         threads=max(1, int(self.cfg["num_cpus"])))
        return remote.remote(task, data_ref), trial.number, run_id

    def collect(self, ref, opt: str, number: int, run_id: str) -> dict[str, Any]:
        """The worker's outcome; a worker that died (after Ray's retries) or raised becomes FAIL."""
        import ray

        try:
            return ray.get(ref)
        except ray.exceptions.RayError as exc:
            reason = f"worker error: {type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}"
            study = self.studies[opt]
            trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
            if study._storage.get_trial(trial_id).state == TrialState.RUNNING:
                study._storage.set_trial_user_attr(trial_id, "fail_reason", reason)
                study._storage.set_trial_user_attr(trial_id, "status", "failed")
                study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
            tracking.close_run_from_trial(self.tracker.uri, run_id, study._storage.get_trial(trial_id))
            return {"number": number, "status": "failed", "state": "FAIL", "value": None, "reason": reason}
