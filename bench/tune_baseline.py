"""The product against the same sweep wired by hand with Ray Tune, on the same budget.

(a) product   `run_sweep(load_config("quickstart", OVERRIDES, mode="sweep"))` in this process
              (or, with --product subprocess, `.venv/bin/sweep run quickstart OVERRIDES`), where
              OVERRIDES = optimizers=[...] trials=T epochs=E workers=W schedules=[constant]
              pruner=median|asha output_dir=<tmp> name=...
(b) baseline  what a user would otherwise write: per optimizer, one `ray.tune.Tuner` with
                - `OptunaSearch(space=<define-by-run>, sampler=<the product's TPESampler>)`:
                  the define-by-run space calls the product's own `sweep.execution.search.sample_trial`,
                  so both sides search exactly the same parameters with the same distributions
                  (e.g. sgd: lr log-uniform [1e-3, 1]; momentum: lr and one_minus_momentum
                  log-uniform [0.001, 0.5]; adam: lr log-uniform [1e-5, 0.1] and one_minus_beta1
                  log-uniform [0.01, 0.5]) and the same sampler (TPE, seed 0, constant liar,
                  n_startup_trials = max(2, min(10, T // 3)));
                - `MedianStoppingRule(time_attr="training_iteration", grace_period=2,
                  min_samples_required=2)`: the counterpart of the product's
                  MedianPruner(n_startup_trials=2, n_warmup_steps=1) (--scheduler asha:
                  ASHAScheduler(max_t=E, grace_period=1, reduction_factor=3) against the product's
                  pruner=asha, SuccessiveHalvingPruner(min_resource=1, reduction_factor=3));
                - `MLflowLoggerCallback(tracking_uri="sqlite:///<tmp>/mlflow.db")`;
                - num_samples=T, max_concurrent_trials=W, 1 CPU per trial, Tune's defaults
                  otherwise (reuse_actors=False, CSV/JSON/TensorBoard result loggers);
              the trainable runs the product's `sweep.train.solo.run_trial` on the same TrialConfig
              (rebuilt from the sampled params with `sample_trial(optuna.trial.FixedTrial(...))`)
              and the same dataset object (`tune.with_parameters`), calling `tune.report` once per
              epoch (the last epoch's report also carries the test metrics).

Both sides start Ray the same way (`ray.init(num_cpus=os.cpu_count(), include_dashboard=False,
log_to_driver=False)`, as sweep/execution/launch.py does) and the clock runs from just before `ray.init`
until every trial has finished (the product's time includes its end-of-sweep report). Ray is shut
down between sides; the order of the two sides alternates between repeats.

Measured per side: wall seconds (median of --repeats), trials finished, trials stopped early
(pruned / stopped by the scheduler), trials that ended early on their own (diverged), MLflow runs
and whether every trial has exactly one, metric points per trial run (read back with
MlflowClient.get_metric_history), and MLflow store calls: every outermost public method call on
mlflow's SqlAlchemyStore, counted in the driver and in every Ray worker process (a Ray
worker_process_setup_hook patches the class when it is imported; the local async-logging
bookkeeping methods are left out); against a tracking server each would be one REST request.
Not counted with --product subprocess.

Part of the suite (``python -m bench --only tune_baseline``, or ``--size full``): ``--size`` sets
what the options below leave unset, ``ci`` 2 optimizers (sgd, adam) x 4 trials x 3 epochs with 1
repeat (a few minutes), ``full`` 3 optimizers x 8 trials x 4 epochs with 3 repeats (the README's
table). The headline is the baseline's wall time over the product's.

Usage:  .venv/bin/python bench/tune_baseline.py [--size ci|full] [--json PATH]
            [--optimizers sgd momentum adam] [--trials 8] [--epochs 4] [--workers 2] [--repeats 1]
            [--scheduler median|asha] [--product inprocess|subprocess] [--reuse-actors] [--keep]
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere: import `bench`, `sweep`

import optuna  # noqa: E402
from ray.tune.schedulers import ASHAScheduler, MedianStoppingRule, TrialScheduler  # noqa: E402

from bench.suite import BenchResult, Headline, Size, finish, parser  # noqa: E402
from sweep.core.config import load_config  # noqa: E402
from sweep.core.datasets import load_dataset  # noqa: E402
from sweep.execution.search import sample_trial  # noqa: E402
from sweep.stores.studies import make_sampler, open_storage, study_name  # noqa: E402
from sweep.stores.sweepdir import SweepDir  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.ERROR)
logging.getLogger("mlflow").setLevel(logging.ERROR)
warnings.filterwarnings("ignore")

STORE_MODULE = "mlflow.store.tracking.sqlalchemy_store"
# What --size sets when the option is not given.
SIZES = {
    Size.CI: {"optimizers": ["sgd", "adam"], "trials": 4, "epochs": 3, "workers": 2, "repeats": 1},
    Size.FULL: {"optimizers": ["sgd", "momentum", "adam"], "trials": 8, "epochs": 4, "workers": 2, "repeats": 3},
}
PER_EPOCH = ["train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "epoch_seconds", "images_per_second"]


# ---- counting MLflow store calls in every process ---------------------------------------------


def install_store_counter(state: dict) -> None:
    """Count each outermost public SqlAlchemyStore call: one line in <state['dir']>/<pid>.calls.

    Patches the class now if mlflow's store module is loaded, otherwise right after it is imported
    (so a process that never uses MLflow never imports it). ``state['dir'] = None`` pauses counting.
    """
    import functools
    import importlib.abc
    import importlib.util
    import inspect
    import threading

    def patch(module) -> None:
        cls = module.SqlAlchemyStore
        if getattr(cls, "_bench_counted", False):
            return
        depth = threading.local()

        def wrap(fn):
            @functools.wraps(fn)
            def counted(*args, **kwargs):
                level = getattr(depth, "n", 0)
                if level == 0 and state.get("dir"):
                    with open(os.path.join(state["dir"], f"{os.getpid()}.calls"), "a") as f:
                        f.write(fn.__name__ + "\n")
                depth.n = level + 1
                try:
                    return fn(*args, **kwargs)
                finally:
                    depth.n = level

            return counted

        for name in dir(cls):
            if name.startswith("_"):
                continue
            raw = inspect.getattr_static(cls, name)
            # plain methods only (not static/class methods, properties), and not the async-logging
            # bookkeeping (shut_down_async_logging etc.: local, never a request to a server)
            if inspect.isfunction(raw) and "async" not in name:
                setattr(cls, name, wrap(raw))
        cls._bench_counted = True

    if STORE_MODULE in sys.modules:
        patch(sys.modules[STORE_MODULE])
        return

    class PatchAfterImport(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != STORE_MODULE:
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            exec_module = spec.loader.exec_module

            def exec_and_patch(module):
                exec_module(module)
                patch(module)

            spec.loader.exec_module = exec_and_patch
            return spec

    sys.meta_path.insert(0, PatchAfterImport())


def make_worker_hook(calls_dir: str):
    def count_store_calls():  # Ray's worker_process_setup_hook: runs in every worker process
        install_store_counter({"dir": calls_dir})

    return count_store_calls


DRIVER_COUNTING: dict = {"dir": None}


def read_calls(calls_dir: Path) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    for path in calls_dir.glob("*.calls"):
        counts.update(line.strip() for line in path.read_text().splitlines() if line.strip())
    return counts


def start_ray(calls_dir: Path | None) -> None:
    """As sweep.execution.launch.init_ray does for a local Ray, plus the counting hook."""
    import ray

    kwargs = {}
    if calls_dir is not None:
        kwargs["runtime_env"] = {"worker_process_setup_hook": make_worker_hook(str(calls_dir))}
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, **kwargs)


# ---- (a) the product ----------------------------------------------------------------------------


def overrides(args, output_dir: Path, name: str) -> list[str]:
    return [
        f"optimizers=[{','.join(args.optimizers)}]",
        f"trials={args.trials}",
        f"epochs={args.epochs}",
        f"workers={args.workers}",
        "schedules=[constant]",
        f"pruner={args.scheduler}",
        f"output_dir={output_dir}",
        f"name={name}",
    ]


def run_product(args, tmp: Path, rep: int) -> dict:
    import ray

    from sweep.execution.launch import run_sweep

    name = f"product-{rep}"
    calls_dir = tmp / f"calls-{name}"
    calls_dir.mkdir()
    log = tmp / f"{name}.log"
    cfg = load_config("quickstart", overrides(args, tmp, name), mode="sweep")
    if args.product == "subprocess":
        cmd = [str(Path(sys.executable).parent / "sweep"), "run", "quickstart", *overrides(args, tmp, name)]
        t0 = time.perf_counter()
        with open(log, "w") as out:
            rc = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT).returncode
        wall = time.perf_counter() - t0
        calls = None
    else:
        DRIVER_COUNTING["dir"] = str(calls_dir)
        t0 = time.perf_counter()
        start_ray(calls_dir)
        with open(log, "w") as out, contextlib.redirect_stdout(out):
            run_sweep(cfg)  # raises if the sweep does not finish
            rc = 0
        wall = time.perf_counter() - t0
        DRIVER_COUNTING["dir"] = None
        calls = read_calls(calls_dir)
        ray.shutdown()
    if rc != 0:
        raise RuntimeError(f"product sweep exited with {rc}; see {log}:\n" + log.read_text()[-3000:])
    return {"wall": wall, "calls": calls, **check_product(tmp / name, cfg)}


def check_product(sweep_dir: Path, cfg) -> dict:
    import yaml
    from mlflow import MlflowClient

    saved = yaml.safe_load((sweep_dir / "sweep.yaml").read_text())
    stores = SweepDir(sweep_dir).stores(saved.get("storage"), saved.get("tracking_uri"))  # unset: in the sweep dir
    storage = open_storage(stores.storage)
    client = MlflowClient(stores.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.name)
    runs = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`sweep.role` = 'trial'", max_results=10000
    )
    by_trial = collections.Counter(
        (r.data.tags["sweep.optimizer"], int(r.data.tags["optuna.trial_number"])) for r in runs
    )
    run_ids = {r.info.run_id for r in runs}
    out = {"trials": 0, "finished": 0, "stopped": 0, "own_end": 0, "one_run_each": True, "best": {}, "failed": 0}
    for opt in cfg.optimizers:
        study = optuna.load_study(study_name=study_name(cfg.name, opt), storage=storage)
        trials = study.get_trials(deepcopy=False)
        out["trials"] += len(trials)
        for t in trials:
            out["finished"] += t.state.is_finished()
            out["stopped"] += t.state.name == "PRUNED"
            out["own_end"] += t.user_attrs.get("status") == "diverged"
            out["failed"] += t.state.name == "FAIL"
            if by_trial[(opt, t.number)] != 1 or t.user_attrs.get("mlflow_run_id") not in run_ids:
                out["one_run_each"] = False
        complete = [t.value for t in trials if t.state.name == "COMPLETE"]
        out["best"][opt] = max(complete, default=None)
    if len(runs) != out["trials"]:
        out["one_run_each"] = False
    out.update(mlflow_points(client, runs))
    out["runs"] = len(runs)
    return out


# ---- (b) the baseline: Ray Tune + OptunaSearch + MLflowLoggerCallback ---------------------------


class _CountStops:
    """Records the scheduler's STOP decisions, and its PAUSE decisions (MedianStoppingRule yields a
    trial that lacks comparison samples while another trial is pending; a function trainable
    without checkpoints then starts again from epoch 0 when it is resumed)."""

    def on_trial_result(self, tune_controller, trial, result):
        decision = super().on_trial_result(tune_controller, trial, result)
        at_max_t = result.get(self._time_attr, 0) >= getattr(self, "_max_t", float("inf"))
        if decision == TrialScheduler.STOP and not at_max_t:  # ASHA also "stops" trials that reach max_t
            self.stopped = getattr(self, "stopped", set()) | {trial.trial_id}
        elif decision == TrialScheduler.PAUSE:
            self.paused = getattr(self, "paused", 0) + 1
        return decision


class CountingMedianStoppingRule(_CountStops, MedianStoppingRule):
    pass


class CountingASHA(_CountStops, ASHAScheduler):
    pass


def define_space(ot_trial, optimizer: str, cfg):
    """Define-by-run space for OptunaSearch: exactly the product's sampling (sweep.execution.search)."""
    sample_trial(ot_trial, optimizer, cfg)
    return None  # the config is what was sampled: Optuna's params, as in the product's studies


def train_fn(config: dict, data=None, cfg=None, optimizer=None, threads=1):
    """The Tune trainable: the product's run_trial, tune.report once per epoch."""
    import torch
    from ray import tune

    from sweep.train.solo import run_trial

    torch.set_num_threads(threads)
    tc = sample_trial(optuna.trial.FixedTrial(dict(config)), optimizer, cfg)
    last: dict = {}
    reported = []

    def reporter(m):
        metrics = asdict(m)
        if m.epoch == tc.epochs:  # hold the last epoch: it is reported with the test metrics
            last.update(metrics)
            return
        tune.report(metrics)
        reported.append(m.epoch)

    result = run_trial(tc, data, reporter)
    if last:
        tune.report({**last, **{f"final_{k}": v for k, v in result.metrics.items()}})
    elif not reported:
        # Diverged (or failed) before its first report: Tune's strict metric check would end the
        # whole Tuner.fit() with a TuneError. Report what the product records: the accuracy reached.
        tune.report({"val_accuracy": result.metrics.get("val_accuracy", 0.0), "status": result.status.value})


def run_baseline(args, tmp: Path, rep: int) -> dict:
    import ray
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.search.optuna import OptunaSearch

    name = f"baseline-{rep}"
    calls_dir = tmp / f"calls-{name}"
    calls_dir.mkdir()
    uri = f"sqlite:///{tmp / name / 'mlflow.db'}"
    (tmp / name).mkdir()
    cfg = load_config("quickstart", overrides(args, tmp, name), mode="sweep")
    grids, schedulers, searchers = {}, {}, {}

    DRIVER_COUNTING["dir"] = str(calls_dir)
    t0 = time.perf_counter()
    start_ray(calls_dir)
    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.download, cfg.val_fraction, seed=cfg.seed)
    for opt in cfg.optimizers:
        if args.scheduler == "median":
            scheduler = CountingMedianStoppingRule(
                time_attr="training_iteration", grace_period=2, min_samples_required=2
            )
        else:
            scheduler = CountingASHA(
                time_attr="training_iteration", max_t=cfg.epochs, grace_period=1, reduction_factor=3
            )
        searcher = OptunaSearch(
            space=functools.partial(define_space, optimizer=opt, cfg=cfg),
            metric="val_accuracy",
            mode="max",  # a define-by-run space needs them here
            sampler=make_sampler(cfg.sampler, cfg.seed, cfg.trials),
        )
        trainable = tune.with_resources(
            tune.with_parameters(train_fn, data=data, cfg=cfg, optimizer=opt, threads=max(1, int(cfg.num_cpus))),
            {"cpu": cfg.num_cpus},
        )
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                metric="val_accuracy",
                mode="max",
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=cfg.trials,
                max_concurrent_trials=cfg.workers,
                reuse_actors=args.reuse_actors,
            ),
            run_config=tune.RunConfig(
                name=opt,
                storage_path=str(tmp / name / "ray_results"),
                verbose=0,
                callbacks=[MLflowLoggerCallback(tracking_uri=uri, experiment_name=name, tags={"optimizer": opt})],
            ),
        )
        with open(tmp / f"{name}.log", "a") as out, contextlib.redirect_stdout(out):
            grids[opt] = tuner.fit()
        schedulers[opt], searchers[opt] = scheduler, searcher
    wall = time.perf_counter() - t0
    DRIVER_COUNTING["dir"] = None
    calls = read_calls(calls_dir)
    ray.shutdown()
    return {"wall": wall, "calls": calls, **check_baseline(grids, schedulers, searchers, uri, name, cfg)}


def check_baseline(grids, schedulers, searchers, uri: str, name: str, cfg) -> dict:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=10000)
    names = [r.data.tags.get("trial_name", "") for r in runs]
    out = {
        "trials": 0,
        "finished": 0,
        "stopped": 0,
        "own_end": 0,
        "one_run_each": True,
        "best": {},
        "failed": 0,
        "optuna_states": collections.Counter(),
        "paused": 0,
    }
    for opt, grid in grids.items():
        stopped = getattr(schedulers[opt], "stopped", set())
        out["paused"] += getattr(schedulers[opt], "paused", 0)
        out["trials"] += len(grid)
        out["failed"] += len(grid.errors)
        best = None
        for result in grid:
            if result.error is not None:
                continue
            out["finished"] += 1
            trial_id = result.metrics["trial_id"]
            ran = result.metrics.get("training_iteration", 0)
            if trial_id in stopped:
                out["stopped"] += 1
            elif ran < cfg.epochs:
                out["own_end"] += 1  # diverged: the trainable returned before the last epoch
            if sum(n.endswith(f"_{trial_id}") for n in names) != 1:
                out["one_run_each"] = False
            value = result.metrics.get("val_accuracy")
            if trial_id not in stopped and value is not None:
                best = value if best is None else max(best, value)
        out["best"][opt] = best
        out["optuna_states"].update(t.state.name for t in searchers[opt]._ot_study.get_trials(deepcopy=False))
    if len(runs) != out["trials"]:
        out["one_run_each"] = False
    out.update(mlflow_points(client, runs))
    out["runs"] = len(runs)
    return out


# ---- shared read-back -----------------------------------------------------------------------------


def mlflow_points(client, runs) -> dict:
    """Metric points stored per trial run, read back with get_metric_history (not timed, not counted)."""
    points, keys, params, epochs, epoch_seconds, repeated = [], [], [], 0, 0.0, 0
    for run in runs:
        n = 0
        for key in run.data.metrics:
            history = client.get_metric_history(run.info.run_id, key)
            n += len(history)
            repeated += len(history) - len({m.step for m in history})
            if key == "val_accuracy":
                epochs += len(history)
            if key == "epoch_seconds":
                epoch_seconds += sum(m.value for m in history)
        points.append(n)
        keys.append(len(run.data.metrics))
        params.append(len(run.data.params))
    return {
        "points_mean": statistics.mean(points) if points else 0,
        "points_total": sum(points),
        "keys_mean": statistics.mean(keys) if keys else 0,
        "params_mean": statistics.mean(params) if params else 0,
        "epochs_run": epochs,
        "train_seconds": epoch_seconds,
        "repeated_steps": repeated,
    }


# ---- main -------------------------------------------------------------------------------------------


def fmt_calls(calls: collections.Counter | None) -> str:
    if calls is None:
        return "n/a"
    return f"{sum(calls.values())}"


def main() -> None:
    ap = parser(__doc__.split("\n\n")[0])
    ap.add_argument("--optimizers", nargs="+", default=None)
    ap.add_argument("--trials", type=int, default=None, help="trials per optimizer (T)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per trial (E)")
    ap.add_argument("--workers", type=int, default=None, help="concurrent trials (W)")
    ap.add_argument("--repeats", type=int, default=None, help="repeat both sides, report medians")
    ap.add_argument(
        "--scheduler",
        choices=["median", "asha"],
        default="median",
        help="early stopping: product pruner=median vs MedianStoppingRule, or asha vs ASHAScheduler",
    )
    ap.add_argument(
        "--product",
        choices=["inprocess", "subprocess"],
        default="inprocess",
        help="run the product with run_sweep() here, or as `.venv/bin/sweep run` (calls not counted)",
    )
    ap.add_argument("--reuse-actors", action="store_true", help="baseline: TuneConfig(reuse_actors=True)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    for name, value in SIZES[args.size].items():  # what --size sets where the option was not given
        if getattr(args, name) is None:
            setattr(args, name, value)

    import mlflow
    import ray
    import torch

    print(
        f"ray {ray.__version__}, optuna {optuna.__version__}, mlflow {mlflow.__version__}, "
        f"torch {torch.__version__}; {os.cpu_count()} CPUs; optimizers={args.optimizers} trials={args.trials} "
        f"epochs={args.epochs} workers={args.workers} scheduler={args.scheduler} product={args.product} "
        f"reuse_actors={args.reuse_actors} repeats={args.repeats}\n",
        flush=True,
    )
    install_store_counter(DRIVER_COUNTING)
    tmp = Path(tempfile.mkdtemp(prefix="bench-tune-"))
    results: dict[str, list[dict]] = {"product": [], "baseline": []}
    sides = {"product": run_product, "baseline": run_baseline}
    try:
        for rep in range(args.repeats):
            order = list(sides) if rep % 2 == 0 else list(sides)[::-1]
            for side in order:
                r = sides[side](args, tmp, rep)
                results[side].append(r)
                print(
                    f"  repeat {rep + 1}: {side:<8} {r['wall']:7.1f}s  trials {r['finished']}/{r['trials']}  "
                    f"stopped {r['stopped']}  diverged {r['own_end']}  runs {r['runs']}  "
                    f"store calls {fmt_calls(r['calls'])}  points at a repeated step {r['repeated_steps']}"
                    + (f"  scheduler PAUSEs {r['paused']}" if "paused" in r else ""),
                    flush=True,
                )
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if args.keep:
            print(f"\nkept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    walls = {side: statistics.median(r["wall"] for r in rs) for side, rs in results.items()}
    # the counts below come from one repeat per side: the one with the median wall time
    shown = {side: sorted(rs, key=lambda r: r["wall"])[(len(rs) - 1) // 2] for side, rs in results.items()}
    labels = {
        "product": f"product (`run_sweep`{', subprocess' if args.product == 'subprocess' else ''})",
        "baseline": "baseline (Tuner + OptunaSearch + MLflowLoggerCallback)",
    }
    print(
        "\n| side | wall s | baseline / product | trials finished | stopped early | diverged "
        "| MLflow trial runs | one run per trial | metric points per run | points at a repeated step "
        "| epochs trained | train s | MLflow store calls | calls per epoch |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for side in results:
        r = shown[side]
        calls = r["calls"]
        per_epoch = f"{sum(calls.values()) / max(1, r['epochs_run']):.1f}" if calls is not None else "n/a"
        print(
            f"| {labels[side]} | {walls[side]:.1f} | {walls[side] / walls['product']:.2f}x "
            f"| {r['finished']}/{r['trials']} | {r['stopped']} | {r['own_end']} | {r['runs']} "
            f"| {'yes' if r['one_run_each'] else 'NO'} | {r['points_mean']:.1f} ({r['keys_mean']:.0f} keys) "
            f"| {r['repeated_steps']} | {r['epochs_run']} | {r['train_seconds']:.1f} | {fmt_calls(calls)} "
            f"| {per_epoch} |"
        )
    print(
        "\nWall seconds per repeat: "
        + "; ".join(f"{side} " + ", ".join(f"{r['wall']:.1f}" for r in rs) for side, rs in results.items())
    )
    print("\nCounts above, and below, are from the median-wall repeat of each side.")
    print("\nBest final val accuracy per optimizer (completed trials, not stopped early):")
    for side in results:
        print(
            f"  {side:<8} "
            + "  ".join(f"{opt}={v:.4f}" if v is not None else f"{opt}=-" for opt, v in shown[side]["best"].items())
        )
    for side in results:
        if shown[side]["calls"] is not None:
            print(
                f"\nMLflow store calls, {side}: " + ", ".join(f"{k} {v}" for k, v in shown[side]["calls"].most_common())
            )
    base = shown["baseline"]
    print(
        f"\nBaseline: Optuna states inside OptunaSearch: {dict(base['optuna_states'])}; "
        f"params per MLflow run: {base['params_mean']:.1f} (product: {shown['product']['params_mean']:.1f}); "
        f"scheduler PAUSE decisions (trial restarted from epoch 0 on resume): {base['paused']}"
    )
    finish(suite_result(args, results, walls, shown, labels), args.json)


def suite_result(
    args, results: dict[str, list[dict]], walls: dict[str, float], shown: dict[str, dict], labels: dict[str, str]
) -> BenchResult:
    """One row per side (counts from its median-wall repeat); the headline: baseline wall / product wall."""
    rows = []
    for side in results:
        r = shown[side]
        calls = r["calls"]
        rows.append(
            {
                "side": labels[side],
                "wall s": walls[side],
                "baseline / product": walls[side] / walls["product"],
                "trials finished": r["finished"],
                "trials": r["trials"],
                "stopped early": r["stopped"],
                "diverged": r["own_end"],
                "MLflow trial runs": r["runs"],
                "one run per trial": r["one_run_each"],
                "metric points per run": r["points_mean"],
                "metric keys per run": r["keys_mean"],
                "points at a repeated step": r["repeated_steps"],
                "epochs trained": r["epochs_run"],
                "train s": r["train_seconds"],
                "MLflow store calls": sum(calls.values()) if calls is not None else None,
                "calls per epoch": sum(calls.values()) / max(1, r["epochs_run"]) if calls is not None else None,
                "best val accuracy": r["best"],
                "walls": [round(x["wall"], 2) for x in results[side]],
            }
        )
    ratio = walls["baseline"] / walls["product"]
    headline = Headline(
        "baseline (Ray Tune) wall / product wall",
        ratio,
        "x",
        "> 1",
        ratio > 1,
        "reuse_actors=True" if args.reuse_actors else "Tune's defaults",
    )
    notes = [
        f"optimizers={args.optimizers} trials={args.trials} epochs={args.epochs} workers={args.workers} "
        f"scheduler={args.scheduler} product={args.product} reuse_actors={args.reuse_actors}; wall: median of "
        f"{args.repeats} repeat(s), counts from each side's median-wall repeat",
        f"baseline: Optuna states inside OptunaSearch {dict(shown['baseline']['optuna_states'])}, scheduler "
        f"PAUSE decisions {shown['baseline']['paused']}",
    ]
    params = {
        k: getattr(args, k)
        for k in ("optimizers", "trials", "epochs", "workers", "repeats", "scheduler", "product", "reuse_actors")
    }
    return BenchResult("tune_baseline", args.size, rows, [headline], notes, params)


if __name__ == "__main__":
    main()
