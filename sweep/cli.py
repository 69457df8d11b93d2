"""The ``sweep`` command: train one trial, run/resume a sweep, list sweeps, open the MLflow UI."""
from __future__ import annotations

import argparse
import sys

from sweep.config import ConfigError, load_config, trial_config

USAGE_ERROR = 2


def _fail(message: str) -> int:
    print(f"sweep: error: {message}", file=sys.stderr)
    return USAGE_ERROR


def cmd_train(args) -> int:
    from sweep.datasets import DatasetUnavailable, load_dataset
    from sweep.trial import run_trial

    try:
        cfg = load_config(args.config, args.overrides, default="train", mode="train")
    except ConfigError as exc:
        return _fail(str(exc))
    tc = trial_config(cfg)
    if tc.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return _fail(f"device: {tc.device} asked for, but torch sees no CUDA device; use device=cpu or auto")
    try:
        data = load_dataset(tc.dataset, tc.data_dir, tc.download, tc.val_fraction, seed=tc.seed)
    except DatasetUnavailable as exc:
        return _fail(f"{exc.key}: {exc}")
    print(f"train {tc.model} on {tc.dataset} ({len(data.train_x)} train / {len(data.val_x)} val / "
          f"{len(data.test_x)} test) with {tc.optimizer} {tc.optimizer_params or ''} "
          f"schedule {tc.schedule} {tc.schedule_params or ''}", flush=True)

    def report(m):
        print(f"epoch {m.epoch + 1:3d}/{tc.epochs}  train loss {m.train_loss:.4f} acc {m.train_accuracy:.4f}  "
              f"val loss {m.val_loss:.4f} acc {m.val_accuracy:.4f}  lr {m.lr:.3g}  "
              f"{m.epoch_seconds:.2f}s {m.images_per_second:,.0f} img/s", flush=True)

    result = run_trial(tc, data, report)
    summary = f"status {result.status}"
    if result.reason:
        summary += f" ({result.reason})"
    if "test_accuracy" in result.metrics:
        summary += f"  test acc {result.metrics['test_accuracy']:.4f}"
    print(summary)
    return 1 if result.status == "failed" else 0


def cmd_run(args) -> int:
    from sweep.engine import run_sweep

    try:
        cfg = load_config(args.config, args.overrides, default="quickstart", mode="sweep")
    except ConfigError as exc:
        return _fail(str(exc))
    return run_sweep(cfg)


def cmd_resume(args) -> int:
    from sweep.engine import resume_sweep

    try:
        return resume_sweep(args.name, args.overrides, args.output_dir)
    except ConfigError as exc:
        return _fail(str(exc))


def cmd_ls(args) -> int:
    from sweep.report import list_sweeps

    return list_sweeps(args.output_dir)


def cmd_ui(args) -> int:
    from sweep.report import open_ui

    try:
        return open_ui(args.name, args.output_dir, args.host, args.port)
    except ConfigError as exc:
        return _fail(str(exc))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sweep", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, default, text in [
        ("train", cmd_train, "train", "train one trial and print one line per epoch"),
        ("run", cmd_run, "quickstart", "run (or continue) a sweep: one Optuna study per optimizer"),
    ]:
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("config", nargs="?", default=None,
                       help=f"config name in conf/ or a .yaml path (default: {default})")
        p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. epochs=3 optimizer.lr=0.01")
        p.set_defaults(func=func)
    p = sub.add_parser("resume", help="continue a sweep from where it stopped")
    p.add_argument("name")
    p.add_argument("overrides", nargs="*", help="key=value overrides (e.g. trials=10 to top up)")
    p.add_argument("--output-dir", default="./sweeps")
    p.set_defaults(func=cmd_resume)
    p = sub.add_parser("ls", help="list the sweeps in the output directory")
    p.add_argument("--output-dir", default="./sweeps")
    p.set_defaults(func=cmd_ls)
    p = sub.add_parser("ui", help="start the MLflow UI on a sweep's tracking store")
    p.add_argument("name", nargs="?", default=None)
    p.add_argument("--output-dir", default="./sweeps")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=cmd_ui)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    # `sweep train epochs=3`: a first positional with '=' is an override, not a config name
    if getattr(args, "config", None) and "=" in args.config:
        args.overrides.insert(0, args.config)
        args.config = None
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
