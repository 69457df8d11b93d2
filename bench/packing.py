"""Packed trials: trials/hour and aggregate images/s for pack = 1, 2, 4, 8, 16, 32.

Why: a sweep of small CNNs is thousands of tiny trainings; ``pack=N`` trains N trials of one
optimizer as one fused model on one device (``sweep/train/packed.py``). Targets (issue 11): on a
CPU, pack = 8 gives >= 3x the trials/hour of pack = 1 on simple_cnn / digits; on a GPU, pack >= 16
gives >= 8x the aggregate images/s of one trial per GPU and >= 2x the same trials as separate Ray
tasks sharing the GPU with fractional ``num_gpus``.

(1) training  K trials of ``simple_cnn`` (momentum, lr spread over 1e-3..1e-1, constant schedule),
              each ``epochs`` epochs, in one process with one thread (as a sweep worker trains on
              a CPU): ``run_trial`` one at a time (pack 1), then ``run_pack`` in packs of N.
              Both with ``pack_update=exact`` (the default; bit-identical to solo) and, for
              N > 1, ``fused``. Data: scikit-learn's digits (8x8) and Fashion-MNIST-shaped
              synthetic images (28x28, 1,024 training images); on a GPU CIFAR-shaped synthetic
              images for simple_cnn and resnet18.
(2) sharing   (GPU only) the same K trials as K Ray tasks with ``num_gpus=1/N``, N at a time.
(3) sweep     ``run_sweep`` of the quick start's momentum study, K trials, pack 1 against pack 8,
              one worker slot: trials/hour of the whole sweep (Optuna, MLflow, checkpoints and
              all), Ray started before the clock.

trials/hour = K / wall seconds x 3600; images/s = K x train images x epochs / wall seconds. One
warm-up call of each kind first (imports, the first optimizer step's lazy imports).

Usage:  .venv/bin/python bench/packing.py [--size ci|full] [--json PATH] [--packs 1 2 4 8]
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: import `bench`, `sweep`

import torch  # noqa: E402

from bench.suite import BenchResult, Headline, Size, finish, parser  # noqa: E402
from bench.trial_loop import synthetic  # noqa: E402
from sweep.core.config import load_config  # noqa: E402
from sweep.core.datasets import load_dataset  # noqa: E402
from sweep.train.packed import run_pack  # noqa: E402
from sweep.train.solo import TrialConfig, run_trial  # noqa: E402

CPU_TARGET, GPU_SOLO_TARGET, GPU_SHARED_TARGET = 3.0, 8.0, 2.0
PACKS = {Size.CI: (1, 2, 4, 8), Size.FULL: (1, 2, 4, 8, 16, 32)}
TRIALS = {Size.CI: 8, Size.FULL: 32}
EPOCHS = 2
logging.getLogger("mlflow").setLevel(logging.ERROR)


def configs(k: int, dataset: str, model: str, update: str, batch: int, device: str) -> list[TrialConfig]:
    """K trials of one momentum study, learning rates spread log-uniformly over 1e-3..1e-1."""
    base = TrialConfig(
        dataset=dataset,
        model=model,
        epochs=EPOCHS,
        batch_size=batch,
        optimizer="momentum",
        checkpoint_every=0,
        pack_update=update,
        device=device,
        bf16=False,
        channels_last=False,
    )
    return [
        dataclasses.replace(base, optimizer_params={"lr": 10 ** (-3 + 2 * i / max(1, k - 1)), "momentum": 0.9})
        for i in range(k)
    ]


def train(cfgs: list[TrialConfig], data, pack: int) -> float:
    """Wall seconds to train ``cfgs`` ``pack`` at a time (1: ``run_trial`` one after another)."""
    started = time.perf_counter()
    for start in range(0, len(cfgs), pack):
        group = cfgs[start : start + pack]
        if pack == 1:
            assert run_trial(group[0], data).status is not None
        else:
            assert run_pack(group, data).error == ""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started


def shared(cfgs: list[TrialConfig], data, n: int) -> float:
    """Wall seconds for ``cfgs`` as separate Ray tasks on one GPU with ``num_gpus=1/n``."""
    import ray

    task = ray.remote(num_gpus=1 / n, max_calls=0)(lambda cfg, data: run_trial(cfg, data).status)
    data_ref = ray.put(data)
    ray.get([task.remote(cfgs[0], data_ref) for _ in range(n)])  # warm every process
    started = time.perf_counter()
    ray.get([task.remote(cfg, data_ref) for cfg in cfgs])
    return time.perf_counter() - started


def datasets(size: Size, device: str):
    """(name, model, dataset key for TrialConfig, DataSplits, batch) per cell."""
    cells = [
        ("digits", "simple_cnn", "digits", load_dataset("digits"), 32),
        ("fashion_mnist-shaped", "simple_cnn", "synthetic", synthetic((1, 28, 28), 1024, 512), 32),
    ]
    if device == "cuda":
        cifar = synthetic((3, 32, 32), 10000 if size is Size.FULL else 2048, 1000)
        cells += [
            ("cifar-shaped", "simple_cnn", "synthetic", cifar, 128),
            ("cifar-shaped", "resnet18", "synthetic", cifar, 128),
        ]
    return cells


def measure_training(size: Size, packs, k: int, device: str, result: BenchResult) -> dict[tuple[str, str], dict]:
    by_cell = {}
    for name, model, dataset, data, batch in datasets(size, device):
        train_images = len(data.train_x)
        solo = configs(k, dataset, model, "exact", batch, device)
        train(solo[:1], data, 1)  # warm-up: imports, the first optimizer step's lazy imports
        train(solo[:2], data, 2)
        cell = {}
        for update in ("exact", "fused"):
            for pack in packs:
                if pack == 1 and update == "fused":
                    continue
                if pack > k:
                    continue
                seconds = train(configs(k, dataset, model, update, batch, device), data, pack)
                row = {
                    "data": name,
                    "model": model,
                    "device": device,
                    "update": update,
                    "pack": pack,
                    "trials": k,
                    "seconds": seconds,
                    "trials_per_hour": k / seconds * 3600,
                    "images_per_s": k * train_images * EPOCHS / seconds,
                }
                cell[(update, pack)] = row
                result.rows.append(row)
                print(
                    f"  {name} {model} {update} pack {pack}: {seconds:.2f} s, {row['trials_per_hour']:.0f} trials/h",
                    flush=True,
                )
        solo_rate = cell[("exact", 1)]["trials_per_hour"]
        for row in cell.values():
            row["vs_pack_1"] = row["trials_per_hour"] / solo_rate
        if device == "cuda":
            import ray

            ray.init(num_gpus=1, include_dashboard=False, log_to_driver=False)
            for pack in packs:
                if 1 < pack <= k:
                    seconds = shared(solo, data, pack)
                    row = {
                        "data": name,
                        "model": model,
                        "device": device,
                        "update": f"shared 1/{pack} GPU",
                        "pack": 1,
                        "trials": k,
                        "seconds": seconds,
                        "trials_per_hour": k / seconds * 3600,
                        "images_per_s": k * train_images * EPOCHS / seconds,
                        "vs_pack_1": k / seconds * 3600 / solo_rate,
                    }
                    cell[("shared", pack)] = row
                    result.rows.append(row)
            ray.shutdown()
        by_cell[(name, model)] = cell
    return by_cell


def measure_sweep(k: int, result: BenchResult) -> dict[int, float]:
    """Trials/hour of whole sweeps, pack 1 against pack 8, one worker slot."""
    import ray

    from sweep.execution.launch import run_sweep

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    rates = {}
    with tempfile.TemporaryDirectory(prefix="bench-pack-") as tmp:
        for label, pack in (("warm-up", 8), ("pack 1", 1), ("pack 8", 8)):  # warm-up: worker imports, not recorded
            cfg = load_config(
                "quickstart",
                [
                    f"output_dir={tmp}",
                    f"name={label.replace(' ', '')}",
                    "optimizers=[momentum]",
                    f"trials={k}",
                    f"epochs={EPOCHS}",
                    "workers=1",
                    f"pack={pack}",
                    "pruner=none",
                    "sampler=random",
                    "reeval_seeds=0",
                    "report_figures=false",
                ],
                mode="sweep",
            )
            started = time.perf_counter()
            run_sweep(cfg)
            seconds = time.perf_counter() - started
            if label != "warm-up":
                rates[pack] = k / seconds * 3600
                result.rows.append(
                    {
                        "data": "digits",
                        "model": "simple_cnn",
                        "device": "cpu",
                        "update": "sweep",
                        "pack": pack,
                        "trials": k,
                        "seconds": seconds,
                        "trials_per_hour": rates[pack],
                    }
                )
    ray.shutdown()
    for row in result.rows:
        if row["update"] == "sweep":
            row["vs_pack_1"] = row["trials_per_hour"] / rates[1]
    return rates


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--packs", type=int, nargs="+", default=None, help="pack sizes (default: ci 1 2 4 8, full to 32)")
    ap.add_argument("--trials", type=int, default=None, help="K trials per cell (default: ci 8, full 32)")
    ap.add_argument("--no-sweep", action="store_true", help="skip the whole-sweep comparison")
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(1 if device == "cpu" else torch.get_num_threads())
    packs = tuple(args.packs or PACKS[args.size])
    k = args.trials or TRIALS[args.size]
    result = BenchResult(
        "packing",
        args.size,
        params={"packs": packs, "trials": k, "epochs": EPOCHS, "threads": torch.get_num_threads(), "device": device},
    )
    cells = measure_training(args.size, packs, k, device, result)
    digits = cells[("digits", "simple_cnn")]
    eight = digits.get(("exact", 8))
    result.headlines.append(
        Headline(
            "CPU: trials/hour, pack 8 over pack 1, simple_cnn / digits (training)",
            eight["vs_pack_1"] if eight and device == "cpu" else None,
            "x",
            f">= {CPU_TARGET:g}",
            (eight["vs_pack_1"] >= CPU_TARGET) if eight and device == "cpu" else None,
        )
    )
    if not args.no_sweep and device == "cpu" and 8 <= k:
        rates = measure_sweep(k, result)
        ratio = rates[8] / rates[1]
        result.headlines.append(
            Headline(
                "CPU: trials/hour, pack 8 over pack 1, whole sweeps (simple_cnn / digits)",
                ratio,
                "x",
                f">= {CPU_TARGET:g}",
                ratio >= CPU_TARGET,
            )
        )
    if device == "cuda":
        cell = cells[("cifar-shaped", "simple_cnn")]
        best = max(
            (row for (update, pack), row in cell.items() if update != "shared" and pack >= 16),
            key=lambda row: row["images_per_s"],
            default=None,
        )
        shared_best = max(
            (row["images_per_s"] for (update, _), row in cell.items() if update == "shared"), default=None
        )
        if best:
            solo_rate = cell[("exact", 1)]["images_per_s"]
            result.headlines.append(
                Headline(
                    "GPU: images/s, best pack >= 16 over one trial per GPU (simple_cnn)",
                    best["images_per_s"] / solo_rate,
                    "x",
                    f">= {GPU_SOLO_TARGET:g}",
                    best["images_per_s"] / solo_rate >= GPU_SOLO_TARGET,
                )
            )
            if shared_best:
                ratio = best["images_per_s"] / shared_best
                result.headlines.append(
                    Headline(
                        "GPU: images/s, best pack >= 16 over fractional sharing (simple_cnn)",
                        ratio,
                        "x",
                        f">= {GPU_SHARED_TARGET:g}",
                        ratio >= GPU_SHARED_TARGET,
                    )
                )
    else:
        result.notes.append("no GPU here: the GPU targets and fractional sharing were not measured")
    finish(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
