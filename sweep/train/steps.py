"""The steps a solo trial (``solo.run_trial``) and a pack (``packed.run_pack``) share, in one place:
a pack's member must follow exactly the trajectory of its solo trial (tests/test_pack.py), so the
device, the batches, the evaluation, the divergence check and the final metrics are the same code.

Schedule-Free optimizers (and any optimizer with ``train()`` and ``eval()`` methods, which
torch.optim's have not) train at one point and are evaluated at another. ``EvalPoint`` moves one
to its evaluation point before every evaluation and checkpoint, and back before training resumes,
each only when it is elsewhere; the trial's model is then evaluated at weights it never trained
at, so ``recalibrate_batchnorm`` first recomputes its BatchNorm statistics there.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from models.packed import PackedModel
from sweep.core.config import AUTO, TrialConfig
from sweep.core.records import EpochMetrics
from sweep.core.target import CurvePoint, time_to_target

GPU_CHECK_STEPS = 32
EVAL_IMAGES = 1024  # images per evaluation batch on a GPU (a pack's members share them)
# On a CPU, smaller: a 1,024-image batch of simple_cnn's activations outgrows the caches, and one
# thread evaluated Fashion-MNIST's 10,000 test images in 5.7 s at 1,024 but 3.1 s at 128 (lenet:
# no difference). A benchmark's trials evaluate often (``eval_every_steps``), so this is their time.
CPU_EVAL_IMAGES = 128
# Training batches (the first ones of the training set, at the trial's batch size) whose mean
# BatchNorm statistics a Schedule-Free trial evaluates with: ``recalibrate_batchnorm``
BN_RECALIBRATION_BATCHES = 20
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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


def draw_batch(
    t: dict[str, torch.Tensor],
    order: torch.Tensor,
    step: int,
    batch_size: int,
    augment: bool,
    generator: torch.Generator,
    memory_format,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The epoch's ``step``-th batch (augmented where the data is): a solo trial and a pack draw
    theirs here, so a pack's members see exactly the batches their solo trials would."""
    idx = order[step * batch_size : (step + 1) * batch_size]
    x, y = t["train_x"][idx], t["train_y"][idx]
    if augment:
        x = random_crop_flip(x, generator)
    return x.contiguous(memory_format=memory_format), y


def evaluate(model, x, y, autocast, images: int | None = None) -> tuple[list[float], list[float]]:
    """Each member's mean loss and accuracy (one member for a plain model), summed on the device:
    one host sync for the whole set. A pack's batches hold ``images`` member-images (``images`` /
    members images each), as a solo trial's do: a pack of 8 evaluating 1,024 images at once was
    memory-bound (0.7x solo on 28x28 images)."""
    packed = isinstance(model, PackedModel)
    members = model.members if packed else 1
    images = images or (CPU_EVAL_IMAGES if x.device.type == "cpu" else EVAL_IMAGES)
    batch_size = max(1, images // members)
    model.eval()
    loss_sum = torch.zeros(members, device=x.device)
    correct = torch.zeros(members, device=x.device, dtype=torch.long)
    with torch.no_grad(), autocast():
        for start in range(0, len(x), batch_size):
            logits = model(x[start : start + batch_size]).float()
            target = y[start : start + batch_size]
            if packed:
                loss_sum += (
                    F.cross_entropy(logits.flatten(0, 1), target.repeat(members), reduction="none")
                    .view(members, -1)
                    .sum(1)
                )
                correct += (logits.argmax(2) == target).sum(1)
            else:  # the solo trial's own reduction: its sums must not change with packing
                loss_sum += F.cross_entropy(logits, target, reduction="sum")
                correct += (logits.argmax(1) == target).sum()
    model.train()
    return [v / len(x) for v in loss_sum.tolist()], [c / len(x) for c in correct.tolist()]


def switches_modes(optimizer) -> bool:
    """Whether ``optimizer`` is evaluated at other weights than it trains at (Schedule-Free): it
    has callable ``train`` and ``eval`` methods. Duck typed, so an optimizer of one's own works."""
    return callable(getattr(optimizer, "train", None)) and callable(getattr(optimizer, "eval", None))


class EvalPoint:
    """Which point a Schedule-Free(-like) optimizer's parameters are at: the one it trains at, or
    the one it is evaluated at. ``to_eval`` before every evaluation (and so before a checkpoint,
    which follows the epoch's validation), ``to_train`` before training steps resume; each switches
    only when the optimizer is elsewhere, so calling it twice changes nothing. For any other
    optimizer both do nothing. A trial that does the same calls in the same order does the same
    arithmetic: a resumed trial is bit-identical to one that never stopped. ``moved`` is called
    after each switch (a pack's member copies its parameters into the pack's)."""

    def __init__(self, optimizer, moved: Callable[[], None] | None = None):
        self.optimizer = optimizer if switches_modes(optimizer) else None
        self.moved = moved
        self.at_eval = False  # the registry hands a Schedule-Free optimizer over in train mode

    def restored(self) -> None:
        """After ``Checkpoint.restore``: a checkpoint is captured at the evaluation point.
        schedulefree records the mode in each param group (``train_mode``); an optimizer that
        does not is taken to be where checkpoints are captured."""
        if self.optimizer is not None:
            modes = [group["train_mode"] for group in self.optimizer.param_groups if "train_mode" in group]
            self.at_eval = not any(modes)

    def to_eval(self) -> bool:
        """Move to the evaluation point; True when the parameters moved now (their BatchNorm
        statistics are then stale: ``recalibrate_batchnorm``)."""
        if self.optimizer is None or self.at_eval:
            return False
        self.optimizer.eval()
        self.at_eval = True
        if self.moved is not None:
            self.moved()
        return True

    def to_train(self) -> None:
        if self.optimizer is not None and self.at_eval:
            self.optimizer.train()
            self.at_eval = False
            if self.moved is not None:
                self.moved()


def recalibrate_batchnorm(model, train_x: torch.Tensor, batch_size: int, memory_format, autocast) -> int:
    """Recompute the BatchNorm running statistics of ``model`` (a model, or a ``PackedModel``:
    each member its own) at its current weights; returns the batches used (0 without BatchNorm).

    The statistics are reset, then the first ``BN_RECALIBRATION_BATCHES`` batches of ``train_x``
    (in the stored order, at ``batch_size``, not augmented: no RNG stream moves) go forward with
    only the BatchNorm layers in train mode, under ``torch.no_grad()``, the k-th (from 0) with
    each layer's ``momentum`` at 1/(k+1): the running statistics end as the exact mean of the
    batches' statistics. The layers' momentum is restored afterwards."""
    packed = isinstance(model, PackedModel)
    template = model.template if packed else model
    layers = {n: m for n, m in template.named_modules() if isinstance(m, BATCHNORMS) and m.track_running_stats}
    if not layers:
        return 0
    for name, layer in layers.items():
        if packed:  # the pack's stacked buffers, as reset_running_stats resets a layer's own
            model.buffers[f"{name}.running_mean"].zero_()
            model.buffers[f"{name}.running_var"].fill_(1.0)
            model.buffers[f"{name}.num_batches_tracked"].zero_()
        else:
            layer.reset_running_stats()
    momenta = {name: layer.momentum for name, layer in layers.items()}
    training = model.training
    model.train()  # a pack's fused BatchNorm follows the pack's mode
    for module in template.modules():  # only BatchNorm trains: any dropout stays off
        module.training = isinstance(module, BATCHNORMS)
    batches = min(BN_RECALIBRATION_BATCHES, math.ceil(len(train_x) / batch_size))
    try:
        with torch.no_grad(), autocast():
            for k in range(batches):
                for layer in layers.values():
                    layer.momentum = 1.0 / (k + 1)
                model(train_x[k * batch_size : (k + 1) * batch_size].contiguous(memory_format=memory_format))
    finally:
        for name, layer in layers.items():
            layer.momentum = momenta[name]
        model.train(training)
    return batches


def read_losses(
    unchecked: list[tuple[int, int, torch.Tensor]],
    first_losses: list[float | None],
    loss_sums: list[float],
    factor: float,
    epoch: int,
) -> dict[int, str]:
    """The divergence check: read the losses of the batches since the last check on the host (one
    sync), as (step, batch size, loss) entries whose loss holds one value per member (a scalar for a
    solo trial). Each member's ``first_losses`` (set at its first batch) and ``loss_sums`` (the
    epoch's running sum, added batch by batch) are updated in place. Returns, per member that
    diverged, its first divergent step's message; its later batches are not counted."""
    if len(unchecked) == 1:  # no stack: one less kernel per check
        values = [unchecked[0][2].reshape(-1).tolist()]
    else:
        values = torch.stack([u[2].reshape(-1) for u in unchecked]).tolist()
    diverged: dict[int, str] = {}
    for (at, size, _), batch_losses in zip(unchecked, values):
        for member, batch_loss in enumerate(batch_losses):
            if member in diverged:
                continue
            if first_losses[member] is None:
                first_losses[member] = batch_loss
            first = first_losses[member]
            if not math.isfinite(batch_loss) or batch_loss > factor * max(first, 1e-3):
                diverged[member] = f"loss {batch_loss:.4g} at epoch {epoch} step {at + 1} (started at {first:.4g})"
            else:
                loss_sums[member] += batch_loss * size
    return diverged


def final_metrics(history: list[EpochMetrics], seconds: float, **last: float) -> dict[str, float]:
    """Final metrics: the last epoch's (or ``last`` where the trial stopped mid-epoch)."""
    metrics = {
        "epochs": float(len(history)),
        "seconds": seconds,
        "train_seconds": sum(h.epoch_seconds for h in history),
    }
    if history:
        metrics.update(val_accuracy=history[-1].val_accuracy, val_loss=history[-1].val_loss)
    metrics.update(last)
    accuracies = [h.val_accuracy for h in history] + ([last["val_accuracy"]] if "val_accuracy" in last else [])
    if accuracies:
        metrics["best_val_accuracy"] = max(a for a in accuracies)
    return metrics


def target_metrics(curve: list[CurvePoint], target: float | None) -> dict[str, float]:
    """The final metrics of time to ``target`` (``core.target``), none when no target is set:
    ``target_reached`` (1 or 0) always, the time, steps and images to it when reached."""
    if target is None:
        return {}
    reached = time_to_target(curve, target)
    found = {} if reached is None else {k: float(v) for k, v in reached.metrics().items()}
    return {"target_reached": float(reached is not None), **found}


def mid_epoch_evaluation(every: int, steps_per_epoch: int, epoch: int, step: int) -> bool:
    """Whether the validation set is evaluated after the epoch's ``step``-th step (from 0): after
    every ``every``-th optimizer step counted across epochs, but not at the epoch's last step,
    whose end evaluates it anyway. The same steps in a solo trial, a pack and a resumed trial."""
    global_step = (epoch - 1) * steps_per_epoch + step + 1
    return every > 0 and step + 1 < steps_per_epoch and global_step % every == 0


def curve_point(
    epoch: int, steps: int, steps_per_epoch: int, batch_size: int, n_train: int, seconds: float, accuracy: float
) -> CurvePoint:
    """The evaluation after ``steps`` optimizer steps of epoch ``epoch`` (from 1), with ``seconds``
    of training so far: steps and images counted across epochs (a last partial batch counts its
    real size)."""
    images = (epoch - 1) * n_train + min(steps * batch_size, n_train)
    return CurvePoint((epoch - 1) * steps_per_epoch + steps, images, seconds, accuracy)
