"""The `sweep` command: train one trial, run or resume a sweep, report on it, list sweeps, serve the MLflow UI.

Exit codes are decided here: 0 done, 1 a failed trial (train) or a sweep stopped by a store that
went away or an unexpected error, 2 bad input (nothing written), 130/143 stopped by Ctrl-C/SIGTERM.
Help, `ls` and bad input import neither torch, Ray nor MLflow, so they answer at once.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import signal
import sys
from pathlib import Path

from sweep.core.config import SWEEP, TRAIN, config_names, key_table, load_config, saved_values
from sweep.core.credentials import redact, redacted
from sweep.core.errors import ConfigError, StoreUnavailable, SweepDamaged

USAGE_ERROR, FAILED = 2, 1
DEFAULT_OUTPUT_DIR = "./sweeps"


def _fail(message: str, code: int = USAGE_ERROR, urls: tuple[str | None, ...] = ()) -> int:
    """Print one error; passwords (in a URL, of ``urls``, in the environment) are masked."""
    print(f"sweep: error: {redact(message, *urls)}", file=sys.stderr)
    return code


def _print_config_values(values) -> int:
    import yaml

    print(yaml.safe_dump(values, sort_keys=False), end="")
    return 0


def _print_config(cfg) -> int:
    import yaml

    print(yaml.safe_dump(cfg.to_dict(redacted), sort_keys=False), end="")
    return 0


def cmd_train(args) -> int:
    try:
        cfg = load_config(args.config, args.overrides, default="train", mode=TRAIN)
    except ConfigError as exc:
        return _fail(str(exc))
    if args.print_config:
        return _print_config(cfg)
    from sweep.core.datasets import load_data
    from sweep.core.errors import DatasetUnavailable
    from sweep.train.solo import run_trial

    tc = cfg.trial_config()
    if tc.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return _fail(f"device: {tc.device} asked for, but torch sees no CUDA device; use device=cpu or auto")
    try:
        data = load_data(tc)
    except DatasetUnavailable as exc:
        return _fail(f"{exc.key}: {exc}")
    print(
        f"train {tc.model} on {tc.dataset} ({len(data.train_x)} train / {len(data.val_x)} val / "
        f"{len(data.test_x)} test) with {tc.optimizer} {tc.optimizer_params or ''} "
        f"schedule {tc.schedule} {tc.schedule_params or ''}",
        flush=True,
    )

    def report(m):
        print(
            f"epoch {m.epoch:3d}/{tc.epochs}  train loss {m.train_loss:.4f} acc {m.train_accuracy:.4f}  "
            f"val loss {m.val_loss:.4f} acc {m.val_accuracy:.4f}  lr {m.scheduled_lr:.3g}  "
            f"{m.epoch_seconds:.2f}s {m.images_per_second:,.0f} img/s",
            flush=True,
        )

    result = run_trial(tc, data, report)
    summary = f"status {result.status.value}"
    if result.reason:
        summary += f" ({result.reason})"
    if "test_accuracy" in result.metrics:
        summary += f"  test acc {result.metrics['test_accuracy']:.4f}"
    print(summary)
    return FAILED if result.status.value == "failed" else 0


def _drive(cfg, start, show=None) -> int:
    """Run ``start()`` (a sweep, or a benchmark whose shared keys ``cfg`` holds under its name)
    and turn how it ended into output and an exit code; ``show`` prints a benchmark's result."""
    from sweep.stores.sweepdir import SweepDir

    sweep_dir = SweepDir.of(cfg.output_dir, cfg.name)
    urls = (cfg.storage, cfg.tracking_uri)
    _usable_home()
    try:
        result = start()
    except (ConfigError, SweepDamaged) as exc:  # nothing was written: no resume hint
        return _fail(str(exc), urls=urls)
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        print(f"\nstopped by {signal.Signals(signum).name}; {_next_step(sweep_dir, cfg.name)}", file=sys.stderr)
        return 128 + signum
    except StoreUnavailable as exc:
        return _fail(f"{exc}\nthe sweep stopped; {_next_step(sweep_dir, cfg.name)}", FAILED, urls)
    except Exception as exc:  # unexpected: the whole traceback goes to a file, one line to the terminal
        try:
            log = sweep_dir.write_driver_log(exc, *urls) if sweep_dir.path.is_dir() else None
            where = f"traceback in {log}" if log else "no sweep directory was written"
        except OSError as log_error:  # e.g. a full disk: still one line, not a second traceback
            where = f"the traceback could not be written to {sweep_dir / 'driver.log'} ({log_error.strerror})"
        message = redact(str(exc), *urls).strip()[:200]  # masked before the cut: no half password
        return _fail(
            f"unexpected {type(exc).__name__}: {message}\n{where}; {_next_step(sweep_dir, cfg.name)}", FAILED, urls
        )
    if show is not None:
        show(result)
    else:
        _print_report(result.report, cfg.name, result.sweep_dir.path.parent)
    return 0


def _next_step(sweep_dir, name: str) -> str:
    """What to do after a sweep (or benchmark) stopped: resume it once its config is saved (its
    trials are kept); before that nothing of it exists to resume, so run the command again."""
    if sweep_dir.exists() or sweep_dir.saved_benchmark() is not None:
        return (
            f"finished trials are kept, the interrupted ones run again; "
            f"continue with: sweep resume {name} --output-dir {sweep_dir.path.parent}"
        )
    return "nothing of the sweep was saved; run the same command again (once the cause is fixed)"


def _usable_home() -> None:
    """Before Ray, MLflow or matplotlib start: a HOME they can write (``sweep.core.home``)."""
    from sweep.core.home import ensure_writable

    said = ensure_writable()
    if said:
        print(f"sweep: {said}", file=sys.stderr, flush=True)


def _print_report(built, name: str, output_dir) -> None:
    """The ranking within 100 columns (the full table is the report's comparison.md), and where
    the report is."""
    from sweep.report.files import terminal_table

    print(terminal_table(built.comparison))
    print(
        f"\nreport:  {built.html}\n         PNGs, comparison.csv and comparison.md beside it; summary.json in "
        f"{built.folder.parent}\nMLflow:  sweep ui {name} --output-dir {output_dir}  (the 'report' run holds it)"
    )


def cmd_report(args) -> int:
    """Build the report of a finished or still-running sweep (or benchmark) from its stores."""
    try:
        found = _saved_benchmark(args, [])
    except ConfigError as exc:
        return _fail(str(exc))
    if found is None:
        sweep_dir, cfg = _saved_sweep(args, [])
    _usable_home()  # matplotlib, MLflow
    if found is not None:
        return _report_benchmark(found[0])
    stores = sweep_dir.stores(cfg.storage, cfg.tracking_uri)
    from sweep.report import build as report

    try:
        built = report.build(cfg, stores, sweep_dir, sweep_dir.state())
    except StoreUnavailable as exc:
        return _fail(str(exc), FAILED, (cfg.storage, cfg.tracking_uri))
    _print_report(built, cfg.name, sweep_dir.path.parent)
    return 0


def _report_benchmark(bench) -> int:
    import time

    from sweep.execution.benchmark import BenchmarkResult
    from sweep.report import benchmark as report
    from sweep.stores.sweepdir import SweepDir

    started = time.perf_counter()
    try:
        built = report.build(bench)
    except StoreUnavailable as exc:
        return _fail(str(exc), FAILED, (bench.base.storage, bench.base.tracking_uri))
    _print_benchmark(BenchmarkResult(SweepDir(bench.path), built, time.perf_counter() - started))
    return 0


def _with_output_dir(args) -> list[str]:
    """The overrides, with ``--output-dir`` as ``output_dir=`` (the option and the key are one setting)."""
    return list(args.overrides) + ([f"output_dir={args.output_dir}"] if args.output_dir else [])


def _run_benchmark(bench, values) -> int:
    """A benchmark (``sweep.core.benchmark``): its sweeps one after another, then its report. A
    stop or store failure is said as for a sweep, with the benchmark's resume command."""
    from sweep.execution.benchmark import run_benchmark

    where = bench.base.replace(name=bench.name, output_dir=bench.output_dir)
    return _drive(where, lambda: run_benchmark(bench, values), show=_print_benchmark)


def _print_benchmark(result) -> None:
    from sweep.report.benchmark_files import SCORE_COLUMNS, score_rows

    rows = score_rows(result.report)
    print(f"{'rank':>4}  {'optimizer':<12} {'score':>6}  {'interval':<34} reached")
    for r in rows:
        print(
            f"{r['rank']:>4}  {r['optimizer']:<12} {r['score']:>6}  {r[SCORE_COLUMNS[3]]:<34} {r['workloads reached']}"
        )
    folder = result.report.folder
    print(
        f"\nreport:  {folder / 'benchmark.html'} ({result.seconds:.0f} s)\n         profile.png, front.png, "
        f"scores.csv, workloads.csv, trials.csv and benchmark.md beside it\n"
        f"MLflow:  sweep ui {result.report.name} --output-dir {folder.parent.parent}"
    )


def _benchmark(config: str | None, overrides: list[str]):
    """The benchmark a config file declares, or None when it declares a sweep."""
    from sweep.core.benchmark import is_benchmark, load_benchmark

    return load_benchmark(config, overrides) if is_benchmark(config) else None


def _saved_benchmark(args, overrides: list[str]):
    """The benchmark ``args.name`` under ``--output-dir`` as saved, or None when it is a sweep."""
    from sweep.core.benchmark import from_values
    from sweep.stores.damage import require_intact
    from sweep.stores.sweepdir import BENCHMARK, SweepDir

    folder = SweepDir.of(args.output_dir, args.name)
    values = folder.saved_benchmark()
    if values is None:
        return None
    require_intact(folder)  # the shared journal and mlflow.db of its child sweeps
    return from_values(values, str(folder / BENCHMARK), [*overrides, f"output_dir={folder.path.parent}"])


def cmd_run(args) -> int:
    overrides = _with_output_dir(args)
    try:
        found = _benchmark(args.config, overrides)
        if found is not None:
            return _print_config_values(found[1]) if args.print_config else _run_benchmark(*found)
        cfg = load_config(args.config, overrides, default="quickstart", mode=SWEEP)
    except ConfigError as exc:
        return _fail(str(exc))
    if args.print_config:
        return _print_config(cfg)
    from sweep.execution.launch import run_sweep

    return _drive(cfg, lambda: run_sweep(cfg))


def cmd_submit(args) -> int:
    from sweep import submit

    overrides = _with_output_dir(args)
    try:
        cfg, entrypoint = submit.load(args.config, overrides)
        job = submit.submit(cfg, entrypoint, args.address or submit.default_address())
    except ConfigError as exc:
        return _fail(str(exc))
    print(submit.instructions(job), flush=True)
    if not args.follow:
        return 0
    try:
        return submit.follow(job)
    except KeyboardInterrupt:
        print(
            f"\nstopped following; the job keeps running (ray job stop {job.job_id} --address {job.address})",
            file=sys.stderr,
        )
        return 130


class _Refused(Exception):
    """Bad input found while reading a saved sweep: the exit code ``_fail`` returned."""

    def __init__(self, code: int):
        self.code = code


def _saved_sweep(args, overrides: list[str]):
    """The sweep directory ``args.name`` under ``--output-dir`` and its saved config with
    ``overrides``; raises ``_Refused`` (said in one line) when there is none or an override is bad."""
    from sweep.stores.damage import require_intact
    from sweep.stores.sweepdir import SweepDir, saved_sweep

    require_intact(SweepDir.of(args.output_dir, args.name))
    try:
        return saved_sweep(args.output_dir, args.name, overrides)
    except ConfigError as exc:
        raise _Refused(_fail(str(exc))) from None


def cmd_resume(args) -> int:
    try:
        found = _saved_benchmark(args, args.overrides)
    except ConfigError as exc:
        return _fail(str(exc))
    if found is not None:
        return _print_config_values(found[1]) if args.print_config else _run_benchmark(*found)
    _, cfg = _saved_sweep(args, args.overrides)
    if args.print_config:
        return _print_config(cfg)
    from sweep.execution.launch import run_sweep

    return _drive(cfg, lambda: run_sweep(cfg))


def cmd_check(args) -> int:
    """``sweep check NAME [--repair]``: 0 when every store agrees (after the repair, with it), 1
    when something is damaged, 2 when there is no such sweep or a driver holds it. A benchmark's
    child sweeps are checked one by one."""
    from sweep.execution.check import check_all, repair_all, sweep_at

    try:
        folder = sweep_at(args.output_dir, args.name)
        if args.repair:
            for name, line in repair_all(folder):
                print(f"{name}: repair: {line}", flush=True)
    except ConfigError as exc:
        return _fail(str(exc))
    checked = check_all(folder)
    for one in checked:
        print("\n".join(one.lines()))
    return 0 if all(one.healthy for one in checked) else FAILED


def _add_check(sub) -> None:
    p = sub.add_parser(
        "check",
        help="check that a sweep's stores agree with each other (--repair: fix what can be fixed)",
        description="Read every store of a sweep (sweep.yaml, id, the Optuna journal or database, "
        "the MLflow runs and logged models) and check them against each other; exit 0 only when "
        "everything agrees. --repair does what can be done without losing anything, keeps a copy of "
        "every file it changes, and says what it did, one line per action. A benchmark's child sweeps "
        "are checked one by one.",
    )
    p.add_argument("name")
    p.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR, help="folder of sweeps (default ./sweeps)")
    p.add_argument("--repair", action="store_true", help="repair what can be repaired without losing anything")
    p.set_defaults(func=cmd_check)


def cmd_ls(args) -> int:
    from sweep.report.build import list_sweeps

    print(list_sweeps(args.output_dir))
    benchmarks = _list_benchmarks(args.output_dir)
    if benchmarks:
        print(f"\n{benchmarks}")
    return 0


def _list_benchmarks(output_dir) -> str:
    """The benchmarks under ``output_dir``: name, state, workloads, ruleset, the best score (files only)."""
    import json
    from pathlib import Path

    from sweep.stores.damage import inspect
    from sweep.stores.sweepdir import BENCHMARK, SUMMARY, SweepDir

    found = sorted(Path(output_dir).glob(f"*/{BENCHMARK}")) if Path(output_dir).is_dir() else []
    if not found:
        return ""
    lines = [f"{'benchmark':<24} {'state':<12} {'workloads':<10} {'ruleset':<9} best (optimizer: score)"]
    for path in found:
        folder = SweepDir(path.parent)
        damaged = inspect(folder, thorough=False)
        if damaged:  # marked in its row; the other benchmarks are still listed
            lines.append(f"{folder.name:<24} {'damaged':<12} {'-':<10} {'-':<9} {damaged[0].line()}")
            continue
        section = (folder.saved_benchmark() or {}).get("benchmark") or {}
        summary = json.loads((folder / SUMMARY).read_text()) if (folder / SUMMARY).exists() else {}
        scores = summary.get("scores") or {}
        best = next((f"{name}: {row['score']:.3f}" for name, row in scores.items()), "")  # ranked first
        lines.append(
            f"{folder.name:<24} {folder.state():<12} {len(section.get('workloads') or {}):<10} "
            f"{section.get('ruleset', '-'):<9} {best}"
        )
    return "\n".join(lines)


def cmd_ui(args) -> int:
    from sweep.stores.sweepdir import SweepDir, latest_sweep

    sweep_dir = SweepDir.of(args.output_dir, args.name) if args.name else latest_sweep(args.output_dir)
    if args.name and sweep_dir is not None and not sweep_dir.exists():
        try:
            found = _saved_benchmark(args, [])
        except ConfigError as exc:
            return _fail(str(exc))
        if found is not None:  # a benchmark: its one MLflow store, opened on its report's experiment
            from sweep.ui import ServerStartError, serve

            _usable_home()

            try:
                return serve(found[0].base.tracking_uri, found[0].name, args.host, args.port, args.verbose)
            except ServerStartError as exc:
                return _fail(f"ui: {exc}", FAILED)
    if sweep_dir is None or not sweep_dir.exists():
        which = f"no sweep {args.name!r}" if args.name else "no sweeps"
        return _fail(f"name: {which} under {SweepDir(args.output_dir).path}; run `sweep run` first")
    from sweep.stores.damage import require_intact

    require_intact(sweep_dir)  # a server on a damaged store would fail page by page
    saved = saved_values(sweep_dir.saved_config())  # store URLs without passwords (from the environment)
    stores = sweep_dir.stores(saved.get("storage"), saved.get("tracking_uri"))
    from sweep.ui import ServerStartError, serve

    _usable_home()
    try:
        return serve(
            stores.tracking_uri,
            saved.get("name", sweep_dir.name),
            args.host,
            args.port,
            args.verbose,
            sweep_dir.artifacts if stores.local_tracking else None,
        )
    except ConfigError as exc:
        return _fail(str(exc))
    except ServerStartError as exc:
        return _fail(f"ui: {exc}", FAILED)


def _registries() -> str:
    from models import MODELS
    from optim import OPTIMIZERS, SCHEDULES
    from sweep.core.datasets import DATASETS
    from sweep.core.registries import PRUNER_NAMES, SAMPLER_NAMES

    return "\n".join(
        f"  {title:<11} {', '.join(names)}"
        for title, names in [
            ("optimizers", sorted(OPTIMIZERS)),
            ("schedules", sorted(SCHEDULES)),
            ("models", sorted(MODELS)),
            ("datasets", sorted(DATASETS)),
            ("samplers", SAMPLER_NAMES),
            ("pruners", PRUNER_NAMES),
        ]
    )


def _epilog(command: str) -> str:
    examples = {
        "train": [
            "sweep train optimizer=adam optimizer.lr=0.003 epochs=3",
            "sweep train optimizer=momentum schedule=cosine schedule.warmup_epochs=1 device=cuda bf16=true",
            "sweep train optimizer=nesterov --print-config",
        ],
        "run": [
            "sweep run",
            "sweep run quickstart optimizers=[sgd,momentum,adam] trials=20 name=my-sweep",
            "sweep run cifar10 download=true num_gpus=0.25 --output-dir /data/sweeps",
            "sweep run storage=postgresql://me@db/optuna tracking_uri=http://mlflow:5000 --print-config",
        ],
    }[command]
    return (
        f"configs in conf/: {', '.join(config_names())} (or a path to a .yaml file)\n\n"
        f"keys (key=value; lists as [a,b]; optimizer.KEY / schedule.KEY fix a group value):\n{key_table()}\n\n"
        f"registries:\n{_registries()}\n\nexamples:\n" + "\n".join(f"  {e}" for e in examples)
    )


def _version() -> str:
    from importlib import metadata  # about 0.1 s: only for --version

    try:
        return metadata.version("optimizer-sweep")
    except metadata.PackageNotFoundError:
        return "unknown"


class _VersionAction(argparse._VersionAction):
    """``--version``, its text looked up only when asked (every other command skips the metadata scan)."""

    def __call__(self, parser, namespace, values, option_string=None):
        self.version = f"%(prog)s {_version()}"
        super().__call__(parser, namespace, values, option_string)


def build_parser() -> argparse.ArgumentParser:
    """The commands and their options. Long because it is one declaration per command, read top to
    bottom like the help it prints; split, the commands' options would be scattered."""
    parser = argparse.ArgumentParser(
        prog="sweep",
        description="Compare optimizers on CNNs: Optuna searches, Ray trains, MLflow records.",
        epilog="`sweep COMMAND --help` lists a command's keys, registries and examples.",
    )
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    formatter = argparse.RawDescriptionHelpFormatter
    for name, func, default, text in [
        ("train", cmd_train, "train", "train one trial and print one line per epoch"),
        ("run", cmd_run, "quickstart", "run (or continue) a sweep: one Optuna study per optimizer"),
    ]:
        p = sub.add_parser(name, help=text, description=text, epilog=_epilog(name), formatter_class=formatter)
        p.add_argument(
            "config", nargs="?", default=None, help=f"config name in conf/ or a .yaml path (default: {default})"
        )
        p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, e.g. epochs=3 optimizer.lr=0.01")
        p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
        if name == "run":
            p.add_argument(
                "--output-dir", default=None, help="folder of sweeps (same as output_dir=; default ./sweeps)"
            )
        p.set_defaults(func=func)
    text = "run a sweep's driver as a Ray job on a cluster (it keeps running when this machine disconnects)"
    p = sub.add_parser(
        "submit",
        help=text,
        formatter_class=formatter,
        description=text + ". The config is checked like `sweep run`; the job runs `sweep run` "
        "on the head node with the project shipped in its runtime_env.",
        epilog="examples:\n  sweep submit quickstart storage=postgresql://sweep@postgres/optuna "
        "tracking_uri=http://mlflow:5000 output_dir=/sweeps --address http://127.0.0.1:8265\n"
        "  sweep submit cifar10 num_gpus=0.25 workers=8 output_dir=/sweeps --follow",
    )
    p.add_argument(
        "config",
        nargs="?",
        default=None,
        help="config name in conf/ or a .yaml path in the project (default: quickstart)",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, as for `sweep run`")
    p.add_argument(
        "--address",
        default=None,
        help="the Ray head's dashboard (job server) address "
        "(default: $RAY_API_SERVER_ADDRESS or http://127.0.0.1:8265)",
    )
    p.add_argument(
        "--output-dir", default=None, help="folder of sweeps on the head node (same as output_dir=; must be absolute)"
    )
    p.add_argument("--follow", action="store_true", help="print the job's logs until it ends; exit with its status")
    p.set_defaults(func=cmd_submit)
    p = sub.add_parser(
        "resume",
        help="continue a sweep from where it stopped (overrides: trials=, workers=, ...)",
        description="Continue a sweep: finished trials are kept, interrupted ones run again, each "
        "optimizer is topped up to `trials`. Keys that define the experiment cannot change.",
    )
    p.add_argument("name")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. trials=10 to top up, workers=4")
    p.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR, help="folder of sweeps (default ./sweeps)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.set_defaults(func=cmd_resume)
    p = sub.add_parser(
        "report",
        help="build a sweep's report (HTML, PNGs, CSV, Markdown; logged to MLflow)",
        description="Build the report of a finished or still-running sweep from its Optuna studies "
        "and MLflow runs: the ranking by mean test accuracy over the re-evaluation seeds "
        "with ties marked, tuning-budget curves and plots, written to <sweep>/report/ "
        "and logged on the sweep's 'report' run in MLflow. `sweep run` builds it at the end.",
    )
    p.add_argument("name")
    p.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR, help="folder of sweeps (default ./sweeps)")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser(
        "ls",
        help="list the sweeps in the output directory",
        description="List sweeps: name, state (running / finished / interrupted), optimizers, trials, best result.",
    )
    p.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR, help="folder of sweeps (default ./sweeps)")
    p.set_defaults(func=cmd_ls)
    p = sub.add_parser(
        "ui",
        help="serve the MLflow UI on a sweep's tracking store",
        description="Serve the MLflow UI for a sweep (the newest one without NAME); prints the "
        "runs-table URL once the server answers; Ctrl-C or SIGTERM stops it.",
    )
    p.add_argument("name", nargs="?", default=None)
    p.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR, help="folder of sweeps (default ./sweeps)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument(
        "--verbose",
        action="store_true",
        help="pass the MLflow server's own output through (start-up, access log); else only its errors",
    )
    p.set_defaults(func=cmd_ui)
    _add_check(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The program (``argv`` None: the command line) ends without the interpreter's teardown
    (``_end_without_teardown``); a caller's list just returns the exit code."""
    if argv is not None:
        return _main(argv)
    code: list[int | None] = [None]  # None: _main raised (Ctrl-C, sys.exit(n), a bug): Python exits as it would
    atexit.register(_end_without_teardown, code)  # registered first, so it runs after every other exit handler
    code[0] = _main(sys.argv[1:])
    _stop_ray()
    return code[0]


def _stop_ray() -> None:
    """Stop (or leave) the Ray a finished command started (or joined) here, not in Ray's own exit
    handler: that one first sleeps 0.5 s for worker log lines, which a sweep never forwards
    (``log_to_driver=False``)."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        _end_autoscaler_monitor()
        ray.shutdown()


AUTOSCALER_MONITOR = "ray/autoscaler/_private/monitor.py"


def _end_autoscaler_monitor() -> None:
    """SIGKILL the autoscaler monitor of a Ray this process started, before ``ray.shutdown``.
    Ray stops it after the GCS; its exit handler then waits on the dead GCS until Ray kills it
    with SIGKILL a second later: 1 s of every ``sweep run``. Killed first, it takes no time (it
    holds no state; Ray finds it gone). Only this process's own children running that script
    (read from /proc; elsewhere Ray's second stays)."""
    me = str(os.getpid())
    try:
        entries = os.listdir("/proc")
    except OSError:
        return
    for pid in filter(str.isdigit, entries):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        ours = stat.rsplit(")", 1)[-1].split()[1] == me
        if ours and any(arg.endswith(AUTOSCALER_MONITOR.encode()) for arg in command.split(b"\0")):
            with contextlib.suppress(OSError):
                os.kill(int(pid), signal.SIGKILL)


HEAVY = ("torch", "ray", "mlflow")


def _end_without_teardown(code: list[int | None]) -> None:
    """The last exit handler: once a command has loaded torch, Ray or MLflow, freeing those
    modules' objects one by one takes seconds (about 2 s on 2 cores, more under load) after the
    command is done. By now Ray's processes are down (``_stop_ray``, or Ray's own exit handler
    after an error), the other exit handlers have run (logging flushes) and non-daemon threads
    have ended, so the output is flushed and the process ends here with the command's code. A
    command that raised (Ctrl-C: 130, ``sys.exit(n)``: n, an unexpected error: 1) exits as Python
    decides, teardown and all."""
    if code[0] is None or not any(name in sys.modules for name in HEAVY):
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said
            pass
    os._exit(code[0])


def _main(argv: list[str]) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # options may come before, between or after key=value overrides (`resume NAME --output-dir D trials=3`)
    unknown = [word for word in extra if word.startswith("-") or "=" not in word or not hasattr(args, "overrides")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides.extend(extra)
    # `sweep train epochs=3`: a first positional with '=' is an override, not a config name
    if getattr(args, "config", None) and "=" in args.config:
        args.overrides.insert(0, args.config)
        args.config = None
    try:
        return args.func(args)
    except _Refused as refused:
        return refused.code
    except SweepDamaged as exc:  # any command, before it read or wrote the damaged sweep
        return _fail(str(exc))


if __name__ == "__main__":
    sys.exit(main())
