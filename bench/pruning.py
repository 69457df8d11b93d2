"""Pruning that pays: compute spent and best accuracy under median, asha, hyperband and no pruning.

The quick-start search (conf/quickstart.yaml: digits, simple_cnn, batch 32, 4 schedules, TPE,
2 workers) runs through the real product in this process, once per pruner, each sweep in its own
temporary output_dir, with the same sampler seed:
``run_sweep(load_config("quickstart", [..., f"pruner={p}"], mode="sweep"))``. Ray is started once
and shared by the four sweeps (as `run_sweep` would start it), so each sweep's wall time leaves
out Ray's start-up.

Per sweep, read back from its Optuna journal (the source of truth, as sweep/report/collect.py reads it):
  compute  epochs trained and training seconds of the search (the trials' ``final_epochs`` /
           ``final_train_seconds``; the re-evaluations are left out: they are the same work under
           every pruner);
  accuracy best final validation accuracy per optimizer (status ok trials) and overall, and the
           re-evaluated test accuracy of each optimizer's best (summary.json, ``reeval_seeds``).
Derived against ``none``: ratio = compute(none) / compute(pruner) (epochs and seconds), and the
accuracy drop in points = 100 x (best(none) - best(pruner)), overall and as the mean over
optimizers. Target: >= 3x less compute (epochs: the seconds move with the load) at <= 0.5 points
lower best validation accuracy, taken per optimizer (the mean of their drops): the product
compares optimizers, so the overall best alone could hide one optimizer losing points.

Replay (a cheap way to explore pruner settings without a sweep each): the ``none`` sweep trained
every configuration to the end, so its per-epoch curves are replayed, trial by trial in the
sweep's order, through a real Optuna pruner in an in-memory study; each trial stops where that
pruner prunes it. This keeps the configurations fixed (no sampler feedback, no parallel overlap),
so it answers "what would this pruner have cut from these trials", not "what would a live sweep
find". The registry's settings are replayed next to a few variants.

Sizes: ci = 3 optimizers (sgd, momentum, adam) x 8 trials x 4 epochs, 1 re-evaluation seed;
full = the issue's setting, 7 optimizers x 30 trials x 6 epochs, 2 re-evaluation seeds
(4 sweeps of 210 trials: hours on 2 CPU cores).

Usage: .venv/bin/python bench/pruning.py [--size ci|full] [--json PATH] [--trials T] [--epochs E]
           [--optimizers ...] [--pruners ...] [--variants ...] [--keep] [--reuse DIR]
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.suite import BenchResult, Headline, Size, finish, parser, report_until_pruned  # noqa: E402

PRUNERS = ("none", "median", "asha", "hyperband")  # none first: the reference, and the replay's curves
TARGET_RATIO, TARGET_DROP_POINTS = 3.0, 0.5
ALL_OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw")
SIZES: dict[Size, dict[str, Any]] = {
    Size.CI: {"optimizers": ("sgd", "momentum", "adam"), "trials": 8, "epochs": 4, "reeval_seeds": 1},
    Size.FULL: {"optimizers": ALL_OPTIMIZERS, "trials": 30, "epochs": 6, "reeval_seeds": 2},
}


@dataclass
class SweepFigures:
    """One sweep's spend and accuracy, as read back from its stores."""

    pruner: str
    wall_s: float
    epochs: int = 0
    train_s: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    best_val: dict[str, float | None] = field(default_factory=dict)  # per optimizer, status ok trials
    test: dict[str, float | None] = field(default_factory=dict)  # re-evaluated test accuracy (mean of seeds)
    curves: dict[str, list[tuple[list[float], str, float]]] = field(default_factory=dict)  # (curve, status, s/epoch)

    @property
    def best_overall(self) -> float | None:
        found = [v for v in self.best_val.values() if v is not None]
        return max(found) if found else None


def overrides(
    opts: tuple[str, ...], trials: int, epochs: int, reeval_seeds: int, pruner: str, label: str, out: Path
) -> list[str]:
    return [
        f"optimizers=[{','.join(opts)}]",
        f"trials={trials}",
        f"epochs={epochs}",
        f"pruner={pruner}",
        f"reeval_seeds={reeval_seeds}",
        "report_figures=false",
        f"output_dir={out}",
        f"name=pruning-{label.replace('=', '-')}",
    ]


# Settings outside the registry, run live with --variants: Ray is started again with a
# worker_process_setup_hook that puts the setting in place of the registry's "median" entry in
# every worker process (the workers make the pruning decisions), and the driver's entry is
# swapped for the same sweep. Never used by the suite's default run.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "percentile33-warmup1": ("PercentilePruner", {"percentile": 33.0, "n_startup_trials": 2, "n_warmup_steps": 1}),
    "median-warmup1": ("MedianPruner", {"n_startup_trials": 2, "n_warmup_steps": 1}),
    "asha-rf4": ("SuccessiveHalvingPruner", {"min_resource": 1, "reduction_factor": 4}),
}


def variant_entry(variant: str) -> Callable[[int], Any]:
    """A registry entry (epochs -> pruner) for the named variant."""
    cls_name, kwargs = VARIANTS[variant]

    def build(epochs: int):
        import optuna

        return getattr(optuna.pruners, cls_name)(**kwargs)

    return build


def make_variant_hook(variant: str) -> Callable[[], None]:
    entry = variant_entry(variant)

    def swap_median():  # runs in every Ray worker process of the session
        from sweep.core import registries

        registries.PRUNERS["median"] = entry

    return swap_median


def _describe(pruner) -> str:
    return f"{type(pruner).__name__}({', '.join(f'{k}={v!r}' for k, v in sorted(vars(pruner).items()))})"


def _median_in_worker() -> str:
    from sweep.stores.studies import make_pruner

    return _describe(make_pruner("median", 6))


@contextlib.contextmanager
def ray_session(variant: str | None):
    """A local Ray as sweep/execution/launch.py starts it; with a variant, every worker swaps the entry in."""
    import ray

    kwargs = {"runtime_env": {"worker_process_setup_hook": make_variant_hook(variant)}} if variant else {}
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, **kwargs)
    from sweep.core import registries

    if variant:  # check that a worker now builds the variant for "median"
        in_worker, wanted = ray.get(ray.remote(_median_in_worker).remote()), _describe(variant_entry(variant)(6))
        if in_worker != wanted:
            raise RuntimeError(f"the workers' median entry builds {in_worker}, not {wanted}")

    saved = registries.PRUNERS["median"]
    if variant:
        registries.PRUNERS["median"] = variant_entry(variant)
    try:
        yield
    finally:
        registries.PRUNERS["median"] = saved
        ray.shutdown()


def run_one(
    label: str, pruner: str, opts: tuple[str, ...], trials: int, epochs: int, reeval_seeds: int, tmp: Path
) -> SweepFigures:
    """One real sweep (its terminal output goes to a log beside it), then its figures. A sweep a
    --keep run already finished in ``tmp`` is read back, not run again."""
    import ray

    from sweep.core.config import load_config
    from sweep.execution.launch import run_sweep

    out = tmp / label.replace("=", "-")
    cfg = load_config("quickstart", overrides(opts, trials, epochs, reeval_seeds, pruner, label, out), mode="sweep")
    if (out / cfg.name / "summary.json").exists():
        return read_back(cfg, out / cfg.name, label, float("nan"))
    variant = label.split("=", 1)[1] if "=" in label else None
    log = tmp / f"{label.replace('=', '-')}.log"
    t0 = time.perf_counter()
    try:
        with open(log, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            if variant is None:  # the registry's sweeps share one Ray, started as sweep/execution/launch.py does
                if not ray.is_initialized():
                    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
                    t0 = time.perf_counter()  # Ray's start-up is left out of every sweep's wall time
                run_sweep(cfg)
            else:  # a fresh Ray whose workers all swap the entry in
                if ray.is_initialized():
                    ray.shutdown()
                with ray_session(variant):
                    t0 = time.perf_counter()
                    run_sweep(cfg)
    except BaseException:
        print(log.read_text()[-3000:], file=sys.stderr)
        raise
    wall = time.perf_counter() - t0
    return read_back(cfg, out / cfg.name, label, wall)


def read_back(cfg, sweep_dir: Path, pruner: str, wall: float) -> SweepFigures:
    """Spend from the search studies' records; accuracy from them and summary.json."""
    from sweep.core.outcome import Status
    from sweep.stores.studies import SweepStudy, outcome_of, study_name
    from sweep.stores.sweepdir import SweepDir

    stores = SweepDir(sweep_dir).stores(cfg.storage, cfg.tracking_uri)
    summary = json.loads((sweep_dir / "summary.json").read_text())["optimizers"]
    fig = SweepFigures(pruner, wall)
    for opt in cfg.optimizers:
        study = SweepStudy.find(stores.storage, study_name(cfg.name, opt))
        best: float | None = None
        fig.curves[opt] = []
        for t in study.trials():
            o = outcome_of(t)
            if o is None:
                continue
            fig.counts[o.status.value] = fig.counts.get(o.status.value, 0) + 1
            n = int(o.metrics.get("epochs", len(t.intermediate_values)))
            seconds = float(o.metrics.get("train_seconds", 0.0))
            fig.epochs += n
            fig.train_s += seconds
            if o.status == Status.OK and o.value is not None:
                best = o.value if best is None else max(best, o.value)
            curve = [v for _, v in sorted(t.intermediate_values.items())]
            fig.curves[opt].append((curve, o.status.value, seconds / n if n else 0.0))
        fig.best_val[opt] = best
        fig.test[opt] = summary.get(opt, {}).get("test_accuracy_mean")
    return fig


# ---- replay: the none sweep's curves through other pruner settings ------------------------------


def replay(
    curves: dict[str, list[tuple[list[float], str, float]]], make: Callable[[], Any]
) -> tuple[float, float, dict[str, float | None]]:
    """Feed each optimizer's trials, in order, to a fresh in-memory study with ``make()``'s pruner.
    Returns (epochs, seconds, best final val accuracy per optimizer among trials not pruned)."""
    import optuna

    epochs, seconds, best = 0, 0.0, {}
    for opt, trials in curves.items():
        study = optuna.create_study(
            study_name=f"replay/{opt}",
            direction="maximize",
            pruner=make(),  # a fixed
            # name: Hyperband picks each trial's bracket from a hash of it
            sampler=optuna.samplers.RandomSampler(seed=0),
        )
        top: float | None = None
        for curve, status, per_epoch in trials:
            trial = study.ask()
            ran, pruned = report_until_pruned(trial, curve)
            epochs += ran
            seconds += ran * per_epoch
            if pruned:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:  # ok and diverged are COMPLETE in the product, with the accuracy reached
                study.tell(trial, curve[-1] if curve else 0.0)
                if status == "ok" and curve:
                    top = curve[-1] if top is None else max(top, curve[-1])
        best[opt] = top
    return epochs, seconds, best


def replay_variants(epochs: int) -> dict[str, Callable[[], Any]]:
    """The registry's settings and the nearby ones worth a look."""
    from optuna.pruners import HyperbandPruner, MedianPruner, PercentilePruner, SuccessiveHalvingPruner

    from sweep.core.registries import PRUNERS as REGISTRY

    return {
        "median (registry: warmup 2, startup 2)": lambda: REGISTRY["median"](epochs),
        "median warmup 1": lambda: MedianPruner(n_startup_trials=2, n_warmup_steps=1),
        "median warmup 1 startup 5": lambda: MedianPruner(n_startup_trials=5, n_warmup_steps=1),
        # PercentilePruner(p) keeps the top p % at each step (the median pruner is p = 50)
        "percentile 33 warmup 1": lambda: PercentilePruner(33.0, n_startup_trials=2, n_warmup_steps=1),
        "percentile 25 warmup 1": lambda: PercentilePruner(25.0, n_startup_trials=2, n_warmup_steps=1),
        "asha (registry: min 1, rf 3)": lambda: REGISTRY["asha"](epochs),
        "asha rf 2": lambda: SuccessiveHalvingPruner(min_resource=1, reduction_factor=2),
        "asha rf 4": lambda: SuccessiveHalvingPruner(min_resource=1, reduction_factor=4),
        "asha rf 5": lambda: SuccessiveHalvingPruner(min_resource=1, reduction_factor=5),
        "asha min 2 rf 3": lambda: SuccessiveHalvingPruner(min_resource=2, reduction_factor=3),
        "hyperband (registry: min 1, max E, rf 3)": lambda: REGISTRY["hyperband"](epochs),
        "hyperband rf 2": lambda: HyperbandPruner(min_resource=1, max_resource=max(1, epochs), reduction_factor=2),
    }


# ---- the bench ----------------------------------------------------------------------------------


def points(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(100.0 * (a - b), 2)


def mean_drop(ref: dict[str, float | None], other: dict[str, float | None]) -> float | None:
    drops = [d for opt in ref if (d := points(ref[opt], other.get(opt))) is not None]
    return round(statistics.fmean(drops), 2) if drops else None


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b > 0 else None


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--optimizers", nargs="+", default=None, help="default: by --size")
    ap.add_argument("--trials", type=int, default=None, help="trials per optimizer (default: by --size)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per trial (default: by --size)")
    ap.add_argument("--reeval-seeds", type=int, default=None, help="re-evaluation seeds (default: by --size)")
    ap.add_argument("--pruners", nargs="+", choices=PRUNERS, default=list(PRUNERS), help="none is always run")
    ap.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=[],
        help="also run these settings live in place of the registry's median entry",
    )
    ap.add_argument("--keep", action="store_true", help="keep the sweeps' temporary directory")
    ap.add_argument(
        "--reuse",
        type=Path,
        default=None,
        help="a directory a --keep run left (same sizes): its finished sweeps are read back, the others run",
    )
    args = ap.parse_args(argv)
    size = SIZES[args.size]
    opts = tuple(args.optimizers or size["optimizers"])
    trials, epochs = args.trials or size["trials"], args.epochs or size["epochs"]
    reeval_seeds = size["reeval_seeds"] if args.reeval_seeds is None else args.reeval_seeds
    sweeps = [(p, p) for p in ["none"] + [p for p in PRUNERS if p in args.pruners and p != "none"]]
    sweeps += [(f"median={v}", "median") for v in args.variants]

    import optuna
    import ray

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    load_before = [round(x, 2) for x in os.getloadavg()]
    tmp = args.reuse or Path(tempfile.mkdtemp(prefix="bench-pruning-"))
    figures: dict[str, SweepFigures] = {}
    try:
        for label, pruner in sweeps:
            print(f"sweep pruner={label}: {len(opts)} optimizers x {trials} trials x {epochs} epochs ...", flush=True)
            figures[label] = f = run_one(label, pruner, opts, trials, epochs, reeval_seeds, tmp)
            print(f"  {f.wall_s:.1f} s wall, {f.epochs} epochs, {f.train_s:.1f} training s, {f.counts}", flush=True)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if args.keep or args.reuse:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    ref = figures["none"]
    rows: list[dict[str, Any]] = []
    headlines: list[Headline] = []
    for p, f in figures.items():
        r_ep, r_s = ratio(ref.epochs, f.epochs), ratio(ref.train_s, f.train_s)
        drop, drop_mean = points(ref.best_overall, f.best_overall), mean_drop(ref.best_val, f.best_val)
        rows.append(
            {
                "pruner": p,
                "how": "live sweep" + (" (not a registry setting)" if "=" in p else ""),
                "wall s": round(f.wall_s, 1),
                "epochs": f.epochs,
                "train s": round(f.train_s, 1),
                "ratio (epochs)": r_ep,
                "ratio (train s)": r_s,
                "best val": f.best_overall,
                "drop pts": drop,
                "drop pts (mean per opt)": drop_mean,
                "test (mean per opt)": _mean(f.test.values()),
                "test drop pts (mean per opt)": mean_drop(ref.test, f.test),
                "trials": ", ".join(f"{n} {s}" for s, n in sorted(f.counts.items())),
                "best val per opt": " ".join(f"{o}={_fmt(v)}" for o, v in f.best_val.items()),
            }
        )
        if p == "none":
            continue
        # epochs, not seconds: every epoch is the same work, and the seconds move with the machine's load.
        # The drop is the mean over optimizers: the product compares optimizers, so a pruner that keeps
        # the overall best but costs one optimizer points distorts the comparison.
        met = (
            None
            if r_ep is None or drop_mean is None
            else bool(r_ep >= TARGET_RATIO and drop_mean <= TARGET_DROP_POINTS)
        )
        headlines.append(
            Headline(
                f"{p}: compute ratio none/{p} (epochs)",
                r_ep,
                "x",
                f">= {TARGET_RATIO:g}x",
                None if r_ep is None else r_ep >= TARGET_RATIO,
                note=f"training-seconds ratio {r_s}; both targets together: {_verdict(met)}",
            )
        )
        headlines.append(
            Headline(
                f"{p}: best val accuracy drop (mean per optimizer)",
                drop_mean,
                "points",
                f"<= {TARGET_DROP_POINTS:g}",
                None if drop_mean is None else drop_mean <= TARGET_DROP_POINTS,
                note=f"overall best: {drop}; re-evaluated test drop (mean per optimizer) {mean_drop(ref.test, f.test)}",
            )
        )

    # replay the none sweep's full curves through the registry's settings and variants
    r_epochs, r_seconds, r_best = replay(ref.curves, lambda: optuna.pruners.NopPruner())
    r_overall = max((v for v in r_best.values() if v is not None), default=None)
    for label, make in replay_variants(epochs).items():
        e, s, best = replay(ref.curves, make)
        overall = max((v for v in best.values() if v is not None), default=None)
        rows.append(
            {
                "pruner": label,
                "how": "replay of none's curves",
                "epochs": e,
                "train s": round(s, 1),
                "ratio (epochs)": ratio(r_epochs, e),
                "ratio (train s)": ratio(r_seconds, s),
                "best val": overall,
                "drop pts": points(r_overall, overall),
                "drop pts (mean per opt)": mean_drop(r_best, best),
            }
        )

    load_after = [round(x, 2) for x in os.getloadavg()]
    result = BenchResult(
        bench="pruning",
        size=args.size,
        rows=rows,
        headlines=headlines,
        params={
            "optimizers": list(opts),
            "trials": trials,
            "epochs": epochs,
            "reeval_seeds": reeval_seeds,
            "config": "quickstart",
            "workers": 2,
            "sampler": "tpe",
            "seed": 0,
            "sweeps": [label for label, _ in sweeps],
            "variants": {v: VARIANTS[v] for v in args.variants},
            "load_average_before": load_before,
            "load_average_after": load_after,
        },
        notes=[
            f"load average before {load_before}, after {load_after} (1/5/15 min)",
            "compute = the search's trials only (re-evaluations are the same work under every pruner); "
            "ratio = none / pruner; drop = 100 x (best(none) - best(pruner)), best = best final val accuracy "
            "of status-ok trials",
            "replay rows: none's trials replayed in order through each pruner in an in-memory study "
            "(same configurations, no sampler feedback): a cheap guide to settings, not a live sweep",
        ],
    )
    finish(result, args.json)
    return 0


def _mean(values) -> float | None:
    found = [v for v in values if v is not None and math.isfinite(v)]
    return round(statistics.fmean(found), 4) if found else None


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "NOT met", None: "n/a"}[met]


if __name__ == "__main__":
    sys.exit(main())
