"""Training modes: a Schedule-Free optimizer (anything with ``train()`` and ``eval()``) is moved to
its evaluation point before every evaluation and checkpoint and back before training resumes, each
move once; a model with BatchNorm is then evaluated with running statistics recalibrated at those
weights (``steps.recalibrate_batchnorm``), in a solo trial and in each member of a pack alike.

Resuming every registry optimizer bit-identically: tests/test_checkpoints.py. Packs of every
registry optimizer, Schedule-Free included, against their solo trials: tests/test_pack.py.
"""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models import MODELS, ModelSpec, build_model
from models.packed import PackedModel
from optim import build_optimizer
from sweep.core.records import Checkpoint
from sweep.train import solo
from sweep.train.packed import run_pack
from sweep.train.solo import TrialConfig, run_trial
from sweep.train.steps import BN_RECALIBRATION_BATCHES, EvalPoint, recalibrate_batchnorm, switches_modes

IMAGES = 384  # digits' training images kept: 24 batches of 16, so the recalibration takes 20 of them
BATCH = 16


@pytest.fixture(scope="module")
def small(digits):
    return dataclasses.replace(digits, train_x=digits.train_x[:IMAGES], train_y=digits.train_y[:IMAGES])


def _bn_cnn(in_shape, num_classes):
    """A Sequential CNN with BatchNorm: a pack runs it with fused layers (fastnet and resnet18 go
    through vmap, which rounds differently from the solo model), so a member can be bit-identical."""
    channels, height, width = in_shape
    return nn.Sequential(
        nn.Conv2d(channels, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * (height // 2) * (width // 2), num_classes),
    )


@pytest.fixture
def bn_cnn(monkeypatch):
    monkeypatch.setitem(MODELS, "bn_cnn", ModelSpec("bn_cnn", _bn_cnn, "a fusable CNN with BatchNorm (tests)"))
    return "bn_cnn"


# ---- the switch ------------------------------------------------------------------------------------


class _Switching(torch.optim.SGD):
    """An optimizer of one's own that is evaluated elsewhere than it trains (no 'schedule_free'
    in its name or spec): it records its moves in ``events``."""

    def __init__(self, params, events: list[str], lr: float = 0.05):
        super().__init__(params, lr=lr)
        self.events = events

    def train(self):
        self.events.append("train")

    def eval(self):
        self.events.append("eval")

    def step(self, closure=None):
        if not self.events or self.events[-1] != "step":
            self.events.append("step")
        return super().step(closure)


def test_a_switching_optimizer_is_recognized_by_its_methods_and_moved_once():
    p = torch.nn.Parameter(torch.ones(2))
    assert not switches_modes(torch.optim.SGD([p], lr=0.1))  # torch.optim has neither method
    assert switches_modes(build_optimizer("sf_sgd", [p], {}))
    events: list[str] = []
    moved: list[str] = []
    point = EvalPoint(_Switching([p], events), moved=lambda: moved.append("moved"))
    assert point.to_eval() and not point.to_eval()
    point.to_train()
    point.to_train()
    assert events == ["eval", "train"] and moved == ["moved", "moved"]
    plain = EvalPoint(torch.optim.SGD([p], lr=0.1))
    assert not plain.to_eval() and not plain.at_eval


def test_after_a_restore_the_point_is_the_checkpoints():
    """A checkpoint is captured at the evaluation point; schedulefree records it per param group."""
    p = torch.nn.Parameter(torch.ones(2))
    optimizer = build_optimizer("sf_adamw", [p], {})
    p.grad = torch.ones(2)
    optimizer.step()
    optimizer.eval()
    state = optimizer.state_dict()
    fresh = build_optimizer("sf_adamw", [torch.nn.Parameter(torch.ones(2))], {})
    point = EvalPoint(fresh)
    assert fresh.param_groups[0]["train_mode"] and not point.at_eval  # the registry's: ready to train
    fresh.load_state_dict(state)
    point.restored()
    assert point.at_eval and not point.to_eval()
    point.to_train()
    assert fresh.param_groups[0]["train_mode"]
    events: list[str] = []
    own = EvalPoint(_Switching([p], events))  # no train_mode: where checkpoints are captured
    own.restored()
    assert own.at_eval and events == []


@pytest.mark.slow  # trains 2 epochs
def test_a_trial_evaluates_and_checkpoints_at_the_evaluation_point(small, monkeypatch):
    """eval() before each validation (the checkpoint follows it), train() when the next epoch
    starts, none before the test evaluation (already there); a resume starts at the evaluation
    point, so its first move is train()."""
    events: list[str] = []
    monkeypatch.setattr(solo, "build_optimizer", lambda name, params, hp: _Switching(params, events))
    evaluate = solo.evaluate

    def evaluating(model, x, y, autocast):
        events.append("evaluate")
        return evaluate(model, x, y, autocast)

    monkeypatch.setattr(solo, "evaluate", evaluating)
    saved: list[Checkpoint] = []

    def save(checkpoint):
        events.append("save")
        saved.append(checkpoint.detached())

    cfg = TrialConfig(epochs=2, batch_size=64)
    assert run_trial(cfg, small, save=save).status == "ok"
    epoch = ["step", "eval", "evaluate", "save"]
    assert events == epoch + ["train"] + epoch + ["evaluate"]
    events.clear()
    assert run_trial(cfg, small, resume=saved[0], save=save).status == "ok"
    assert events == ["train"] + epoch + ["evaluate"]


# ---- BatchNorm -------------------------------------------------------------------------------------


def _batch_statistics(model: nn.Module, train_x: torch.Tensor, batches: int) -> dict[str, torch.Tensor]:
    """By hand: each BatchNorm layer's input mean and unbiased variance per channel, averaged over
    the first ``batches`` batches of ``BATCH``, the model in train mode (BatchNorm normalizing with
    each batch's own statistics)."""
    sums: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for name, layer in model.named_modules():
        if isinstance(layer, nn.BatchNorm2d):

            def record(module, inputs, output, name=name):
                x = inputs[0].transpose(0, 1).flatten(1)
                sums.setdefault(f"{name}.running_mean", []).append(x.mean(1))
                sums.setdefault(f"{name}.running_var", []).append(x.var(1, unbiased=True))

            hooks.append(layer.register_forward_hook(record))
    model.train()
    with torch.no_grad():
        for k in range(batches):
            model(train_x[k * BATCH : (k + 1) * BATCH])
    for hook in hooks:
        hook.remove()
    return {key: torch.stack(values).mean(0) for key, values in sums.items()}


@pytest.mark.slow  # trains fastnet for 2 epochs, twice
def test_a_schedule_free_trial_recalibrates_batchnorm_at_its_evaluation_weights(small, monkeypatch):
    calls: list[int] = []
    recalibrate = solo.recalibrate_batchnorm
    pause = 0.1

    def timed(*args):  # counts the calls; the pause shows the time is eval_seconds
        calls.append(recalibrate(*args))
        time.sleep(pause)
        return calls[-1]

    monkeypatch.setattr(solo, "recalibrate_batchnorm", timed)
    cfg = TrialConfig(model="fastnet", optimizer="sf_sgd", epochs=2, batch_size=BATCH, schedule="constant")
    saved: list[Checkpoint] = []
    result = run_trial(cfg, small, save=lambda c: saved.append(c.detached()))
    assert result.status == "ok", result.reason
    assert calls == [BN_RECALIBRATION_BATCHES] * 2  # once per epoch: the test evaluation is at the same point
    assert result.metrics["eval_seconds"] >= 2 * pause
    assert result.metrics["train_seconds"] < result.metrics["seconds"] - 2 * pause

    t = {k: torch.as_tensor(v) for k, v in (("train_x", small.train_x), ("val_x", small.val_x), ("val_y", small.val_y))}
    model = build_model("fastnet", small.in_shape, small.num_classes)
    model.load_state_dict(saved[-1].model)  # the evaluation weights and their statistics
    for name, layer in model.named_modules():
        if isinstance(layer, nn.BatchNorm2d):
            assert layer.num_batches_tracked.item() == BN_RECALIBRATION_BATCHES, name
    by_hand = build_model("fastnet", small.in_shape, small.num_classes)
    by_hand.load_state_dict(saved[-1].model)
    for key, value in _batch_statistics(by_hand, t["train_x"].float(), BN_RECALIBRATION_BATCHES).items():
        torch.testing.assert_close(saved[-1].model[key], value, rtol=1e-4, atol=1e-5, msg=key)
    model.eval()
    with torch.no_grad():
        logits = model(t["val_x"].float())
    y = t["val_y"].long()
    assert result.history[-1].val_loss == pytest.approx(F.cross_entropy(logits, y).item(), abs=1e-6)
    assert result.history[-1].val_accuracy == (logits.argmax(1) == y).sum().item() / len(y)

    resumed = run_trial(cfg, small, resume=saved[0])  # the statistics travel with the checkpoint
    assert [h.val_loss for h in resumed.history] == [h.val_loss for h in result.history]
    assert resumed.metrics["test_accuracy"] == result.metrics["test_accuracy"]


def test_a_model_without_batchnorm_is_not_recalibrated(small):
    model = build_model("simple_cnn", small.in_shape, small.num_classes)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_x = torch.as_tensor(small.train_x)
    assert recalibrate_batchnorm(model, train_x, BATCH, torch.contiguous_format, _no_autocast) == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.slow  # trains fastnet for an epoch
def test_an_optimizer_that_does_not_switch_keeps_its_batchnorm_statistics(small, monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(solo, "recalibrate_batchnorm", lambda *args: calls.append(1))
    tiny = dataclasses.replace(small, train_x=small.train_x[:128], train_y=small.train_y[:128])
    result = run_trial(TrialConfig(optimizer="adamw", epochs=1, batch_size=64, model="fastnet"), tiny)
    assert result.status == "ok" and calls == []


def _no_autocast():
    return torch.autocast("cpu", enabled=False)


@pytest.mark.parametrize("name", ["bn_cnn", pytest.param("fastnet", marks=pytest.mark.slow)])  # fastnet: 1 s
def test_a_pack_recalibrates_each_member_as_its_solo_model(name, bn_cnn):
    """Each member's statistics as the solo model's recalibration computes them (bit for bit on
    the fused layers; within float rounding through vmap); momentum and modes restored."""
    torch.manual_seed(0)
    shape = (1, 8, 8)
    model = build_model(name, shape, 10)
    pack = PackedModel(model, 2)
    with torch.no_grad():  # member 1 has its own weights, so its own statistics
        for p in pack.params.values():
            p[1].mul_(0.5)
    members = [pack.member_state_dict(i) for i in range(2)]
    train_x = torch.randn(BATCH * (BN_RECALIBRATION_BATCHES + 4), *shape)
    pack.eval()
    batches = recalibrate_batchnorm(pack, train_x, BATCH, torch.contiguous_format, _no_autocast)
    assert batches == BN_RECALIBRATION_BATCHES
    assert not pack.training and not model.training
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    for member, state in enumerate(members):
        alone = build_model(name, shape, 10)
        alone.load_state_dict(state)
        assert recalibrate_batchnorm(alone, train_x, BATCH, torch.contiguous_format, _no_autocast) > 0
        recalibrated = pack.member_state_dict(member)
        for key, value in alone.state_dict().items():
            if name == "bn_cnn":
                assert torch.equal(recalibrated[key], value), (member, key)
            else:
                torch.testing.assert_close(recalibrated[key], value, rtol=1e-5, atol=1e-5, msg=f"{member} {key}")


@pytest.mark.slow  # trains a pack and its solo trials
def test_a_schedule_free_pack_with_batchnorm_follows_its_solo_trials(small, bn_cnn):
    configs = [
        TrialConfig(model=bn_cnn, optimizer="sf_adamw", epochs=2, batch_size=BATCH, schedule="constant"),
        TrialConfig(
            model=bn_cnn,
            optimizer="sf_adamw",
            optimizer_params={"lr": 0.005, "weight_decay": 1e-3},
            epochs=2,
            batch_size=BATCH,
            schedule="constant",
            schedule_params={"warmup_epochs": 1},
        ),
    ]
    solo_saved: list[list[Checkpoint]] = [[], []]
    alone = [run_trial(c, small, save=lambda c, s=s: s.append(c.detached())) for c, s in zip(configs, solo_saved)]
    pack_saved: list[list[Checkpoint]] = [[], []]
    packed = run_pack(configs, small, saves=[lambda c, s=s: s.append(c.detached()) for s in pack_saved])
    assert packed.error == ""
    for i in range(2):
        assert packed.results[i].status == alone[i].status == "ok"
        assert [h.val_accuracy for h in packed.results[i].history] == [h.val_accuracy for h in alone[i].history]
        assert packed.results[i].metrics["test_accuracy"] == alone[i].metrics["test_accuracy"]
        for s_ck, p_ck in zip(solo_saved[i], pack_saved[i], strict=True):
            for key, value in s_ck.model.items():  # weights at the evaluation point, recalibrated statistics
                assert torch.equal(p_ck.model[key], value), (i, s_ck.epoch, key)
            assert not any(g["train_mode"] for g in p_ck.optimizer["param_groups"])
