"""A pack: several trials of one optimizer trained together as one fused model on one device.

Each member is a whole trial as ``run_trial`` runs it: the same seed, so the same initial weights
and the same batches in the same order, its own hyperparameters (``optim.fused``), its own LR
schedule (a torch scheduler per member, stepped exactly as in a solo trial), its own per-epoch
reports, divergence check, checkpoints and outcome, and its own evaluation curve (with
``eval_every_steps``, the whole pack is evaluated mid-epoch at the steps a solo trial is).
tests/test_pack.py checks that every member follows the trajectory it would follow alone.

Members leave the pack: one whose loss diverges is evaluated where it stopped and dropped at the
check that finds it (its NaN stays in its own slice of every tensor meanwhile); one its reporter
prunes, or whose reporter fails, is dropped after its epoch. The pack is then compacted, so the
members left stop paying for the ones gone.

What only a whole pack can get wrong (an exception in the shared computation) ends the pack:
``PackResult.error`` says why, and the members not finished by then have no result (the worker
runs them again solo, from their checkpoints).

With ``pack_update=exact`` every registry optimizer packs: each member has its own, a solo trial's
optimizer over its own copy of its parameters (``optim.fused.MemberOptimizers``). A Schedule-Free
member is moved to its evaluation point and back exactly when its solo trial is
(``steps.EvalPoint``, one per member), and the pack's BatchNorm statistics are recalibrated per
member as a solo trial's are (``steps.recalibrate_batchnorm``). A member evaluated because it
diverged is the only one moved; the pack's recalibration then also resets the others' running
statistics, which they do not read before their own next recalibration.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from models import build_model
from models.packed import PackedModel
from optim import ScheduleDriver, resolve_hyperparameters
from optim.fused import FusedOptimizer, MemberOptimizers
from optim.optimizers import build_optimizer
from sweep.core.config import FUSED, TrialConfig
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

# What members of one pack may differ in; everything else (data, model, seed, epochs, batch size,
# device) they share, since they share the batches and the forward pass.
PER_MEMBER = frozenset({"optimizer_params", "schedule", "schedule_params", "l1"})


def unpackable(configs: Sequence[TrialConfig]) -> str | None:
    """Why these trials cannot run as one pack, or None if they can."""
    first = configs[0]
    for f in dataclasses.fields(first):
        if (
            f.name not in PER_MEMBER
            and f.name != "optimizer"
            and any(getattr(c, f.name) != getattr(first, f.name) for c in configs)
        ):
            return f"its trials differ in {f.name}"
    if any(c.optimizer != first.optimizer for c in configs):
        return "its trials differ in optimizer"
    if len({resolve_hyperparameters(c.optimizer, c.optimizer_params).get("formulation") for c in configs}) > 1:
        return "its trials differ in optimizer.formulation"
    if first.compile:
        return "compile=true does not run packed"
    return None


@dataclass
class PackResult:
    """One result per member in the pack's order; None for a member the pack did not finish
    because the pack itself failed (``error`` says why)."""

    results: list[TrialResult | None]
    error: str = ""


@dataclass
class _Member:
    index: int  # position in the pack as given
    cfg: TrialConfig
    reporter: Reporter | None
    save: Saver | None
    hp: dict
    schedule: ScheduleDriver
    lr_holder: torch.optim.Optimizer  # the schedule steps this one-parameter optimizer's LR
    point: EvalPoint  # a Schedule-Free member's training or evaluation point
    history: list[EpochMetrics] = field(default_factory=list)
    curve: list[CurvePoint] = field(default_factory=list)  # its evaluations, as its solo trial's
    first_loss: float | None = None
    loss_sum: float = 0.0  # this epoch's, on the host
    epoch_lr: float = 0.0  # the schedule's LR at this epoch's start
    result: TrialResult | None = None


def _lr_holder(lr: float) -> torch.optim.Optimizer:
    """What a member's torch scheduler steps: an optimizer holding only the member's LR."""
    return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)


def run_pack(
    configs: Sequence[TrialConfig],
    data: DataSplits | None = None,
    reporters: Sequence[Reporter | None] | None = None,
    saves: Sequence[Saver | None] | None = None,
    on_finish: Callable[[int, TrialResult], None] | None = None,
) -> PackResult:
    """Train ``configs`` (trials that ``unpackable`` accepts) as one pack. Like ``run_trial``, it
    never raises for a trial's own failure; ``StoreUnavailable`` from a reporter passes through.
    ``on_finish(i, result)`` is called as soon as member ``i`` has its result (a member that leaves
    early is recorded then, not when the pack ends); the pack goes on meanwhile."""
    why = unpackable(configs)
    if why:
        raise ValueError(f"these trials cannot run as one pack: {why}")
    reporters = list(reporters or [None] * len(configs))
    saves = list(saves or [None] * len(configs))
    started = time.perf_counter()
    timings = {"eval_seconds": 0.0}
    members: list[_Member] = []
    try:
        with warnings.catch_warnings():  # the members' schedulers step LRs of optimizers they do not see step
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            _Pack(configs, data, reporters, saves, members, timings, started, on_finish).train()
    except StoreUnavailable:
        raise
    except Exception as exc:  # the shared computation failed: no member can be blamed alone
        results = [m.result for m in members]
        return PackResult(results + [None] * (len(configs) - len(results)), f"{type(exc).__name__}: {exc}")
    return PackResult([m.result for m in members])


class _Pack:
    """A pack's training objects and running state, so that each part of the loop (a step, a check,
    an epoch's end) is a method of its own. ``members`` (the caller's list) gets each member as it
    is set up, so a pack that fails still has the results of those that finished."""

    def __init__(
        self,
        configs: Sequence[TrialConfig],
        data: DataSplits | None,
        reporters,
        saves,
        members: list[_Member],
        timings: dict[str, float],
        started: float,
        on_finish: Callable[[int, TrialResult], None] | None,
    ):
        self.cfg = cfg = configs[0]
        self.timings, self.started, self.on_finish = timings, started, on_finish
        self.device = device = pick_device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.data = data if data is not None else load_data(cfg)
        self.t = device_tensors(self.data, device)
        self.memory_format = torch.channels_last if resolve_auto(cfg.channels_last, device) else torch.contiguous_format
        model = build_model(cfg.model, self.data.in_shape, self.data.num_classes).to(
            device, memory_format=self.memory_format
        )
        self.n_train = len(self.t["train_x"])
        self.steps_per_epoch = math.ceil(self.n_train / cfg.batch_size)
        hps = [resolve_hyperparameters(c.optimizer, c.optimizer_params) for c in configs]
        self.model, self.pack = model, PackedModel(model, len(configs))
        self.fused = cfg.pack_update == FUSED
        self.optimizer = (FusedOptimizer if self.fused else MemberOptimizers)(cfg.optimizer, hps, self.pack.params)
        for i, (c, hp) in enumerate(zip(configs, hps)):
            holder = _lr_holder(hp["lr"]) if self.fused else self.optimizer.holder(i)
            schedule = ScheduleDriver(holder, c.schedule, c.schedule_params, c.epochs, self.steps_per_epoch)
            point = EvalPoint(holder, None if self.fused else functools.partial(self.optimizer.publish, holder))
            members.append(_Member(i, c, reporters[i], saves[i], hp, schedule, holder, point))
        self.active = list(members)  # in the pack's current order
        self.generator = torch.Generator(device=device).manual_seed(cfg.seed)
        self.bf16 = resolve_auto(cfg.bf16, device)
        self.check_every = divergence_check_steps(cfg, device)
        self.l1 = self.l1s()
        self.correct = torch.zeros(0)  # the epoch's correct predictions per active member, on the device
        self.evaluating = 0.0  # the epoch's evaluations of diverged members: not training time for the others

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def evaluated(self, split: str, members: list[_Member] | None = None) -> tuple[list[float], list[float]]:
        """Each member's mean loss and accuracy on ``split`` (val, test), its time counted as
        eval_seconds; ``members`` (default: all) are moved to their evaluation point first."""
        eval_started = time.perf_counter()
        try:
            moved = [m.point.to_eval() for m in (self.active if members is None else members)]
            if any(moved):
                cfg = self.cfg
                recalibrate_batchnorm(self.pack, self.t["train_x"], cfg.batch_size, self.memory_format, self.autocast)
            return evaluate(self.pack, self.t[f"{split}_x"], self.t[f"{split}_y"], self.autocast)
        finally:
            self.timings["eval_seconds"] += time.perf_counter() - eval_started

    def finish(self, member: _Member, status: Status, reason: str, **last: float) -> None:
        metrics = {
            **final_metrics(member.history, time.perf_counter() - self.started, **last),
            **target_metrics(member.curve, member.cfg.target_accuracy),
            **self.timings,
        }
        member.result = TrialResult(
            status, reason, len(member.history), metrics, list(member.history), list(member.curve)
        )
        if self.on_finish is not None:
            self.on_finish(member.index, member.result)

    def leave(self, gone: set[int]) -> None:
        """Compact the pack to the members not in ``gone`` (positions in ``active``)."""
        if not gone:
            return
        keep = [i for i in range(len(self.active)) if i not in gone]
        if keep:
            index = torch.tensor(keep, device=self.device)
            self.pack.select(index)
            self.optimizer.select(index, self.pack.params)
        self.active = [self.active[i] for i in keep]
        self.l1 = self.l1s()

    def lrs(self) -> torch.Tensor | None:
        """The fused update's per-member LRs (each member optimizer has its own)."""
        if not self.fused:
            return None
        return torch.tensor([m.schedule.lr for m in self.active], device=self.device, dtype=torch.float64)

    def l1s(self) -> torch.Tensor:
        return torch.tensor([m.cfg.l1 for m in self.active], device=self.device)

    def train(self) -> None:
        self.model.train()
        self.pack.train()
        for epoch in range(1, self.cfg.epochs + 1):
            seconds = self.run_epoch(epoch)
            if not self.active:
                return
            self.end_epoch(epoch, seconds)
            if not self.active:
                return
        test_losses, test_accs = self.evaluated("test")
        for position, m in enumerate(self.active):
            self.finish(m, Status.OK, "", test_loss=test_losses[position], test_accuracy=test_accs[position])

    def run_epoch(self, epoch: int) -> float:
        """Train one epoch (until every member has left, if they all diverge); its training seconds."""
        cfg = self.cfg
        for m in self.active:
            m.epoch_lr = m.schedule.lr
        epoch_started = time.perf_counter()
        for m in self.active:
            m.point.to_train()
        self.evaluating = 0.0
        order = torch.randperm(self.n_train, device=self.device, generator=self.generator)
        self.correct = torch.zeros(len(self.active), device=self.device, dtype=torch.long)
        unchecked: list[tuple[int, int, torch.Tensor]] = []
        lr = self.lrs()
        for step in range(self.steps_per_epoch):
            x, y = draw_batch(
                self.t, order, step, cfg.batch_size, self.data.augment, self.generator, self.memory_format
            )
            logits, losses = self.step(x, y, lr)
            lr = self.lrs()  # per step: warm-ups and one-cycle move it every batch
            self.correct += (logits.argmax(2) == y).sum(1)
            unchecked.append((step, len(y), losses.detach()))
            if len(unchecked) >= self.check_every or step + 1 == self.steps_per_epoch:
                if self.check(unchecked, epoch):
                    lr = self.lrs()
                    if not self.active:
                        return 0.0
                unchecked.clear()
            if mid_epoch_evaluation(cfg.eval_every_steps, self.steps_per_epoch, epoch, step):
                self.evaluate_mid_epoch(epoch, step + 1, epoch_started)
        self.sync()
        return time.perf_counter() - epoch_started - self.evaluating

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def evaluate_mid_epoch(self, epoch: int, steps: int, epoch_started: float) -> None:
        """Each member's validation after the epoch's ``steps``-th step (``eval_every_steps``), a
        point of its curve as in its solo trial; then back to training (a Schedule-Free member to
        its training point). Its time is eval_seconds, left out of the epoch's training time."""
        self.sync()
        stopped, eval_seconds = time.perf_counter(), self.timings["eval_seconds"]
        trained = stopped - epoch_started - self.evaluating
        _, val_accs = self.evaluated("val")
        cfg = self.cfg
        for m, accuracy in zip(self.active, val_accs):
            m.point.to_train()
            seconds = sum(h.epoch_seconds for h in m.history) + trained
            m.curve.append(
                curve_point(epoch, steps, self.steps_per_epoch, cfg.batch_size, self.n_train, seconds, accuracy)
            )
        spent = time.perf_counter() - stopped
        self.timings["eval_seconds"] = eval_seconds + spent
        self.evaluating += spent

    def step(self, x: torch.Tensor, y: torch.Tensor, lr: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step of every member on the batch; the logits and each member's loss."""
        n = len(self.active)
        with self.autocast():
            logits = self.pack(x)
            losses = F.cross_entropy(logits.float().flatten(0, 1), y.repeat(n), reduction="none").view(n, -1).mean(1)
        objective = losses.sum()
        if self.l1.any():
            objective = objective + (self.l1 * self.pack.l1()).sum()
        self.optimizer.zero_grad()
        objective.backward()
        self.optimizer.step(lr)
        for m in self.active:
            m.schedule.after_batch()
        return logits, losses

    def check(self, unchecked: list[tuple[int, int, torch.Tensor]], epoch: int) -> bool:
        """The divergence check (one host sync). A member that diverged is evaluated where it
        stopped, as a solo trial is, then leaves the pack. Returns whether any left."""
        first_losses = [m.first_loss for m in self.active]
        loss_sums = [m.loss_sum for m in self.active]
        diverged = read_losses(unchecked, first_losses, loss_sums, self.cfg.divergence_factor, epoch)
        for m, first_loss, loss_sum in zip(self.active, first_losses, loss_sums):
            m.first_loss, m.loss_sum = first_loss, loss_sum
        if not diverged:
            return False
        eval_started = time.perf_counter()
        val_losses, val_accs = self.evaluated("val", [self.active[position] for position in diverged])
        self.evaluating += time.perf_counter() - eval_started
        for position, reason in diverged.items():
            self.finish(
                self.active[position],
                Status.DIVERGED,
                reason,
                val_loss=val_losses[position],
                val_accuracy=val_accs[position],
            )
        keep = [i for i in range(len(self.active)) if i not in diverged]
        self.leave(set(diverged))
        self.correct = self.correct[torch.tensor(keep, device=self.device, dtype=torch.long)]
        return True

    def end_epoch(self, epoch: int, seconds: float) -> None:
        """Validate, record and report each member's epoch, step its schedule, checkpoint it when
        due; the members that stop here leave the pack."""
        val_losses, val_accs = self.evaluated("val")
        accuracies = self.correct.tolist()
        gone: set[int] = set()
        for position, m in enumerate(self.active):
            metrics = EpochMetrics(
                epoch,
                m.loss_sum / self.n_train,
                accuracies[position] / self.n_train,
                val_losses[position],
                val_accs[position],
                m.epoch_lr,
                seconds,
                self.n_train / seconds,
            )
            m.loss_sum = 0.0
            m.history.append(metrics)
            trained = sum(h.epoch_seconds for h in m.history)
            m.curve.append(
                curve_point(
                    epoch,
                    self.steps_per_epoch,
                    self.steps_per_epoch,
                    self.cfg.batch_size,
                    self.n_train,
                    trained,
                    metrics.val_accuracy,
                )
            )
            if not self.reported(m, metrics):
                gone.add(position)
                continue
            m.schedule.after_epoch(metrics.val_loss)
            if (
                m.save is not None
                and m.cfg.checkpoint_every
                and (epoch % m.cfg.checkpoint_every == 0 or epoch == m.cfg.epochs)
            ):
                m.save(
                    _member_checkpoint(
                        epoch,
                        m,
                        position,
                        self.pack,
                        self.optimizer,
                        self.generator,
                        self.data,
                        self.device,
                        self.memory_format,
                    )
                )
        self.leave(gone)

    def reported(self, m: _Member, metrics: EpochMetrics) -> bool:
        """Report the member's epoch; False (its result recorded) when it stops here: its validation
        loss diverged, its reporter pruned it, or its own reporting failed."""
        if not math.isfinite(metrics.val_loss):
            self.finish(
                m,
                Status.DIVERGED,
                f"validation loss {metrics.val_loss} at epoch {metrics.epoch}",
                val_loss=metrics.val_loss,
                val_accuracy=metrics.val_accuracy,
            )
            return False
        try:
            if m.reporter is not None:
                m.reporter(metrics)
        except PruneTrial as exc:
            self.finish(m, Status.PRUNED, str(exc) or "pruned")
            return False
        except StoreUnavailable:
            raise
        except Exception as exc:  # this member's own reporting failed: it fails alone
            self.finish(m, Status.FAILED, f"{type(exc).__name__}: {exc}")
            return False
        return True


def _member_checkpoint(
    epoch: int,
    m: _Member,
    position: int,
    pack: PackedModel,
    optimizer: FusedOptimizer | MemberOptimizers,
    generator: torch.Generator,
    data: DataSplits,
    device,
    memory_format,
) -> Checkpoint:
    """Member ``m`` (at ``position`` in the pack) as a solo trial's checkpoint: a solo trial, or a
    re-run of this one, resumes from it exactly."""
    with torch.random.fork_rng(devices=[]):  # building it must not move the global RNG the checkpoint saves
        model = build_model(m.cfg.model, data.in_shape, data.num_classes)
    model = model.to(device, memory_format=memory_format)
    model.load_state_dict(pack.member_state_dict(position))
    if isinstance(optimizer, MemberOptimizers):  # the member's optimizer is a solo optimizer already
        return Checkpoint.capture(epoch, model, m.lr_holder, m.schedule, generator, m.first_loss, m.history, m.curve)
    solo = build_optimizer(m.cfg.optimizer, model.parameters(), m.hp)
    group = solo.param_groups[0]
    # the LR and what the member's scheduler keeps beside it (initial_lr, one-cycle's max_lr, ...)
    group.update(
        {
            k: v
            for k, v in m.lr_holder.param_groups[0].items()
            if k == "lr" or (k != "params" and k not in m.lr_holder.defaults)
        }
    )
    names = [name for name, _ in model.named_parameters()]
    for index, state in optimizer.member_state(position, names).items():
        solo.state[group["params"][index]] = state
    return Checkpoint.capture(epoch, model, solo, m.schedule, generator, m.first_loss, m.history, m.curve)
