"""The product's trial loop against the loop a user would write by hand, on the same model and data.

Why: every second the trial loop spends outside forward/backward/step is paid by every trial of
every sweep, so the product's training throughput must stay within 3% of a bare PyTorch loop
(target: product images/s >= 0.97 x bare images/s).

(a) product  ``sweep.train.solo.run_trial(cfg, data, reporter, save=...)`` as a sweep worker runs it
             (sweep/execution/worker.py): per epoch the reporter queues the epoch's metrics for a real
             MLflow run (``TrackingSender`` on ``sqlite:///<tmp>/mlflow.db``, then ``catch_up`` and
             ``check``), and reports to a real Optuna trial in a journal-file study
             (``trial.report`` + ``should_prune`` with the product's median pruner; the decision is
             ignored so both sides train the same epochs); ``checkpoint_every=1`` with
             ``sweep.stores.checkpoints.saver`` stores a checkpoint after every epoch in the run's artifacts.
(b) bare     the same ``models.build_model`` and ``optim.build_optimizer`` (same hyperparameters),
             the data as torch tensors, per epoch a randperm shuffle, minibatch indexing, forward,
             cross_entropy, zero_grad, backward, step, then a validation pass (eval mode,
             no_grad); a test pass at the end, as the product does.

images/s = train images x epochs / wall seconds of the whole call (run_trial, or the whole bare
loop, model building and the tensor copy included on both sides). Per cell: one warm-up run of
each side (not counted), then the repeats interleaved, alternating which side goes first; the
headline is the median of the per-repeat ratios product / bare. The MLflow run, the Optuna
trial and the sender are set up before the product's clock starts and closed after it stops
(the driver's and the worker's per-trial work, measured by other benches).

Both sides use the same ``torch.set_num_threads`` (``--threads``; on a CPU 1, as a sweep worker
trains with one thread per trial: on 2 shared cores two OpenMP threads were 2-4x slower and far
noisier; with CUDA torch's default).

Usage:  .venv/bin/python bench/trial_loop.py [--size ci|full] [--json PATH] [--models ...]
            [--data cifar fashion_mnist] [--batch 64 512] [--epochs E] [--repeats R] [--threads N]
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: import `bench`, `sweep`

import numpy as np  # noqa: E402
import optuna  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.suite import BenchResult, Headline, Size, finish, median, parser  # noqa: E402
from models import build_model  # noqa: E402
from optim import build_optimizer  # noqa: E402
from sweep.core.config import TrialConfig, load_config  # noqa: E402
from sweep.core.datasets import DataSplits  # noqa: E402
from sweep.core.outcome import Status  # noqa: E402
from sweep.core.records import EpochMetrics  # noqa: E402
from sweep.stores import checkpoints  # noqa: E402
from sweep.stores.mlflow_sender import TrackingSender, use_short_requests  # noqa: E402
from sweep.stores.studies import DIRECTION, make_pruner, open_storage  # noqa: E402
from sweep.train.solo import run_trial  # noqa: E402

TARGET = 0.97
SHAPES = {"cifar": (3, 32, 32), "fashion_mnist": (1, 28, 28)}  # synthetic, shaped like the real ones
EVAL_BATCH = 1024  # the product evaluates in chunks of this size too
logging.getLogger("mlflow").setLevel(logging.ERROR)
optuna.logging.set_verbosity(optuna.logging.ERROR)


@dataclass(frozen=True)
class Plan:
    """How much each cell trains: images per split and epochs, per model (a ResNet-18 step costs
    ~40x a simple_cnn step on a CPU), and how often."""

    train: dict[str, int]
    held_out: dict[str, int]  # validation and test images each
    epochs: dict[str, int]
    batches: tuple[int, ...]
    repeats: int


# Per size and device: a GPU trains 50-500x faster, so it needs far more images for the training
# to outweigh the per-call costs (building the model, a checkpoint per epoch).
PLANS = {
    (Size.CI, "cpu"): Plan(
        train={"simple_cnn": 1024, "resnet18": 128},
        held_out={"simple_cnn": 256, "resnet18": 64},
        epochs={"simple_cnn": 2, "resnet18": 1},
        batches=(64,),
        repeats=3,
    ),
    (Size.CI, "cuda"): Plan(
        train={"simple_cnn": 16384, "resnet18": 4096},
        held_out={"simple_cnn": 2048, "resnet18": 1024},
        epochs={"simple_cnn": 2, "resnet18": 1},
        batches=(64,),
        repeats=3,
    ),
    (Size.FULL, "cpu"): Plan(
        train={"simple_cnn": 8192, "resnet18": 1024},
        held_out={"simple_cnn": 1024, "resnet18": 256},
        epochs={"simple_cnn": 2, "resnet18": 1},
        batches=(64, 512),
        repeats=5,
    ),
    (Size.FULL, "cuda"): Plan(
        train={"simple_cnn": 50000, "resnet18": 50000},
        held_out={"simple_cnn": 10000, "resnet18": 10000},
        epochs={"simple_cnn": 2, "resnet18": 2},
        batches=(64, 512),
        repeats=5,
    ),
}


@dataclass(frozen=True)
class Timing:
    """Wall seconds (the headline) and this process's CPU seconds over the same span (all threads:
    the MLflow sender's too), which a busy shared machine disturbs far less than the wall clock."""

    seconds: float
    cpu_seconds: float


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> Timing:
    return Timing(time.perf_counter() - start[0], time.process_time() - start[1])


@dataclass(frozen=True)
class ProductRun:
    time: Timing  # the whole run_trial call
    report_seconds: float  # inside the reporter (MLflow queue + catch_up, Optuna report + should_prune)
    save_seconds: float  # inside the checkpoint saver
    would_prune: int  # should_prune said yes (ignored)


def device_name() -> str:
    """What ``device=auto`` picks in the product."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic(shape: tuple[int, int, int], train: int, held_out: int, seed: int = 1234) -> DataSplits:
    """Random images with labels from a fixed random projection (learnable, as the product's
    ``synthetic`` dataset), split into train / validation / test; no augmentation."""
    rng = np.random.default_rng(seed)
    n = train + 2 * held_out
    x = rng.standard_normal((n, *shape), dtype=np.float32)
    projection = rng.standard_normal((int(np.prod(shape)), 10), dtype=np.float32)
    y = (x.reshape(n, -1) @ projection).argmax(1).astype(np.int64)
    val, test = slice(train, train + held_out), slice(train + held_out, n)
    return DataSplits(x[:train], y[:train], x[val], y[val], x[test], y[test], num_classes=10)


def trial_config(model: str, batch: int, epochs: int) -> TrialConfig:
    """The trial a ``sweep train`` of this model would run (default optimizer, schedule and
    checkpointing), in fp32 and the default memory format as the bare loop: the loops are compared,
    not bf16 against fp32 (the product may turn both on by default on a GPU)."""
    overrides = [
        f"model={model}",
        "dataset=synthetic",
        f"epochs={epochs}",
        f"batch_size={batch}",
        "device=auto",
        "bf16=false",
        "channels_last=false",
    ]
    return load_config("train", overrides).trial_config()


# ---- (b) the bare loop ----------------------------------------------------------------------------


def _evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    with torch.no_grad():
        for start in range(0, len(x), EVAL_BATCH):
            logits = model(x[start : start + EVAL_BATCH])
            loss_sum += F.cross_entropy(logits, y[start : start + EVAL_BATCH], reduction="sum")
            correct += (logits.argmax(1) == y[start : start + EVAL_BATCH]).sum()
    model.train()
    return loss_sum.item() / len(x), correct.item() / len(x)


def run_bare(cfg: TrialConfig, data: DataSplits) -> Timing:
    """The hand-written loop, timed from start to trained-and-tested."""
    device = torch.device(device_name())
    started = clock()
    torch.manual_seed(cfg.seed)
    t = {
        name: torch.from_numpy(getattr(data, name)).to(device)
        for name in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")
    }
    model = build_model(cfg.model, data.in_shape, data.num_classes).to(device)
    optimizer = build_optimizer(cfg.optimizer, model.parameters(), cfg.optimizer_params)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    n = len(t["train_x"])
    model.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(n, device=device, generator=generator)
        for start in range(0, n, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            loss = F.cross_entropy(model(t["train_x"][idx]), t["train_y"][idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        _evaluate(model, t["val_x"], t["val_y"])
    _evaluate(model, t["test_x"], t["test_y"])
    synchronize(device)
    return since(started)


# ---- (a) the product --------------------------------------------------------------------------------


class Product:
    """Real local stores, as a sweep without a tracking server has them: MLflow on SQLite with the
    run's artifacts (checkpoints) in a folder, Optuna in a journal file."""

    def __init__(self, folder: Path):
        from mlflow import MlflowClient

        use_short_requests()  # as a worker does (no effect on a SQLite store)
        self.folder = folder
        self.uri = f"sqlite:///{folder / 'mlflow.db'}"
        self.artifacts = folder / "artifacts"
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment = self.client.create_experiment("bench-trial-loop", artifact_location=self.artifacts.as_uri())
        self.storage = open_storage(f"journal:///{folder / 'optuna.journal'}")
        self.studies: dict[str, optuna.Study] = {}

    def study(self, name: str, epochs: int) -> optuna.Study:
        if name not in self.studies:
            self.studies[name] = optuna.create_study(
                study_name=name, storage=self.storage, direction=DIRECTION, pruner=make_pruner("median", epochs)
            )
        return self.studies[name]

    def run(self, cfg: TrialConfig, data: DataSplits, study_name: str) -> ProductRun:
        study = self.study(study_name, cfg.epochs)
        trial = study.ask()
        run_id = self.client.create_run(self.experiment).info.run_id
        spent = {"report": 0.0, "save": 0.0, "prune": 0}
        with (
            checkpoints.saver(self.uri, run_id, str(self.artifacts)) as store,
            TrackingSender(self.uri, run_id, cfg.tracking_retry_s) as sender,
        ):

            def report(m: EpochMetrics) -> None:  # sweep/execution/worker.py's reporter, less resuming
                t0 = time.perf_counter()
                sender.log_epoch(m.epoch, m.logged())
                sender.catch_up()
                sender.check()
                trial.report(m.val_accuracy, m.epoch)
                spent["prune"] += trial.should_prune()  # ignored: both sides train every epoch
                spent["report"] += time.perf_counter() - t0

            def save(checkpoint: checkpoints.Checkpoint) -> None:
                t0 = time.perf_counter()
                store(checkpoint)
                spent["save"] += time.perf_counter() - t0

            started = clock()
            result = run_trial(cfg, data, report, save=save)
            timing = since(started)
            sender.flush()
        if result.status is not Status.OK or result.epochs_run != cfg.epochs:
            raise RuntimeError(
                f"product trial ended {result.status.value} after {result.epochs_run} epochs: {result.reason}"
            )
        study.tell(trial, result.value)
        self.client.set_terminated(run_id)
        stored = checkpoints.stored_epochs(self.uri, run_id, str(self.artifacts))
        if stored != [cfg.epochs]:
            raise RuntimeError(f"expected the run to keep its last checkpoint only, found epochs {stored}")
        shutil.rmtree(self.artifacts / run_id, ignore_errors=True)  # ~90 MB per ResNet-18 run
        return ProductRun(timing, spent["report"], spent["save"], spent["prune"])


# ---- one cell ---------------------------------------------------------------------------------------


def measure_cell(
    product: Product, model: str, data_name: str, batch: int, plan: Plan, epochs: int, repeats: int
) -> tuple[dict, Headline]:
    data = synthetic(SHAPES[data_name], plan.train[model], plan.held_out[model])
    cfg = trial_config(model, batch, epochs)
    images = len(data.train_x) * cfg.epochs
    study = f"{model}-{data_name}-{batch}"
    run_bare(cfg, data)  # warm-up: allocator, kernels, MLflow tables, first imports
    product.run(cfg, data, study)
    bare: list[Timing] = []
    runs: list[ProductRun] = []
    ratios, cpu_ratios, loop_ratios = [], [], []
    for rep in range(repeats):
        order = ("bare", "product") if rep % 2 == 0 else ("product", "bare")
        for side in order:
            if side == "bare":
                bare.append(run_bare(cfg, data))
            else:
                runs.append(product.run(cfg, data, study))
        ratios.append(bare[-1].seconds / runs[-1].time.seconds)  # (images/product s) / (images/bare s)
        cpu_ratios.append(bare[-1].cpu_seconds / runs[-1].time.cpu_seconds)
        loop_ratios.append(bare[-1].seconds / (runs[-1].time.seconds - runs[-1].report_seconds - runs[-1].save_seconds))
        print(
            f"  {model} {data_name} batch {batch} repeat {rep + 1}: bare {bare[-1].seconds:.2f}s "
            f"product {runs[-1].time.seconds:.2f}s ratio {ratios[-1]:.3f} (CPU time ratio {cpu_ratios[-1]:.3f})",
            flush=True,
        )
    ratio = median(ratios)
    bare_s, product_s = median(t.seconds for t in bare), median(r.time.seconds for r in runs)
    row = {
        "model": model,
        "data": data_name,
        "batch": batch,
        "device": device_name(),
        "bare images/s": images / bare_s,
        "product images/s": images / product_s,
        "ratio": ratio,
        "repeats": repeats,
        "CPU-time ratio": median(cpu_ratios),
        "ratio less report+checkpoint": median(loop_ratios),
        "train images": len(data.train_x),
        "epochs": cfg.epochs,
        "bare s": bare_s,
        "product s": product_s,
        "report s/epoch": median(r.report_seconds for r in runs) / cfg.epochs,
        "checkpoint s/epoch": median(r.save_seconds for r in runs) / cfg.epochs,
        "should_prune said yes": sum(r.would_prune for r in runs),
        "ratios": [round(x, 3) for x in ratios],
    }
    headline = Headline(
        f"images/s ratio, {model}, {data_name}, batch {batch}", ratio, "x", f">= {TARGET}", ratio >= TARGET
    )
    return row, headline


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["simple_cnn", "resnet18"])
    ap.add_argument("--data", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--batch", type=int, nargs="+", default=None, help="batch sizes (ci: 64; full: 64 512)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per run (default: per model and size)")
    ap.add_argument("--repeats", type=int, default=None, help="ci: 3, full: 5")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads for both sides "
        "(default: 1 on a CPU, torch's default with CUDA; 0: torch's default)",
    )
    args = ap.parse_args(argv)
    plan = PLANS[(args.size, device_name())]
    batches = tuple(args.batch or plan.batches)
    repeats = args.repeats or plan.repeats
    # one thread on a CPU, as a sweep's worker trains (num_cpus=1): with all cores, torch's OpenMP
    # threads and the product's background threads (MLflow sender, checkpoint writer) contend
    threads = args.threads if args.threads is not None else (0 if torch.cuda.is_available() else 1)
    if threads > 0:
        torch.set_num_threads(threads)
    print(
        f"torch {torch.__version__} on {device_name()}, {torch.get_num_threads()} threads; "
        f"repeats={repeats} batches={list(batches)}",
        flush=True,
    )

    rows, headlines = [], []
    folder = Path(tempfile.mkdtemp(prefix="bench-trial-loop-"))
    try:
        product = Product(folder)
        for model in args.models:
            for data_name in args.data:
                for batch in batches:
                    epochs = args.epochs or plan.epochs[model]
                    row, headline = measure_cell(product, model, data_name, batch, plan, epochs, repeats)
                    rows.append(row)
                    headlines.append(headline)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    notes = [
        "product: run_trial with MLflow logging ON (TrackingSender, one log_batch per epoch to sqlite, "
        "catch_up per epoch), Optuna ON (journal study, report + should_prune per epoch, decision ignored) "
        "and checkpointing ON (checkpoint_every=1, sweep.stores.checkpoints.saver into the run's artifacts)",
        "ratio = median over repeats of (product images/s) / (bare images/s), repeats interleaved, "
        "one warm-up of each side per cell",
        f"torch threads: {torch.get_num_threads()} on both sides; fp32 and the default memory format on both "
        "sides (bf16=false channels_last=false in the product's config)",
        "CPU-time ratio: the same ratio from this process's CPU seconds (all threads), less disturbed by "
        "other jobs on a shared machine than the wall clock; on a GPU it mostly measures host overhead",
        "ratio less report+checkpoint: the wall ratio with the time inside the reporter and the saver taken "
        "out of the product's, i.e. the loop itself against the bare loop",
        "report s/epoch and checkpoint s/epoch: time inside the product's reporter and saver (included in "
        "product s); synthetic data, no augmentation on either side",
    ]
    params = {
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "batches": list(batches),
        "models": args.models,
        "data": args.data,
        "torch": torch.__version__,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    finish(BenchResult("trial_loop", args.size, rows, headlines, notes, params), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
