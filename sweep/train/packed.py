"""A pack: several trials of one optimizer trained together as one fused model on one device.

Each member is a whole trial as ``run_trial`` runs it: the same seed, so the same initial weights
and the same batches in the same order, its own hyperparameters (``optim.fused``), its own LR
schedule (a torch scheduler per member, stepped exactly as in a solo trial), its own per-epoch
reports, divergence check, checkpoints and outcome. tests/test_pack.py checks that every member
follows the trajectory it would follow alone.

Members leave the pack: one whose loss diverges is evaluated where it stopped and dropped at the
check that finds it (its NaN stays in its own slice of every tensor meanwhile); one its reporter
prunes, or whose reporter fails, is dropped after its epoch. The pack is then compacted, so the
members left stop paying for the ones gone.

What only a whole pack can get wrong (an exception in the shared computation) ends the pack:
``PackResult.error`` says why, and the members not finished by then have no result (the worker
runs them again solo, from their checkpoints).
"""
from __future__ import annotations

import dataclasses
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from models import build_model
from models.packed import PackedModel
from optim import ScheduleDriver, resolve_hyperparameters
from optim.fused import FusedOptimizer, MemberOptimizers
from optim.optimizers import build_optimizer
from sweep.stores.checkpoints import Checkpoint
from sweep.core.config import FUSED, TrialConfig
from sweep.core.datasets import DataSplits, device_tensors, load_data
from sweep.core.errors import StoreUnavailable
from sweep.core.outcome import Status
from sweep.train.solo import (EpochMetrics, PruneTrial, Reporter, Saver, TrialResult, _final, divergence_check_steps,
                         draw_batch, pick_device, resolve_auto)

# What members of one pack may differ in; everything else (data, model, seed, epochs, batch size,
# device) they share, since they share the batches and the forward pass.
PER_MEMBER = frozenset({"optimizer_params", "schedule", "schedule_params", "l1"})


def unpackable(configs: Sequence[TrialConfig]) -> str | None:
    """Why these trials cannot run as one pack, or None if they can."""
    first = configs[0]
    for f in dataclasses.fields(first):
        if f.name not in PER_MEMBER and f.name != "optimizer" and any(getattr(c, f.name) != getattr(first, f.name)
                                                                      for c in configs):
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
    index: int                      # position in the pack as given
    cfg: TrialConfig
    reporter: Reporter | None
    save: Saver | None
    hp: dict
    schedule: ScheduleDriver
    lr_holder: torch.optim.Optimizer  # the schedule steps this one-parameter optimizer's LR
    history: list[EpochMetrics] = field(default_factory=list)
    first_loss: float | None = None
    loss_sum: float = 0.0           # this epoch's, on the host
    epoch_lr: float = 0.0           # the schedule's LR at this epoch's start
    result: TrialResult | None = None


def _lr_holder(lr: float) -> torch.optim.Optimizer:
    """What a member's torch scheduler steps: an optimizer holding only the member's LR."""
    return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)


def run_pack(configs: Sequence[TrialConfig], data: DataSplits | None = None,
             reporters: Sequence[Reporter | None] | None = None,
             saves: Sequence[Saver | None] | None = None,
             on_finish: Callable[[int, TrialResult], None] | None = None) -> PackResult:
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
            _train(configs, data, reporters, saves, members, timings, started, on_finish)
    except StoreUnavailable:
        raise
    except Exception as exc:  # the shared computation failed: no member can be blamed alone
        results = [m.result for m in members]
        return PackResult(results + [None] * (len(configs) - len(results)), f"{type(exc).__name__}: {exc}")
    return PackResult([m.result for m in members])


def _train(configs, data, reporters, saves, members: list[_Member], timings, started, on_finish) -> None:
    cfg = configs[0]
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    if data is None:
        data = load_data(cfg)
    t = device_tensors(data, device)
    memory_format = torch.channels_last if resolve_auto(cfg.channels_last, device) else torch.contiguous_format
    model = build_model(cfg.model, data.in_shape, data.num_classes).to(device, memory_format=memory_format)
    n_train = len(t["train_x"])
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    hps = [resolve_hyperparameters(c.optimizer, c.optimizer_params) for c in configs]
    pack = PackedModel(model, len(configs))
    fused = cfg.pack_update == FUSED
    optimizer = (FusedOptimizer if fused else MemberOptimizers)(cfg.optimizer, hps, pack.params)
    for i, (c, hp) in enumerate(zip(configs, hps)):
        holder = _lr_holder(hp["lr"]) if fused else optimizer.holder(i)
        members.append(_Member(i, c, reporters[i], saves[i], hp,
                               ScheduleDriver(holder, c.schedule, c.schedule_params, c.epochs, steps_per_epoch), holder))
    active = list(members)  # in the pack's current order
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    bf16 = resolve_auto(cfg.bf16, device)
    check_every = divergence_check_steps(cfg, device)

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def evaluated(x, y) -> tuple[list[float], list[float]]:
        eval_started = time.perf_counter()
        try:
            return _evaluate(pack, x, y, autocast)
        finally:
            timings["eval_seconds"] += time.perf_counter() - eval_started

    def finish(member: _Member, status: Status, reason: str, **last: float) -> None:
        metrics = {**_final(member.history, time.perf_counter() - started, **last), **timings}
        member.result = TrialResult(status, reason, len(member.history), metrics, list(member.history))
        if on_finish is not None:
            on_finish(member.index, member.result)

    def leave(gone: set[int]) -> list[_Member]:
        """Compact the pack to the members not in ``gone`` (positions in ``active``)."""
        if not gone:
            return active
        keep = [i for i in range(len(active)) if i not in gone]
        if keep:
            index = torch.tensor(keep, device=device)
            pack.select(index)
            optimizer.select(index, pack.params)
        return [active[i] for i in keep]

    def lrs() -> torch.Tensor | None:
        """The fused update's per-member LRs (each member optimizer has its own)."""
        return torch.tensor([m.schedule.lr for m in active], device=device, dtype=torch.float64) if fused else None

    model.train()
    pack.train()
    l1 = torch.tensor([m.cfg.l1 for m in members], device=device)
    for epoch in range(1, cfg.epochs + 1):
        for m in active:
            m.epoch_lr = m.schedule.lr
        epoch_started = time.perf_counter()
        evaluating = 0.0  # a diverged member's evaluation mid-epoch: not training time for the others
        order = torch.randperm(n_train, device=device, generator=generator)
        correct = torch.zeros(len(active), device=device, dtype=torch.long)
        unchecked: list[tuple[int, int, torch.Tensor]] = []
        lr = lrs()
        for step in range(steps_per_epoch):
            x, y = draw_batch(t, order, step, cfg.batch_size, data.augment, generator, memory_format)
            with autocast():
                logits = pack(x)
                losses = F.cross_entropy(logits.float().flatten(0, 1), y.repeat(len(active)),
                                         reduction="none").view(len(active), -1).mean(1)
            objective = losses.sum()
            if l1.any():
                objective = objective + (l1 * pack.l1()).sum()
            optimizer.zero_grad()
            objective.backward()
            optimizer.step(lr)
            for m in active:
                m.schedule.after_batch()
            lr = lrs()  # per step: warm-ups and one-cycle move it every batch
            correct += (logits.argmax(2) == y).sum(1)
            unchecked.append((step, len(y), losses.detach()))
            if len(unchecked) < check_every and step + 1 < steps_per_epoch:
                continue
            values = torch.stack([u[2] for u in unchecked]).tolist()  # one host sync per check
            diverged: dict[int, str] = {}
            for (at, size, _), batch_losses in zip(unchecked, values):
                for position, (m, batch_loss) in enumerate(zip(active, batch_losses)):
                    if position in diverged:
                        continue
                    if m.first_loss is None:
                        m.first_loss = batch_loss
                    if not math.isfinite(batch_loss) or batch_loss > cfg.divergence_factor * max(m.first_loss, 1e-3):
                        diverged[position] = (f"loss {batch_loss:.4g} at epoch {epoch} step {at + 1} "
                                              f"(started at {m.first_loss:.4g})")
                    else:
                        m.loss_sum += batch_loss * size
            unchecked.clear()
            if diverged:  # measured where it stopped, as a solo trial is; then out of the pack
                eval_started = time.perf_counter()
                val_losses, val_accs = evaluated(t["val_x"], t["val_y"])
                evaluating += time.perf_counter() - eval_started
                for position, reason in diverged.items():
                    finish(active[position], Status.DIVERGED, reason,
                           val_loss=val_losses[position], val_accuracy=val_accs[position])
                keep_correct = [i for i in range(len(active)) if i not in diverged]
                active = leave(set(diverged))
                correct = correct[torch.tensor(keep_correct, device=device, dtype=torch.long)]
                lr, l1 = lrs(), torch.tensor([m.cfg.l1 for m in active], device=device)
                if not active:
                    return
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - epoch_started - evaluating
        val_losses, val_accs = evaluated(t["val_x"], t["val_y"])
        accuracies = correct.tolist()
        gone: set[int] = set()
        for position, m in enumerate(active):
            metrics = EpochMetrics(epoch, m.loss_sum / n_train, accuracies[position] / n_train, val_losses[position],
                                   val_accs[position], m.epoch_lr, seconds, n_train / seconds)
            m.loss_sum = 0.0
            m.history.append(metrics)
            if not math.isfinite(metrics.val_loss):
                finish(m, Status.DIVERGED, f"validation loss {metrics.val_loss} at epoch {epoch}",
                       val_loss=metrics.val_loss, val_accuracy=metrics.val_accuracy)
                gone.add(position)
                continue
            try:
                if m.reporter is not None:
                    m.reporter(metrics)
            except PruneTrial as exc:
                finish(m, Status.PRUNED, str(exc) or "pruned")
                gone.add(position)
                continue
            except StoreUnavailable:
                raise
            except Exception as exc:  # this member's own reporting failed: it fails alone
                finish(m, Status.FAILED, f"{type(exc).__name__}: {exc}")
                gone.add(position)
                continue
            m.schedule.after_epoch(metrics.val_loss)
            if m.save is not None and m.cfg.checkpoint_every and (
                    epoch % m.cfg.checkpoint_every == 0 or epoch == m.cfg.epochs):
                m.save(_member_checkpoint(epoch, m, position, pack, optimizer, generator, data, device, memory_format))
        active = leave(gone)
        if not active:
            return
        l1 = torch.tensor([m.cfg.l1 for m in active], device=device)
    test_losses, test_accs = evaluated(t["test_x"], t["test_y"])
    for position, m in enumerate(active):
        finish(m, Status.OK, "", test_loss=test_losses[position], test_accuracy=test_accs[position])


def _evaluate(pack: PackedModel, x, y, autocast, images: int = 1024) -> tuple[list[float], list[float]]:
    """Each member's mean loss and accuracy, summed on the device: one host sync for the pack.
    Batches hold ``images`` member-images (1,024 / members images each), as a solo trial's do: a
    pack of 8 evaluating 1,024 images at once was memory-bound (0.7x solo on 28x28 images)."""
    pack.eval()
    batch_size = max(1, images // pack.members)
    loss_sum = torch.zeros(pack.members, device=x.device)
    correct = torch.zeros(pack.members, device=x.device, dtype=torch.long)
    with torch.no_grad(), autocast():
        for start in range(0, len(x), batch_size):
            logits = pack(x[start:start + batch_size]).float()
            target = y[start:start + batch_size]
            loss_sum += F.cross_entropy(logits.flatten(0, 1), target.repeat(pack.members),
                                        reduction="none").view(pack.members, -1).sum(1)
            correct += (logits.argmax(2) == target).sum(1)
    pack.train()
    return [v / len(x) for v in loss_sum.tolist()], [c / len(x) for c in correct.tolist()]


def _member_checkpoint(epoch: int, m: _Member, position: int, pack: PackedModel,
                       optimizer: FusedOptimizer | MemberOptimizers,
                       generator: torch.Generator, data: DataSplits, device, memory_format) -> Checkpoint:
    """Member ``m`` (at ``position`` in the pack) as a solo trial's checkpoint: a solo trial, or a
    re-run of this one, resumes from it exactly."""
    with torch.random.fork_rng(devices=[]):  # building it must not move the global RNG the checkpoint saves
        model = build_model(m.cfg.model, data.in_shape, data.num_classes)
    model = model.to(device, memory_format=memory_format)
    model.load_state_dict(pack.member_state_dict(position))
    if isinstance(optimizer, MemberOptimizers):  # the member's optimizer is a solo optimizer already
        return Checkpoint.capture(epoch, model, m.lr_holder, m.schedule, generator, m.first_loss, m.history)
    solo = build_optimizer(m.cfg.optimizer, model.parameters(), m.hp)
    group = solo.param_groups[0]
    # the LR and what the member's scheduler keeps beside it (initial_lr, one-cycle's max_lr, ...)
    group.update({k: v for k, v in m.lr_holder.param_groups[0].items()
                  if k == "lr" or (k != "params" and k not in m.lr_holder.defaults)})
    names = [name for name, _ in model.named_parameters()]
    for index, state in optimizer.member_state(position, names).items():
        solo.state[group["params"][index]] = state
    return Checkpoint.capture(epoch, model, solo, m.schedule, generator, m.first_loss, m.history)
