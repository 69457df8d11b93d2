"""One trial: train a model with one optimizer and schedule, report every epoch, never raise.

This is what the sweep engine runs thousands of times, so failures are outcomes: a NaN or
exploding loss ends the trial as ``diverged``, an exception as ``failed`` with its reason, and a
reporter that raises ``PruneTrial`` (the sweep's pruner) ends it as ``pruned``. The one exception
that passes through is ``StoreUnavailable`` from the reporter: a store that went away is not the
trial's fault, and must not use up its optimizer's budget.

Epochs are numbered from 1 everywhere (reports, MLflow steps, Optuna steps, messages).

Every ``checkpoint_every`` epochs and after the last one, once the epoch is reported (a pruned or
diverged epoch is not kept), ``save`` gets a ``Checkpoint`` (the last one is the trained model);
a trial given one as ``resume`` goes on from it exactly.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from models import build_model
from optim import ScheduleDriver, build_optimizer
from sweep.stores.checkpoints import Checkpoint
from sweep.core.config import AUTO, TrialConfig
from sweep.core.datasets import DataSplits, device_tensors, load_data
from sweep.core.errors import StoreUnavailable
from sweep.core.outcome import Status

__all__ = ["TrialConfig", "EpochMetrics", "TrialResult", "PruneTrial", "run_trial", "random_crop_flip"]


class PruneTrial(Exception):
    """Raised by a reporter to stop the trial early (the pruner decided it is not promising)."""


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int              # from 1
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    scheduled_lr: float     # the schedule's LR at the epoch's start (not the searched `lr`)
    epoch_seconds: float
    images_per_second: float

    def logged(self) -> dict[str, float]:
        """The per-epoch metrics as logged (the epoch is the step)."""
        return {k: v for k, v in asdict(self).items() if k != "epoch"}


@dataclass
class TrialResult:
    status: Status
    reason: str = ""
    epochs_run: int = 0
    metrics: dict[str, float] = field(default_factory=dict)  # final metrics, whatever the outcome
    history: list[EpochMetrics] = field(default_factory=list)

    @property
    def value(self) -> float:
        """The objective: the final validation accuracy (0 when none was measured)."""
        value = self.metrics.get("val_accuracy", 0.0)
        return value if math.isfinite(value) else 0.0


Reporter = Callable[[EpochMetrics], None]
Saver = Callable[[Checkpoint], None]


class _Diverged(Exception):
    def __init__(self, message: str, val_loss: float, val_accuracy: float):
        super().__init__(message)
        self.val_loss, self.val_accuracy = val_loss, val_accuracy


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """CIFAR augmentation on a whole batch at once: reflect-pad, random crop, random h-flip."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=generator)
    rows = (torch.arange(h, device=x.device)[None, :] + dy[:, None])[:, None, :, None]
    cols = (torch.arange(w, device=x.device)[None, :] + dx[:, None])[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channels = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    cropped = padded[batch, channels, rows, cols]
    flip = torch.rand(n, device=x.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], cropped.flip(-1), cropped)


def draw_batch(t: dict[str, torch.Tensor], order: torch.Tensor, step: int, batch_size: int, augment: bool,
               generator: torch.Generator, memory_format) -> tuple[torch.Tensor, torch.Tensor]:
    """The epoch's ``step``-th batch (augmented where the data is): a solo trial and a pack draw
    theirs here, so a pack's members see exactly the batches their solo trials would."""
    idx = order[step * batch_size:(step + 1) * batch_size]
    x, y = t["train_x"][idx], t["train_y"][idx]
    if augment:
        x = random_crop_flip(x, generator)
    return x.contiguous(memory_format=memory_format), y


def evaluate(model, x, y, autocast, batch_size: int = 1024) -> tuple[float, float]:
    """Mean loss and accuracy, summed on the device: one host sync for the whole set."""
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    with torch.no_grad(), autocast():
        for start in range(0, len(x), batch_size):
            logits = model(x[start:start + batch_size]).float()
            loss_sum += F.cross_entropy(logits, y[start:start + batch_size], reduction="sum")
            correct += (logits.argmax(1) == y[start:start + batch_size]).sum()
    model.train()
    return loss_sum.item() / len(x), correct.item() / len(x)


GPU_CHECK_STEPS = 32
COMPILE_BACKEND = "SWEEP_COMPILE_BACKEND"  # torch.compile's backend (default inductor; the tests use eager)


def resolve_auto(value: bool | str, device: torch.device) -> bool:
    """``auto`` settings (bf16, channels_last) are on where they pay: a CUDA device."""
    return device.type == "cuda" if value == AUTO else bool(value)


def divergence_check_steps(cfg: TrialConfig, device: torch.device) -> int:
    """How many batches run between two reads of the loss on the host. On a GPU each read stalls
    the launch queue, so it is read every 32 batches there (the steps in between still train; the
    divergent step is named exactly). On a CPU a read costs nothing: every batch."""
    if cfg.divergence_check_steps:
        return cfg.divergence_check_steps
    return GPU_CHECK_STEPS if device.type == "cuda" else 1




def run_trial(cfg: TrialConfig, data: DataSplits | None = None, reporter: Reporter | None = None,
              resume: Checkpoint | None = None, save: Saver | None = None) -> TrialResult:
    """Train ``cfg`` and return its outcome; ``data`` may be preloaded (the sweep shares it).
    ``resume``: go on after the checkpoint's epoch (its epochs are not reported again)."""
    history: list[EpochMetrics] = []
    timings: dict[str, float] = {}  # where the time went besides training: eval_seconds, compile_seconds
    started = time.perf_counter()

    def final(**last: float) -> dict[str, float]:
        return {**_final(history, time.perf_counter() - started, **last), **timings}

    try:
        return _train(cfg, data, reporter, history, timings, resume, save, final)
    except PruneTrial as exc:
        return TrialResult(Status.PRUNED, str(exc) or "pruned", len(history), final(), history)
    except _Diverged as exc:  # measured where it stopped: even a first-epoch divergence has metrics
        metrics = final(val_loss=exc.val_loss, val_accuracy=exc.val_accuracy)
        return TrialResult(Status.DIVERGED, str(exc), len(history), metrics, history)
    except StoreUnavailable:
        raise
    except Exception as exc:  # a failed trial is an outcome, not a crashed sweep
        return TrialResult(Status.FAILED, f"{type(exc).__name__}: {exc}", len(history), final(), history)


def _final(history: list[EpochMetrics], seconds: float, **last: float) -> dict[str, float]:
    """Final metrics: the last epoch's (or ``last`` where the trial stopped mid-epoch)."""
    metrics = {"epochs": float(len(history)), "seconds": seconds,
               "train_seconds": sum(h.epoch_seconds for h in history)}
    if history:
        metrics.update(val_accuracy=history[-1].val_accuracy, val_loss=history[-1].val_loss)
    metrics.update(last)
    accuracies = [h.val_accuracy for h in history] + ([last["val_accuracy"]] if "val_accuracy" in last else [])
    if accuracies:
        metrics["best_val_accuracy"] = max(a for a in accuracies)
    return metrics


def _train(cfg: TrialConfig, data: DataSplits | None, reporter: Reporter | None, history: list[EpochMetrics],
           timings: dict[str, float], resume: Checkpoint | None, save: Saver | None,
           final: Callable[..., dict[str, float]]) -> TrialResult:
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    if data is None:
        data = load_data(cfg)
    t = device_tensors(data, device)  # kept on the device across this worker's trials
    channels_last = resolve_auto(cfg.channels_last, device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(cfg.model, data.in_shape, data.num_classes).to(device, memory_format=memory_format)
    optimizer = build_optimizer(cfg.optimizer, model.parameters(), cfg.optimizer_params)
    # the compiled module shares the model's parameters; checkpoints and the optimizer use the model
    forward = torch.compile(model, backend=os.environ.get(COMPILE_BACKEND, "inductor")) if cfg.compile else model
    n_train = len(t["train_x"])
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    schedule = ScheduleDriver(optimizer, cfg.schedule, cfg.schedule_params, cfg.epochs, steps_per_epoch)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    bf16 = resolve_auto(cfg.bf16, device)
    check_every = divergence_check_steps(cfg, device)
    compile_seconds = 0.0
    timings["eval_seconds"] = 0.0

    def evaluated(x, y) -> tuple[float, float]:
        eval_started = time.perf_counter()
        try:
            return evaluate(forward, x, y, autocast)
        finally:
            timings["eval_seconds"] += time.perf_counter() - eval_started

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def diverged(message: str) -> _Diverged:
        val_loss, val_acc = evaluated(t["val_x"], t["val_y"])
        return _Diverged(message, val_loss, val_acc)

    first_loss, done = None, 0
    if resume is not None:
        resume.restore(model, optimizer, schedule, generator)
        first_loss, done = resume.first_loss, resume.epoch
        history.extend(resume.history)
    model.train()
    for epoch in range(done + 1, cfg.epochs + 1):
        lr = schedule.lr
        started = time.perf_counter()
        order = torch.randperm(n_train, device=device, generator=generator)
        loss_sum = 0.0
        correct = torch.zeros((), device=device, dtype=torch.long)
        unchecked: list[tuple[int, int, torch.Tensor]] = []  # (step, batch size, loss) not yet read on the host
        for step in range(steps_per_epoch):
            warming_up = cfg.compile and compile_seconds == 0.0
            step_started = time.perf_counter()
            x, y = draw_batch(t, order, step, cfg.batch_size, data.augment, generator, memory_format)
            with autocast():
                logits = forward(x)
                loss = F.cross_entropy(logits.float(), y)
            objective = loss
            if cfg.l1:
                objective = loss + cfg.l1 * sum(p.abs().sum() for p in model.parameters())
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            optimizer.step()
            schedule.after_batch()
            correct += (logits.argmax(1) == y).sum()
            unchecked.append((step, len(y), loss.detach()))
            if warming_up:  # the first step compiles forward and backward: timed apart from training
                sync()
                compile_seconds = timings["compile_seconds"] = time.perf_counter() - step_started
                started += compile_seconds
            if len(unchecked) < check_every and step + 1 < steps_per_epoch:
                continue
            # one host sync for the batches since the last check; the first divergent one is named
            values = [unchecked[0][2].item()] if len(unchecked) == 1 else torch.stack([u[2] for u in unchecked]).tolist()
            for (at, size, _), batch_loss in zip(unchecked, values):
                if first_loss is None:
                    first_loss = batch_loss
                if not math.isfinite(batch_loss) or batch_loss > cfg.divergence_factor * max(first_loss, 1e-3):
                    raise diverged(f"loss {batch_loss:.4g} at epoch {epoch} step {at + 1} "
                                   f"(started at {first_loss:.4g})")
                loss_sum += batch_loss * size
            unchecked.clear()
        sync()
        seconds = time.perf_counter() - started
        eval_started = time.perf_counter()
        val_loss, val_acc = evaluated(t["val_x"], t["val_y"])
        if cfg.compile and epoch == done + 1:  # the evaluation graph compiled on this first call
            compile_seconds += time.perf_counter() - eval_started
            timings["compile_seconds"] = compile_seconds
        metrics = EpochMetrics(epoch, loss_sum / n_train, correct.item() / n_train, val_loss, val_acc,
                               lr, seconds, n_train / seconds)
        history.append(metrics)
        if not math.isfinite(val_loss):
            raise _Diverged(f"validation loss {val_loss} at epoch {epoch}", val_loss, val_acc)
        if reporter is not None:
            reporter(metrics)
        schedule.after_epoch(val_loss)
        if save is not None and cfg.checkpoint_every and (epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs):
            save(Checkpoint.capture(epoch, model, optimizer, schedule, generator, first_loss, history))
    test_loss, test_acc = evaluated(t["test_x"], t["test_y"])
    return TrialResult(Status.OK, "", len(history), {**final(), "test_loss": test_loss, "test_accuracy": test_acc},
                       history)
