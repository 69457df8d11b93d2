"""``TrialConfig`` is written out as a class; it must stay the trial keys of ``SweepConfig``."""

from __future__ import annotations

import dataclasses

from sweep.core.config import GROUPS, TRIAL_FIELDS, SweepConfig, TrialConfig


def test_trial_config_has_every_trial_key_with_its_type_and_default():
    declared = {f.name: f for f in dataclasses.fields(TrialConfig)}
    for key in TRIAL_FIELDS:
        assert key.name in declared, f"TrialConfig lacks the trial key {key.name}"
        assert (declared[key.name].type, declared[key.name].default) == (key.type, key.default), key.name
    extra = set(declared) - {f.name for f in TRIAL_FIELDS}
    assert extra == {"optimizer", "optimizer_params", "custom_optimizer", "schedule", "schedule_params"}
    assert TrialConfig().optimizer == GROUPS["optimizer"][0] and TrialConfig().schedule == GROUPS["schedule"][0]


def test_a_sweep_config_makes_its_trial_config():
    tc = SweepConfig(epochs=3, seed=7).trial_config("adam", {"lr": 0.01})
    assert (tc.epochs, tc.seed, tc.optimizer, tc.optimizer_params) == (3, 7, "adam", {"lr": 0.01})
