"""The trial loop's fast path, on the CPU where it can be tested: the divergence check that reads
the loss every N batches (one host sync each) instead of every batch, the settings that turn on
with a CUDA device, torch.compile, and the device copy of the data kept across a worker's trials."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
import torch

from sweep.core.datasets import device_tensors
from sweep.train.solo import COMPILE_BACKEND, TrialConfig, run_trial
from sweep.train.steps import GPU_CHECK_STEPS, divergence_check_steps, resolve_auto

DIVERGING = [("sgd", 100.0), ("adam", 0.5), ("rmsprop", 0.1)]


def _trajectory(result):
    return [(h.train_loss, h.train_accuracy, h.val_loss, h.val_accuracy) for h in result.history]


@pytest.mark.parametrize("optimizer,lr,every", [(*DIVERGING[0], 64), *((*d, 5) for d in DIVERGING)])
def test_divergence_read_every_n_batches_names_the_same_step(digits, optimizer, lr, every):
    """Read every N batches, a divergence ends the trial with the same status and the same reason
    (the same loss, epoch and step) as read every batch: only the steps in between also ran."""
    cfg = TrialConfig(optimizer=optimizer, optimizer_params={"lr": lr}, epochs=2)
    each = run_trial(dataclasses.replace(cfg, divergence_check_steps=1), digits)
    batched = run_trial(dataclasses.replace(cfg, divergence_check_steps=every), digits)
    assert each.status == batched.status == "diverged", (each.reason, batched.reason)
    assert batched.reason == each.reason
    assert batched.epochs_run == each.epochs_run == 0 and "val_accuracy" in batched.metrics


def test_divergence_in_a_later_epoch_is_caught_before_the_epoch_is_reported(digits):
    """The last batches of an epoch are read before it is reported: an epoch past divergence is never reported."""
    # a warm-up to a large LR: this one blows up in epoch 2 (the step depends on the CPU's float kernels)
    cfg = TrialConfig(
        optimizer="sgd",
        optimizer_params={"lr": 11.0},
        epochs=4,
        schedule="constant",
        schedule_params={"warmup_epochs": 3, "warmup_start_factor": 0.001},
    )
    reported = []
    each = run_trial(dataclasses.replace(cfg, divergence_check_steps=1), digits)
    batched = run_trial(dataclasses.replace(cfg, divergence_check_steps=10_000), digits, reported.append)
    assert each.status == "diverged" and "at epoch 2 step " in each.reason, each.reason
    assert batched.status == each.status and batched.reason == each.reason
    assert [m.epoch for m in reported] == [1] and batched.epochs_run == each.epochs_run == 1


@pytest.mark.slow  # trains twice per case: over a second
@pytest.mark.parametrize("every", [7, 10_000])
def test_a_healthy_trial_is_the_same_whatever_the_check_interval(digits, every):
    cfg = TrialConfig(optimizer="momentum", optimizer_params={"lr": 0.05}, epochs=2, seed=1)
    reference = run_trial(cfg, digits)
    other = run_trial(dataclasses.replace(cfg, divergence_check_steps=every), digits)
    assert other.status == reference.status == "ok"
    assert _trajectory(other) == _trajectory(reference)
    assert other.metrics["test_loss"] == reference.metrics["test_loss"]


@pytest.mark.parametrize("device,expected", [("cpu", False), ("cuda", True), ("cuda:1", True)])
def test_auto_settings_are_on_with_a_cuda_device(device, expected):
    device = torch.device(device)
    assert resolve_auto("auto", device) is expected
    assert resolve_auto(True, device) is True and resolve_auto(False, device) is False
    assert divergence_check_steps(TrialConfig(), device) == (GPU_CHECK_STEPS if expected else 1)
    assert divergence_check_steps(TrialConfig(divergence_check_steps=3), device) == 3


@pytest.mark.slow  # trains under bf16 autocast on the CPU: over a second
def test_explicit_bf16_and_channels_last_train_on_the_cpu(digits):
    result = run_trial(TrialConfig(epochs=1, bf16=True, channels_last=True), digits)
    assert result.status == "ok", result.reason
    assert result.metrics["val_accuracy"] > 0.3


@pytest.mark.slow
def test_compiled_model_trains_like_the_eager_one_and_reports_its_compile_time(digits, monkeypatch):
    """torch.compile through Dynamo (the eager backend: Inductor's C++ build takes a minute on 2 cores);
    checkpoints hold the plain model's keys, so a compiled trial resumes and is rebuilt like any other."""
    monkeypatch.setenv(COMPILE_BACKEND, "eager")
    saved = []
    cfg = TrialConfig(optimizer="adam", optimizer_params={"lr": 0.003}, epochs=2)
    eager = run_trial(cfg, digits)
    compiled = run_trial(dataclasses.replace(cfg, compile=True), digits, save=saved.append)
    assert compiled.status == "ok", compiled.reason
    assert compiled.metrics["compile_seconds"] > 0 and "compile_seconds" not in eager.metrics
    assert compiled.metrics["val_accuracy"] == pytest.approx(eager.metrics["val_accuracy"], abs=0.02)
    assert [c.epoch for c in saved] == [1, 2]
    assert not any(k.startswith("_orig_mod") for k in saved[-1].model)
    resumed = run_trial(dataclasses.replace(cfg, compile=True), digits, resume=saved[0])
    assert resumed.status == "ok" and [h.epoch for h in resumed.history] == [1, 2]


def test_device_copy_is_made_once_per_data_and_kept_through_pickling(digits):
    first = device_tensors(digits, torch.device("cpu"))
    assert device_tensors(digits, torch.device("cpu")) is first  # the next trial in this process reuses it
    shipped = pickle.loads(pickle.dumps(digits))  # what a Ray worker gets: the same token
    assert shipped.token == digits.token and device_tensors(shipped, torch.device("cpu")) is first
    changed = dataclasses.replace(digits, train_x=digits.train_x[:100])  # other arrays: a copy of their own
    assert changed.token != digits.token
    assert len(device_tensors(changed, torch.device("cpu"))["train_x"]) == 100
    assert torch.equal(device_tensors(digits, torch.device("cpu"))["train_x"], first["train_x"])
