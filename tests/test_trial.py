"""One trial end to end (outcomes, determinism, reporting, augmentation) and the dataset registry."""

from __future__ import annotations

import collections
import math
import time
from dataclasses import fields, replace

import numpy as np
import pytest
import torch

from sweep.core.datasets import DATASETS, DataSplits, load_dataset
from sweep.core.errors import DatasetUnavailable
from sweep.core.records import EpochMetrics, PruneTrial
from sweep.train.solo import TrialConfig, run_trial
from sweep.train.steps import random_crop_flip


def _losses(result):
    return [(h.train_loss, h.train_accuracy, h.val_loss, h.val_accuracy) for h in result.history]


# ---- outcomes -------------------------------------------------------------------------------------


def test_huge_lr_diverges_in_first_epoch(digits):
    result = run_trial(TrialConfig(optimizer="sgd", optimizer_params={"lr": 100}, epochs=3), digits)
    assert result.status == "diverged", (result.status, result.reason)
    assert result.epochs_run == 0 and result.history == []
    assert "epoch 1" in result.reason  # epochs count from 1 everywhere
    # measured where it stopped, so even a first-epoch divergence carries final metrics
    assert 0.0 <= result.metrics["val_accuracy"] <= 1.0 and result.metrics["epochs"] == 0
    assert result.value == result.metrics["val_accuracy"]


@pytest.mark.slow  # three trainings: over a second
def test_same_seed_is_deterministic_and_seed_matters(digits):
    first = run_trial(TrialConfig(epochs=2, seed=3), digits)
    second = run_trial(TrialConfig(epochs=2, seed=3), digits)
    other = run_trial(TrialConfig(epochs=2, seed=4), digits)
    assert first.status == second.status == other.status == "ok"
    assert _losses(first) == _losses(second)
    assert first.metrics["test_loss"] == second.metrics["test_loss"]
    assert _losses(first) != _losses(other)


def test_reporter_called_once_per_epoch_with_sensible_fields(digits):
    reports: list[EpochMetrics] = []
    cfg = TrialConfig(optimizer="momentum", optimizer_params={"lr": 0.02}, epochs=3, seed=0)
    result = run_trial(cfg, digits, reports.append)
    assert result.status == "ok", result.reason
    assert [m.epoch for m in reports] == [1, 2, 3]
    assert reports == result.history and result.epochs_run == 3
    for m in reports:
        for f in fields(EpochMetrics):
            assert math.isfinite(getattr(m, f.name)), f.name
        assert m.train_loss > 0 and m.val_loss > 0
        assert 0.0 <= m.train_accuracy <= 1.0 and 0.0 <= m.val_accuracy <= 1.0
        assert m.scheduled_lr == 0.02
        assert m.epoch_seconds > 0
        assert m.images_per_second == pytest.approx(len(digits.train_x) / m.epoch_seconds)
    assert reports[-1].train_loss < reports[0].train_loss  # it learned something


def test_metrics_of_an_ok_trial(digits):
    result = run_trial(TrialConfig(epochs=2, seed=0), digits)
    assert result.status == "ok" and result.reason == ""
    m = result.metrics
    for key in ("val_accuracy", "val_loss", "best_val_accuracy", "train_seconds", "test_loss", "test_accuracy"):
        assert key in m and math.isfinite(m[key]), key
    assert 0.0 <= m["test_accuracy"] <= 1.0
    assert m["best_val_accuracy"] == max(h.val_accuracy for h in result.history)
    assert m["val_accuracy"] == result.history[-1].val_accuracy
    assert m["epochs"] == 2 and m["seconds"] >= m["train_seconds"] > 0


def test_reporter_prune_gives_pruned(digits):
    def reporter(m):
        if m.epoch == 2:
            raise PruneTrial("not promising")

    result = run_trial(TrialConfig(epochs=5), digits, reporter)
    assert result.status == "pruned"
    assert result.reason == "not promising"
    assert result.epochs_run == 2
    assert "test_accuracy" not in result.metrics


def test_reporter_error_gives_failed_not_exception(digits):
    def reporter(m):
        raise RuntimeError("tracking server is down")

    result = run_trial(TrialConfig(epochs=3), digits, reporter)
    assert result.status == "failed"
    assert "RuntimeError" in result.reason and "tracking server is down" in result.reason
    assert result.epochs_run == 1


@pytest.mark.parametrize(
    "cfg,text",
    [
        (TrialConfig(model="no_such_model", epochs=1), "no_such_model"),
        (TrialConfig(optimizer="no_such_optimizer", epochs=1), "no_such_optimizer"),
        (TrialConfig(optimizer="sgd", optimizer_params={"momentum": 0.9}, epochs=1), "momentum"),
        (TrialConfig(schedule="no_such_schedule", epochs=1), "no_such_schedule"),
    ],
    ids=["model", "optimizer", "hyperparameter", "schedule"],
)
def test_bad_config_gives_failed_with_reason(digits, cfg, text):
    result = run_trial(cfg, digits)
    assert result.status == "failed"
    assert text in result.reason
    assert result.epochs_run == 0 and result.history == []


def test_unavailable_dataset_gives_failed(tmp_path):
    result = run_trial(TrialConfig(dataset="cifar10", data_dir=str(tmp_path), epochs=1))
    assert result.status == "failed"
    assert "DatasetUnavailable" in result.reason and str(tmp_path) in result.reason


def test_l1_changes_the_trajectory(digits):
    plain = run_trial(TrialConfig(epochs=1, seed=0), digits)
    l1 = run_trial(TrialConfig(epochs=1, seed=0, l1=1e-3), digits)
    assert plain.status == l1.status == "ok"
    assert _losses(plain) != _losses(l1)


def test_schedule_reaches_the_trial(digits):
    result = run_trial(
        TrialConfig(epochs=3, schedule="exponential", schedule_params={"gamma": 0.5}, optimizer_params={"lr": 0.02}),
        digits,
    )
    assert result.status == "ok", result.reason
    assert [h.scheduled_lr for h in result.history] == pytest.approx([0.02, 0.01, 0.005])


def test_augmented_trial_runs():
    data = load_dataset("synthetic", augment=True)
    small = replace(
        data,
        train_x=data.train_x[:128],
        train_y=data.train_y[:128],
        val_x=data.val_x[:64],
        val_y=data.val_y[:64],
        test_x=data.test_x[:64],
        test_y=data.test_y[:64],
    )
    assert small.augment
    result = run_trial(TrialConfig(dataset="synthetic", epochs=1, optimizer="adam"), small)
    assert result.status == "ok", result.reason


# ---- augmentation ---------------------------------------------------------------------------------


def _crop_offsets(x, out, pad=4):
    """For each image: the (dy, dx, flipped) that explain ``out`` from reflect-padded ``x``."""
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    h, w = x.shape[-2:]
    found = []
    for i in range(len(x)):
        matches = [
            (dy, dx, flip)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            for flip in (False, True)
            if torch.equal(out[i], (lambda c: c.flip(-1) if flip else c)(padded[i, :, dy : dy + h, dx : dx + w]))
        ]
        assert matches, f"image {i} is not a crop (or flipped crop) of its padded input"
        found.append(matches[0])
    return found


def test_random_crop_flip():
    x = torch.randn(16, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    out = random_crop_flip(x, torch.Generator().manual_seed(1))
    again = random_crop_flip(x, torch.Generator().manual_seed(1))
    other = random_crop_flip(x, torch.Generator().manual_seed(2))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out, again)
    assert not torch.equal(out, other)
    assert not torch.equal(out, x)
    offsets = _crop_offsets(x, out)
    assert len({o for o in offsets}) > 1  # offsets/flips vary across the batch
    assert any(flip for _, _, flip in offsets) and not all(flip for _, _, flip in offsets)


# ---- datasets -------------------------------------------------------------------------------------


def _split_sizes(n, test_fraction=0.2, val_fraction=0.2):
    n_test = int(round(test_fraction * n))
    n_val = int(round(val_fraction * (n - n_test)))
    return n - n_test - n_val, n_val, n_test


def test_digits_split_sizes_and_normalization(digits):
    n_train, n_val, n_test = _split_sizes(1797)
    assert (n_train, n_val, n_test) == (1150, 288, 359)
    assert digits.train_x.shape == (n_train, 1, 8, 8) and digits.train_y.shape == (n_train,)
    assert digits.val_x.shape == (n_val, 1, 8, 8) and digits.val_y.shape == (n_val,)
    assert digits.test_x.shape == (n_test, 1, 8, 8) and digits.test_y.shape == (n_test,)
    assert digits.in_shape == (1, 8, 8) and digits.num_classes == 10 and not digits.augment
    assert digits.train_x.dtype == np.float32 and digits.train_y.dtype == np.int64
    assert abs(float(digits.train_x.mean())) < 1e-4 and abs(float(digits.train_x.std()) - 1) < 1e-3
    t = digits.to_torch("cpu")
    assert t["train_x"].dtype == torch.float32 and t["val_y"].dtype == torch.long
    assert np.array_equal(t["test_x"].numpy(), digits.test_x)


def test_digits_splits_partition_the_dataset(digits):
    """Undo the normalization and check train+val+test is exactly scikit-learn's digits, once each."""
    from sklearn.datasets import load_digits

    all_x = np.concatenate([digits.train_x, digits.val_x, digits.test_x]).astype(np.float64)
    all_y = np.concatenate([digits.train_y, digits.val_y, digits.test_y])
    low, high = all_x.min(), all_x.max()  # raw pixel values 0 and 16 both occur
    pixels = np.rint((all_x - low) / (high - low) * 16).astype(np.int64)
    np.testing.assert_allclose((all_x - low) / (high - low) * 16, pixels, atol=1e-3)
    bunch = load_digits()
    ours = collections.Counter((p.tobytes(), int(y)) for p, y in zip(pixels.reshape(len(pixels), -1), all_y))
    theirs = collections.Counter(
        (p.tobytes(), int(y))
        for p, y in zip(bunch.images.astype(np.int64).reshape(len(bunch.images), -1), bunch.target)
    )
    assert ours == theirs


def test_digits_split_is_seeded(digits):
    same = load_dataset("digits", seed=0)
    other = load_dataset("digits", seed=1)
    for name in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        assert np.array_equal(getattr(same, name), getattr(digits, name)), name
    assert not np.array_equal(other.val_y, digits.val_y)
    assert not np.array_equal(other.test_x, digits.test_x)


def test_synthetic_shapes():
    data = load_dataset("synthetic")
    n_train, n_val, n_test = _split_sizes(2048)
    assert data.train_x.shape == (n_train, 3, 32, 32)
    assert data.val_x.shape == (n_val, 3, 32, 32)
    assert data.test_x.shape == (n_test, 3, 32, 32)
    assert data.in_shape == (3, 32, 32) and data.num_classes == 10
    assert set(np.unique(data.train_y)) <= set(range(10)) and len(np.unique(data.train_y)) > 5


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_dataset_loads_or_says_where_to_put_it(name, tmp_path):
    import torchvision.datasets  # noqa: F401  (import time is not what is being timed)

    started = time.perf_counter()
    try:
        data = load_dataset(name, data_dir=tmp_path)
    except DatasetUnavailable as exc:
        message = str(exc)
        assert "\n" not in message
        assert str(tmp_path) in message
        assert list(tmp_path.iterdir()) == []  # nothing created, nothing downloaded
    else:
        assert isinstance(data, DataSplits)
        assert data.num_classes == DATASETS[name].num_classes
        assert data.augment == DATASETS[name].augment
        for split in ("train", "val", "test"):
            x, y = getattr(data, f"{split}_x"), getattr(data, f"{split}_y")
            assert len(x) == len(y) > 0 and x.shape[1:] == data.in_shape
            assert np.isfinite(x).all() and y.min() >= 0 and y.max() < data.num_classes
    assert time.perf_counter() - started < 10


@pytest.mark.parametrize("name", ["cifar10", "mnist"])
def test_missing_files_raise_one_line(name, tmp_path):
    import torchvision.datasets  # noqa: F401  (import time is not what is being timed)

    started = time.perf_counter()
    with pytest.raises(DatasetUnavailable) as info:
        load_dataset(name, data_dir=tmp_path)
    assert time.perf_counter() - started < 5
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert str(tmp_path) in message
    assert list(tmp_path.iterdir()) == []


def test_unknown_dataset_lists_choices():
    with pytest.raises(KeyError) as info:
        load_dataset("bogus")
    for name in DATASETS:
        assert name in info.value.args[0]
