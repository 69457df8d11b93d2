"""Time to a target accuracy: the curve of every validation evaluation a trial records (each
epoch's end, and every ``eval_every_steps`` optimizer steps), its training seconds with evaluation
left out, and the final metrics and words it gives. Resume and packs keep the curve exactly:
tests/test_checkpoints.py and tests/test_pack.py; a sweep stores it: tests/test_sweep.py."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from sweep.core.config import TrialConfig, load_config
from sweep.core.errors import ConfigError
from sweep.core.records import Checkpoint
from sweep.core.target import CurvePoint, described, parse_curve, time_to_target
from sweep.stores import checkpoints
from sweep.train.solo import run_trial
from sweep.train.steps import curve_point, mid_epoch_evaluation, target_metrics

CURVE = [CurvePoint(5, 320, 0.1, 0.4), CurvePoint(10, 640, 0.2, 0.7), CurvePoint(15, 960, 0.3, 0.6)]


# ---- pure ----------------------------------------------------------------------------------------


def test_time_to_target_is_the_first_evaluation_at_or_above_it():
    assert time_to_target(CURVE, 0.65) == time_to_target(CURVE, 0.7)
    reached = time_to_target(CURVE, 0.7)
    assert (reached.seconds, reached.steps, reached.images) == (0.2, 10, 640)
    assert time_to_target(CURVE, 0.3).steps == 5
    assert time_to_target(CURVE, 0.71) is None and time_to_target([], 0.1) is None


def test_a_stored_curve_reads_back_and_anything_else_is_no_curve():
    stored = [p.as_list() for p in CURVE]
    assert parse_curve(stored) == CURVE
    assert parse_curve([[5.0, 320.0, 0.1, 0.4]]) == [CurvePoint(5, 320, 0.1, 0.4)]  # JSON numbers
    for junk in (None, "x", {"a": 1}, [[1, 2, 3]], [["a", 1, 2, 3]], [None]):
        assert parse_curve(junk) == [], junk


def test_target_metrics_and_words():
    assert target_metrics(CURVE, None) == {}
    assert target_metrics(CURVE, 0.7) == {
        "target_reached": 1.0,
        "time_to_target_s": 0.2,
        "steps_to_target": 10.0,
        "images_to_target": 640.0,
    }
    assert target_metrics(CURVE, 0.9) == {"target_reached": 0.0}
    assert target_metrics([], 0.9) == {"target_reached": 0.0}
    assert described(CURVE, 0.7, 3) == "reached 0.7 at 0.20 s (10 steps)"
    assert described(CURVE, 0.95, 3) == "not reached: best 0.7000 < target 0.95 within 3 epochs"
    assert described([], 0.95, 1) == "not reached: no evaluation within 1 epoch"


def test_mid_epoch_evaluations_count_steps_across_epochs_and_skip_the_epochs_end():
    # 4 steps per epoch, every 3 steps: after global steps 3, 6, 9 (12 is epoch 3's end)
    due = [(epoch, step) for epoch in (1, 2, 3) for step in range(4) if mid_epoch_evaluation(3, 4, epoch, step)]
    assert due == [(1, 2), (2, 1), (3, 0)]
    assert not any(mid_epoch_evaluation(0, 4, 1, step) for step in range(4))
    assert not any(mid_epoch_evaluation(4, 4, epoch, step) for epoch in (1, 2) for step in range(4))
    # 1,150 images at 64: 18 steps, the last one of 62 images
    assert curve_point(2, 5, 18, 64, 1150, 1.5, 0.9) == CurvePoint(23, 1150 + 320, 1.5, 0.9)
    assert curve_point(2, 18, 18, 64, 1150, 2.0, 0.9) == CurvePoint(36, 2300, 2.0, 0.9)


def test_the_keys_are_checked():
    cfg = load_config(None, ["eval_every_steps=10", "target_accuracy=1"])
    assert (cfg.eval_every_steps, cfg.target_accuracy) == (10, 1.0)
    assert cfg.trial_config().target_accuracy == 1.0 and cfg.trial_config().eval_every_steps == 10
    assert load_config(None, []).target_accuracy is None
    for bad in ("eval_every_steps=-1", "eval_every_steps=0.5", "target_accuracy=0", "target_accuracy=1.01"):
        with pytest.raises(ConfigError) as info:
            load_config(None, [bad])
        assert info.value.key == bad.split("=")[0]


def test_a_checkpoint_from_before_curves_loads_without_one(tmp_path):
    checkpoint = Checkpoint(1, {}, {}, {}, torch.zeros(2), torch.zeros(2), None, 0.5, (), tuple(CURVE))
    checkpoints.write(checkpoint, tmp_path / "new.pt")
    assert checkpoints.read(tmp_path / "new.pt").curve == tuple(CURVE)
    fields = torch.load(tmp_path / "new.pt", weights_only=True)
    del fields["curve"]
    torch.save(fields, tmp_path / "old.pt")
    assert checkpoints.read(tmp_path / "old.pt").points() == ()
    vars(checkpoint).pop("curve")  # as an object pickled before the field existed
    assert checkpoint.points() == ()


# ---- a trial -------------------------------------------------------------------------------------

SMALL = TrialConfig(dataset="digits", model="simple_cnn", epochs=2, batch_size=64, device="cpu")


@pytest.mark.slow  # trains a model for two epochs: about 2 s on 2 cores
def test_a_trial_evaluates_every_n_steps_and_measures_time_to_target(digits):
    """digits' 1,150 training images at 64: 18 steps per epoch, evaluated after steps 5, 10, 15,
    the end of epoch 1 (18), 20, 25, 30, 35 and the end of epoch 2 (36)."""
    result = run_trial(dataclasses.replace(SMALL, eval_every_steps=5, target_accuracy=0.05), digits)
    assert result.status == "ok", result.reason
    assert [p.steps for p in result.curve] == [5, 10, 15, 18, 20, 25, 30, 35, 36]
    assert [p.images for p in result.curve][3:5] == [1150, 1150 + 128]
    seconds = [p.train_seconds for p in result.curve]
    assert all(0 < a < b for a, b in zip(seconds, seconds[1:]))
    ends = [result.curve[3], result.curve[-1]]  # the epochs' own evaluations
    assert [p.val_accuracy for p in ends] == [h.val_accuracy for h in result.history]
    assert math.isclose(sum(h.epoch_seconds for h in result.history), seconds[-1], abs_tol=1e-6)
    assert math.isclose(result.metrics["train_seconds"], seconds[-1], abs_tol=1e-6)
    assert result.history[0].epoch_seconds == pytest.approx(seconds[3], abs=1e-6)
    first = result.curve[0]
    assert result.metrics["target_reached"] == 1.0  # any evaluation beats 5% on 10 classes
    assert (result.metrics["time_to_target_s"], result.metrics["steps_to_target"]) == (first.train_seconds, 5)
    assert result.metrics["images_to_target"] == 320
    assert result.metrics["eval_seconds"] > 0


@pytest.mark.slow  # a second 2-epoch training
def test_an_unreached_target_and_epoch_evaluations_only(digits):
    result = run_trial(dataclasses.replace(SMALL, target_accuracy=1.0), digits)
    assert [p.steps for p in result.curve] == [18, 36]
    assert result.metrics["target_reached"] == 0.0
    assert not {"time_to_target_s", "steps_to_target", "images_to_target"} & result.metrics.keys()
    assert "target_reached" not in run_trial(SMALL, digits).metrics
