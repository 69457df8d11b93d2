"""One trial: train a model with one optimizer and schedule, report every epoch, never raise.

This is what the sweep engine runs thousands of times, so failures are outcomes: a NaN or
exploding loss ends the trial as ``diverged``, an exception as ``failed`` with its reason, and a
reporter that raises ``PruneTrial`` (the sweep's pruner) ends it as ``pruned``. The one exception
that passes through is ``StoreUnavailable`` from the reporter: a store that went away is not the
trial's fault, and must not use up its optimizer's budget.

Epochs are numbered from 1 everywhere (reports, MLflow steps, Optuna steps, messages).

Every validation evaluation is a point of the trial's curve (``core.target``): each epoch's end,
and with ``eval_every_steps`` > 0 one after every N-th optimizer step too (counted across epochs),
whose time, like every evaluation's, is eval_seconds and left out of the epoch's training seconds.
With ``target_accuracy`` set, the final metrics say whether and when the curve reached it.

Every ``checkpoint_every`` epochs and after the last one, once the epoch is reported (a pruned or
diverged epoch is not kept), ``save`` gets a ``Checkpoint`` (the last one is the trained model);
a trial given one as ``resume`` goes on from it exactly.

A Schedule-Free optimizer (``steps.EvalPoint``) is moved to its evaluation point inside every
evaluation, stays there through the epoch's report and checkpoint (a checkpoint holds the weights
to evaluate), and goes back to its training point when the next epoch starts (or, evaluated
mid-epoch, at once). A model with BatchNorm then gets its statistics recomputed at the evaluation
weights (``steps.recalibrate_batchnorm``), counted in ``eval_seconds``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from models import build_model
from optim import ScheduleDriver, build_optimizer
from sweep.core.config import TrialConfig
from sweep.core.datasets import DataSplits, device_tensors, load_data
from sweep.core.errors import StoreUnavailable
from sweep.core.outcome import Status
from sweep.core.records import Checkpoint, EpochMetrics, PruneTrial, Reporter, Saver, TrialResult
from sweep.core.target import CurvePoint
from sweep.train.steps import (
    EvalPoint,
    curve_point,
    divergence_check_steps,
    draw_batch,
    evaluate,
    final_metrics,
    mid_epoch_evaluation,
    pick_device,
    read_losses,
    recalibrate_batchnorm,
    resolve_auto,
    target_metrics,
)

__all__ = ["TrialConfig", "run_trial"]

COMPILE_BACKEND = "SWEEP_COMPILE_BACKEND"  # torch.compile's backend (default inductor; the tests use eager)


class _Diverged(Exception):
    def __init__(self, message: str, val_loss: float, val_accuracy: float):
        super().__init__(message)
        self.val_loss, self.val_accuracy = val_loss, val_accuracy


def run_trial(
    cfg: TrialConfig,
    data: DataSplits | None = None,
    reporter: Reporter | None = None,
    resume: Checkpoint | None = None,
    save: Saver | None = None,
) -> TrialResult:
    """Train ``cfg`` and return its outcome; ``data`` may be preloaded (the sweep shares it).
    ``resume``: go on after the checkpoint's epoch (its epochs are not reported again)."""
    history: list[EpochMetrics] = []
    curve: list[CurvePoint] = []  # every validation evaluation, mid-epoch ones too
    timings: dict[str, float] = {}  # where the time went besides training: eval_seconds, compile_seconds
    started = time.perf_counter()

    def ended(status: Status, reason: str, **last: float) -> TrialResult:
        metrics = {
            **final_metrics(history, time.perf_counter() - started, **last),
            **target_metrics(curve, cfg.target_accuracy),
            **timings,
        }
        return TrialResult(status, reason, len(history), metrics, history, curve)

    try:
        return _Trial(cfg, data, reporter, save, history, curve, timings).train(resume, ended)
    except PruneTrial as exc:
        return ended(Status.PRUNED, str(exc) or "pruned")
    except _Diverged as exc:  # measured where it stopped: even a first-epoch divergence has metrics
        return ended(Status.DIVERGED, str(exc), val_loss=exc.val_loss, val_accuracy=exc.val_accuracy)
    except StoreUnavailable:
        raise
    except Exception as exc:  # a failed trial is an outcome, not a crashed sweep
        return ended(Status.FAILED, f"{type(exc).__name__}: {exc}")


class _Trial:
    """One trial's training objects and running state, so that each part of the loop (a step, an
    epoch, its end) is a method of its own. Built in the order that draws the RNGs as before."""

    def __init__(
        self,
        cfg: TrialConfig,
        data: DataSplits | None,
        reporter: Reporter | None,
        save: Saver | None,
        history: list[EpochMetrics],
        curve: list[CurvePoint],
        timings: dict[str, float],
    ):
        self.cfg, self.reporter, self.save, self.history, self.timings = cfg, reporter, save, history, timings
        self.curve = curve
        self.device = device = pick_device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.data = data if data is not None else load_data(cfg)
        self.t = device_tensors(self.data, device)  # kept on the device across this worker's trials
        channels_last = resolve_auto(cfg.channels_last, device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = build_model(cfg.model, self.data.in_shape, self.data.num_classes).to(
            device, memory_format=self.memory_format
        )
        self.optimizer = build_optimizer(cfg.optimizer, self.model.parameters(), cfg.optimizer_params)
        self.point = EvalPoint(self.optimizer)  # Schedule-Free: where its parameters are
        # the compiled module shares the model's parameters; checkpoints and the optimizer use the model
        self.forward = (
            torch.compile(self.model, backend=os.environ.get(COMPILE_BACKEND, "inductor"))
            if cfg.compile
            else self.model
        )
        self.n_train = len(self.t["train_x"])
        self.steps_per_epoch = math.ceil(self.n_train / cfg.batch_size)
        self.schedule = ScheduleDriver(
            self.optimizer, cfg.schedule, cfg.schedule_params, cfg.epochs, self.steps_per_epoch
        )
        self.generator = torch.Generator(device=device).manual_seed(cfg.seed)
        self.bf16 = resolve_auto(cfg.bf16, device)
        self.check_every = divergence_check_steps(cfg, device)
        self.compile_seconds = 0.0
        self.first_losses: list[float | None] = [None]  # read_losses' per-member list, of one member
        self.eval_compiled = False  # under torch.compile: the first validation compiles its graph
        timings["eval_seconds"] = 0.0

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def evaluated(self, split: str) -> tuple[float, float]:
        """Mean loss and accuracy on ``split`` (val, test) at the optimizer's evaluation point, its
        time (BatchNorm's recalibration there included) counted as eval_seconds."""
        eval_started = time.perf_counter()
        try:
            if self.point.to_eval():
                recalibrate_batchnorm(
                    self.model, self.t["train_x"], self.cfg.batch_size, self.memory_format, self.autocast
                )
            losses, accuracies = evaluate(self.forward, self.t[f"{split}_x"], self.t[f"{split}_y"], self.autocast)
            return losses[0], accuracies[0]
        finally:
            self.timings["eval_seconds"] += time.perf_counter() - eval_started

    def validated(self) -> tuple[float, float]:
        """``evaluated("val")``; under torch.compile the first one compiles the evaluation graph,
        its time then counted as compile_seconds too."""
        eval_started = time.perf_counter()
        val_loss, val_acc = self.evaluated("val")
        if self.cfg.compile and not self.eval_compiled:
            self.eval_compiled = True
            self.compile_seconds += time.perf_counter() - eval_started
            self.timings["compile_seconds"] = self.compile_seconds
        return val_loss, val_acc

    def train(self, resume: Checkpoint | None, ended: Callable[..., TrialResult]) -> TrialResult:
        done = 0
        if resume is not None:
            resume.restore(self.model, self.optimizer, self.schedule, self.generator)
            self.point.restored()
            self.first_losses[0], done = resume.first_loss, resume.epoch
            self.history.extend(resume.history)
            self.curve.extend(resume.points())
        self.model.train()
        for epoch in range(done + 1, self.cfg.epochs + 1):
            lr = self.schedule.lr
            loss_sum, correct, seconds = self.run_epoch(epoch)
            self.end_epoch(epoch, lr, loss_sum, correct, seconds)
        test_loss, test_acc = self.evaluated("test")
        return ended(Status.OK, "", test_loss=test_loss, test_accuracy=test_acc)

    def run_epoch(self, epoch: int) -> tuple[float, torch.Tensor, float]:
        """Train one epoch: its loss sum (read on the host), its correct predictions (on the device)
        and its training seconds (the compile step and mid-epoch evaluations left out)."""
        cfg = self.cfg
        started = time.perf_counter()
        self.point.to_train()
        order = torch.randperm(self.n_train, device=self.device, generator=self.generator)
        loss_sums = [0.0]
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        unchecked: list[tuple[int, int, torch.Tensor]] = []  # (step, batch size, loss) not yet read on the host
        for step in range(self.steps_per_epoch):
            warming_up = cfg.compile and self.compile_seconds == 0.0
            step_started = time.perf_counter()
            x, y = draw_batch(
                self.t, order, step, cfg.batch_size, self.data.augment, self.generator, self.memory_format
            )
            logits, loss = self.step(x, y)
            correct += (logits.argmax(1) == y).sum()
            unchecked.append((step, len(y), loss.detach()))
            if warming_up:  # the first step compiles forward and backward: timed apart from training
                self.sync()
                self.compile_seconds = self.timings["compile_seconds"] = time.perf_counter() - step_started
                started += self.compile_seconds
            if len(unchecked) >= self.check_every or step + 1 == self.steps_per_epoch:
                # one host sync for the batches since the last check; the first divergent one is named
                diverged = read_losses(unchecked, self.first_losses, loss_sums, cfg.divergence_factor, epoch)
                if diverged:
                    val_loss, val_acc = self.evaluated("val")
                    raise _Diverged(diverged[0], val_loss, val_acc)
                unchecked.clear()
            if mid_epoch_evaluation(cfg.eval_every_steps, self.steps_per_epoch, epoch, step):
                started += self.evaluate_mid_epoch(epoch, step + 1, started)
        self.sync()
        return loss_sums[0], correct, time.perf_counter() - started

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on the batch; its logits and (unregularized) loss."""
        with self.autocast():
            logits = self.forward(x)
            loss = F.cross_entropy(logits.float(), y)
        objective = loss
        if self.cfg.l1:
            objective = loss + self.cfg.l1 * sum(p.abs().sum() for p in self.model.parameters())
        self.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        self.optimizer.step()
        self.schedule.after_batch()
        return logits, loss

    def evaluate_mid_epoch(self, epoch: int, steps: int, started: float) -> float:
        """The validation after the epoch's ``steps``-th step (``eval_every_steps``), its epoch's
        training timed from ``started``, as a curve point; then back to training (a Schedule-Free
        optimizer to its training point). Returns its seconds: eval_seconds, not training time."""
        self.sync()
        stopped, eval_seconds = time.perf_counter(), self.timings["eval_seconds"]
        seconds = sum(h.epoch_seconds for h in self.history) + stopped - started
        _, val_acc = self.validated()
        self.point.to_train()
        cfg = self.cfg
        self.curve.append(
            curve_point(epoch, steps, self.steps_per_epoch, cfg.batch_size, self.n_train, seconds, val_acc)
        )
        spent = time.perf_counter() - stopped
        self.timings["eval_seconds"] = eval_seconds + spent
        return spent

    def end_epoch(self, epoch: int, lr: float, loss_sum: float, correct: torch.Tensor, seconds: float) -> None:
        """Validate, record and report the epoch, step the schedule, and checkpoint when due."""
        cfg, n_train = self.cfg, self.n_train
        val_loss, val_acc = self.validated()
        metrics = EpochMetrics(
            epoch, loss_sum / n_train, correct.item() / n_train, val_loss, val_acc, lr, seconds, n_train / seconds
        )
        self.history.append(metrics)
        trained = sum(h.epoch_seconds for h in self.history)
        self.curve.append(
            curve_point(epoch, self.steps_per_epoch, self.steps_per_epoch, cfg.batch_size, n_train, trained, val_acc)
        )
        if not math.isfinite(val_loss):
            raise _Diverged(f"validation loss {val_loss} at epoch {epoch}", val_loss, val_acc)
        if self.reporter is not None:
            self.reporter(metrics)
        self.schedule.after_epoch(val_loss)
        if (
            self.save is not None
            and cfg.checkpoint_every
            and (epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs)
        ):
            self.save(
                Checkpoint.capture(
                    epoch,
                    self.model,
                    self.optimizer,
                    self.schedule,
                    self.generator,
                    self.first_losses[0],
                    self.history,
                    self.curve,
                )
            )
