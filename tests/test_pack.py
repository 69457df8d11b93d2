"""Packed trials: every member of a pack follows the trajectory it follows trained alone.

For every optimizer of the registry (each momentum formulation, Nesterov included; a new entry
is covered without being listed here) and every schedule family, a pack of 3 members with
different hyperparameters and schedules against the same 3 trials trained solo: the same
per-epoch validation accuracy and LR, and the same parameters and optimizer state, on the CPU in
float32 over 2 epochs. With ``pack_update=exact`` (the default) they are bit-identical, the
Schedule-Free optimizers (constant schedule, a warm-up on one member) moved to their evaluation
point and back as their solo trials are; the reported losses agree within 1e-5 (the mean over a
batch is summed in another order). ``pack_update=fused`` (one update for all members, with
tensors of per-member hyperparameters) exists for the optimizers whose spec says ``fused`` and
agrees with torch.optim within float rounding per step.
Then members leaving the pack (divergence, pruning, a failing reporter), a member's checkpoint
resumed solo, memory sizing, and the fused model for every registry model.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from models import MODELS, build_model
from models.packed import PackedModel, fusable
from optim import OPTIMIZERS, SCHEDULES, build_optimizer, resolve_hyperparameters
from optim.fused import RULES, FusedOptimizer
from sweep.core.outcome import Status
from sweep.core.records import PruneTrial
from sweep.train import memory as pack_memory
from sweep.train.packed import run_pack, unpackable
from sweep.train.solo import TrialConfig, run_trial

TOLERANCE = 1e-5
# the registry as imported: tests elsewhere declare optimizers of their own into it at run time
REGISTRY = dict(OPTIMIZERS)
BASE = TrialConfig(epochs=2, batch_size=32)
TRAIN_IMAGES = 384  # of digits' 1,150: 12 steps per epoch, enough for every schedule to move


@pytest.fixture(scope="module")
def small(digits):
    """The session's digits with fewer training images (the same validation and test sets)."""
    return dataclasses.replace(digits, train_x=digits.train_x[:TRAIN_IMAGES], train_y=digits.train_y[:TRAIN_IMAGES])


# per optimizer: three members' hyperparameters, far enough apart to tell them apart
HYPERPARAMETERS = {
    "sgd": [{"lr": 0.1}, {"lr": 0.05, "weight_decay": 1e-3}, {"lr": 0.2}],
    "momentum": [
        {"lr": 0.01, "momentum": 0.9},
        {"lr": 0.05, "momentum": 0.5},
        {"lr": 0.02, "momentum": 0.99, "weight_decay": 1e-3},
    ],
    "nesterov": [
        {"lr": 0.01, "momentum": 0.9},
        {"lr": 0.05, "momentum": 0.5},
        {"lr": 0.02, "momentum": 0.8, "weight_decay": 1e-3},
    ],
    "adagrad": [{"lr": 0.01}, {"lr": 0.03}, {"lr": 0.005, "weight_decay": 1e-3}],
    "rmsprop": [{"lr": 0.001}, {"lr": 0.003, "alpha": 0.9}, {"lr": 0.0005, "weight_decay": 1e-3}],
    "adam": [{"lr": 0.001}, {"lr": 0.003, "beta1": 0.8, "beta2": 0.99}, {"lr": 0.0005, "weight_decay": 1e-3}],
    "adamw": [{"lr": 0.001}, {"lr": 0.003, "beta1": 0.8}, {"lr": 0.0005, "weight_decay": 0.1}],
}


def _hyperparameters(optimizer: str) -> list[dict]:
    """The members' hyperparameters: the hand-picked ones above, or for any other registry entry
    its defaults, half and twice its LR (with some weight decay where it takes one)."""
    if optimizer in HYPERPARAMETERS:
        return HYPERPARAMETERS[optimizer]
    defaults = REGISTRY[optimizer].defaults
    decay = {"weight_decay": 1e-3} if "weight_decay" in defaults else {}
    return [{}, {"lr": defaults["lr"] / 2}, {"lr": defaults["lr"] * 2, **decay}]


# every schedule family, with parameters that change the LR within 2 epochs; warm-up on one
SCHEDULE_PARAMS = {
    "step": {"step_epochs": 1},
    "multistep": {"milestones": [0.5]},
    "plateau": {"patience": 0},
    "cosine": {"warmup_epochs": 1},
}
# a Schedule-Free optimizer takes the constant schedule only, with or without a warm-up
SCHEDULE_FREE = [("constant", {}), ("constant", {"warmup_epochs": 1}), ("constant", {})]


def _rule_cases():
    """(optimizer, formulation) for every fused rule, each with 3 schedules; the schedules cycle
    through every family."""
    schedules = itertools.cycle(sorted(SCHEDULES))
    for optimizer, formulation in RULES:
        yield optimizer, formulation, [next(schedules) for _ in range(3)]


RULE_CASES = list(_rule_cases())


def _exact_cases():
    """Every registry optimizer (every formulation of those that have them, as the fused rules
    list them): 3 schedules cycling through every family; a Schedule-Free one ``SCHEDULE_FREE``."""
    yield from RULE_CASES
    schedules = itertools.cycle(sorted(SCHEDULES)[::-1])
    for name, spec in sorted(REGISTRY.items()):
        if not spec.fused:
            yield name, None, SCHEDULE_FREE if spec.schedule_free else [next(schedules) for _ in range(3)]


EXACT_CASES = list(_exact_cases())


def _case_id(optimizer, formulation, schedules) -> str:
    names = [s if isinstance(s, str) else s[0] + ("+warmup" if s[1] else "") for s in schedules]
    return f"{optimizer}-{formulation or 'plain'}-{'-'.join(names)}"


def test_the_fused_rules_are_the_optimizers_whose_spec_says_fused():
    assert {o for o, _ in RULES} == {n for n, s in REGISTRY.items() if s.fused}
    assert {o for o, _, _ in RULE_CASES} <= set(HYPERPARAMETERS)
    assert {f for o, f in RULES if o == "nesterov"} == {"pytorch", "heavy_ball", "ema"}


def test_the_exact_cases_cover_every_optimizer_formulation_and_schedule():
    assert {o for o, _, _ in EXACT_CASES} == set(REGISTRY)
    assert {s for _, _, schedules in EXACT_CASES for s in schedules if isinstance(s, str)} == set(SCHEDULES)
    assert {f for o, f, _ in EXACT_CASES if o == "nesterov"} == {"pytorch", "heavy_ball", "ema"}
    for optimizer, _, schedules in EXACT_CASES:  # what the config lets a schedule-free optimizer take
        if REGISTRY[optimizer].schedule_free:
            assert {s for s, _ in schedules} == {"constant"} and any(p for _, p in schedules)


def _configs(optimizer: str, formulation: str | None, schedules: list) -> list[TrialConfig]:
    """One config per member; a schedule is a name (with ``SCHEDULE_PARAMS``) or (name, params)."""
    configs = []
    for hp, schedule in zip(_hyperparameters(optimizer), schedules):
        hp = {**hp, **({"formulation": formulation} if formulation else {})}
        name, params = (schedule, SCHEDULE_PARAMS.get(schedule, {})) if isinstance(schedule, str) else schedule
        configs.append(
            dataclasses.replace(BASE, optimizer=optimizer, optimizer_params=hp, schedule=name, schedule_params=params)
        )
    return configs


def _keeper(saved: list):
    """A ``save`` callback keeping copies (a checkpoint's tensors are live: training goes on)."""
    return lambda checkpoint: saved.append(checkpoint.detached())


def _trained(configs, data):
    """Each config solo, then all as one pack: (solo results, pack results, their checkpoints)."""
    solo_saved = [[] for _ in configs]
    pack_saved = [[] for _ in configs]
    solo = [run_trial(c, data, save=_keeper(saved)) for c, saved in zip(configs, solo_saved)]
    packed = run_pack(configs, data, saves=[_keeper(saved) for saved in pack_saved])
    assert packed.error == ""
    return solo, packed.results, solo_saved, pack_saved


def _assert_same_trajectory(solo, packed, solo_checkpoint, pack_checkpoint, tolerance: float = 0.0):
    assert packed.status == solo.status, (packed.reason, solo.reason)
    assert [h.epoch for h in packed.history] == [h.epoch for h in solo.history]
    for s, p in zip(solo.history, packed.history):
        assert p.val_accuracy == s.val_accuracy and p.train_accuracy == s.train_accuracy
        assert p.scheduled_lr == pytest.approx(s.scheduled_lr, rel=1e-12)
        assert p.val_loss == pytest.approx(s.val_loss, abs=TOLERANCE)
    assert [(c.steps, c.images, c.val_accuracy) for c in packed.curve] == [
        (c.steps, c.images, c.val_accuracy) for c in solo.curve
    ]
    if solo_checkpoint is None:
        return
    for name, value in solo_checkpoint.model.items():
        assert torch.allclose(pack_checkpoint.model[name].float(), value.float(), rtol=0, atol=tolerance), name
    solo_state, pack_state = solo_checkpoint.optimizer["state"], pack_checkpoint.optimizer["state"]
    assert solo_state.keys() == pack_state.keys()
    for index, entry in solo_state.items():
        assert entry.keys() == pack_state[index].keys()  # the solo optimizer's own state layout
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                assert torch.allclose(pack_state[index][key], value, rtol=0, atol=tolerance), (index, key)
            else:  # what an optimizer keeps beside its tensors (timm's Muon: use_muon)
                assert pack_state[index][key] == value, (index, key)
    solo_groups, pack_groups = solo_checkpoint.optimizer["param_groups"], pack_checkpoint.optimizer["param_groups"]
    assert len(pack_groups) == len(solo_groups)
    for solo_group, pack_group in zip(solo_groups, pack_groups):
        for key, value in solo_group.items():  # a Schedule-Free one's mode and averaging weights too
            assert pack_group[key] == (pytest.approx(value, rel=1e-12) if isinstance(value, float) else value), key
    assert _approx(pack_checkpoint.schedule, solo_checkpoint.schedule)  # a plateau keeps the best loss
    assert torch.equal(pack_checkpoint.generator, solo_checkpoint.generator)  # the batch order goes on alike
    assert torch.equal(pack_checkpoint.rng, solo_checkpoint.rng)


def _approx(a, b) -> bool:
    """Equal, floats within the tolerance, through dicts and lists."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_approx(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_approx(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return a == pytest.approx(b, abs=TOLERANCE)
    return a == b


@pytest.mark.parametrize("optimizer,formulation,schedules", EXACT_CASES, ids=[_case_id(*c) for c in EXACT_CASES])
@pytest.mark.slow  # trains a pack and its solo trials
def test_each_member_follows_its_solo_trajectory(small, optimizer, formulation, schedules):
    configs = _configs(optimizer, formulation, schedules)
    solo, packed, solo_saved, pack_saved = _trained(configs, small)
    for i in range(len(configs)):
        assert len(pack_saved[i]) == len(solo_saved[i]) == 2  # a checkpoint per epoch, as solo
        for s_ck, p_ck in zip(solo_saved[i], pack_saved[i]):
            _assert_same_trajectory(solo[i], packed[i], s_ck, p_ck)
        assert packed[i].metrics["test_accuracy"] == solo[i].metrics["test_accuracy"]


@pytest.mark.parametrize(
    "optimizer,schedules",
    [("adam", ["onecycle", "plateau", "cosine"]), ("sf_adamw", SCHEDULE_FREE)],
    ids=["adam", "sf_adamw"],
)
@pytest.mark.slow  # trains a pack and its solo trials
def test_a_member_checkpoint_resumes_solo_exactly(small, optimizer, schedules):
    """A Schedule-Free member's checkpoint is at its evaluation point; its solo resume knows it.
    Evaluated every 5 steps too (12 per epoch: after 5, 10 | 15, 20), the pack and its members'
    resumes are evaluated where their solo trials are, and at the same weights."""
    configs = [dataclasses.replace(c, eval_every_steps=5) for c in _configs(optimizer, None, schedules)]
    solo, packed, solo_saved, pack_saved = _trained(configs, small)
    assert [c.steps for c in packed[0].curve] == [5, 10, 12, 15, 20, 24]
    for i, config in enumerate(configs):
        _assert_same_trajectory(solo[i], packed[i], solo_saved[i][-1], pack_saved[i][-1])
        resumed_saved = []
        resumed = run_trial(config, small, resume=pack_saved[i][0], save=_keeper(resumed_saved))
        _assert_same_trajectory(solo[i], resumed, solo_saved[i][-1], resumed_saved[-1])


@pytest.mark.parametrize(
    "optimizer,schedules",
    [("sgd", ["constant", "cosine", "constant"]), ("sf_sgd", SCHEDULE_FREE)],
    ids=["sgd", "sf_sgd"],
)
@pytest.mark.slow  # trains a pack and its solo trials
def test_a_diverging_member_leaves_and_the_others_are_untouched(small, optimizer, schedules):
    """A Schedule-Free member evaluated where it diverged is moved to its evaluation point alone:
    the others go on training at theirs."""
    configs = _configs(optimizer, None, schedules)
    configs[1] = dataclasses.replace(configs[1], optimizer_params={"lr": 100.0})
    solo, packed, solo_saved, pack_saved = _trained(configs, small)
    assert solo[1].status == packed[1].status == Status.DIVERGED
    assert packed[1].reason == solo[1].reason  # the same step named
    assert packed[1].metrics["val_accuracy"] == solo[1].metrics["val_accuracy"]  # measured where it stopped
    assert pack_saved[1] == []
    for i in (0, 2):
        _assert_same_trajectory(solo[i], packed[i], solo_saved[i][-1], pack_saved[i][-1])


@pytest.mark.slow  # trains a pack and its solo trials
def test_pruned_and_failing_members_leave_alone(small):
    configs = _configs("momentum", "pytorch", ["constant", "step", "exponential"])

    def prune(m):
        raise PruneTrial(f"pruned after epoch {m.epoch}")

    def broken(m):
        raise RuntimeError("its tracking store refused the epoch")

    epochs_seen = []

    def count(m):
        epochs_seen.append(m.epoch)

    finished = []
    solo = [run_trial(c, small) for c in configs]
    result = run_pack(
        configs,
        small,
        reporters=[prune, count, broken],
        on_finish=lambda i, r: finished.append((i, r.status, len(epochs_seen))),
    )
    pruned, kept, failed = result.results
    # the members that left were handed over at once (the worker records them then), the last at the end
    assert finished == [
        (0, Status.PRUNED, 0),
        (2, Status.FAILED, 1),
        (1, Status.OK, 2),
    ]  # (member, outcome, epochs the kept one had reported)
    assert pruned.status == Status.PRUNED and pruned.epochs_run == 1 and pruned.reason == "pruned after epoch 1"
    assert failed.status == Status.FAILED and "refused the epoch" in failed.reason and failed.epochs_run == 1
    _assert_same_trajectory(solo[1], kept, None, None)
    assert kept.metrics["test_accuracy"] == solo[1].metrics["test_accuracy"]


@pytest.mark.slow  # trains a pack and its solo trials
def test_a_failure_of_the_pack_itself_leaves_its_members_unfinished(small):
    configs = _configs("adagrad", None, ["constant", "constant", "constant"])

    def save_fails(checkpoint):
        raise OSError("no space left on device")

    result = run_pack(configs, small, saves=[None, save_fails, None])
    assert result.results == [None, None, None]
    assert result.error == "OSError: no space left on device"


def test_what_cannot_be_packed_is_said():
    assert unpackable([BASE, dataclasses.replace(BASE, optimizer="adam")]) == "its trials differ in optimizer"
    assert unpackable([BASE, dataclasses.replace(BASE, batch_size=64)]) == "its trials differ in batch_size"
    assert unpackable([BASE, dataclasses.replace(BASE, schedule="cosine", l1=1e-4)]) is None
    with pytest.raises(ValueError, match="differ in optimizer.formulation"):
        run_pack([dataclasses.replace(BASE, optimizer_params={"formulation": f}) for f in ("ema", "pytorch")])


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.slow  # runs every registry model, resnet18 included
def test_every_registry_model_packs_with_per_member_batchnorm(name):
    """Each member's logits, gradients and BatchNorm running statistics are its own, as the solo
    model computes them (resnet18 and fastnet through vmap, the Sequential models fused)."""
    torch.manual_seed(0)
    shape = (3, 8, 8)
    model = build_model(name, shape, 10)
    pack = PackedModel(model, 2)
    assert pack.fused == fusable(model) == (name in ("simple_cnn", "lenet"))
    with torch.no_grad():  # member 1 has its own weights, so its own activations and statistics
        for p in pack.params.values():
            p[1].mul_(0.5)
    before = [pack.member_state_dict(i) for i in range(2)]
    x, y = torch.randn(16, *shape), torch.randint(0, 10, (16,))
    logits = pack(x)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.repeat(2), reduction="sum").backward()
    for member in range(2):
        solo = build_model(name, shape, 10)
        solo.load_state_dict(before[member])
        solo_logits = solo(x)
        torch.nn.functional.cross_entropy(solo_logits, y, reduction="sum").backward()
        assert torch.allclose(logits[member], solo_logits, atol=1e-5), member
        after = pack.member_state_dict(member)
        for key, value in solo.state_dict().items():  # BatchNorm's running statistics: per member
            assert torch.allclose(after[key].float(), value.float(), atol=1e-5), (member, key)
        for key, p in solo.named_parameters():
            assert torch.allclose(pack.params[key].grad[member], p.grad, atol=1e-4), (member, key)


def test_memory_sizes_packs_from_one_step(digits):
    config = dataclasses.replace(BASE, optimizer="adam")
    per_member = pack_memory.member_bytes(config, digits, torch.device("cpu"))
    parameters = sum(p.numel() * 4 for p in build_model("simple_cnn", digits.in_shape, 10).parameters())
    assert per_member > parameters * 4  # parameters, gradients, two Adam states, and activations
    tight = dataclasses.replace(config, pack_memory_mb=per_member * 3 / 2**20 / pack_memory.HEADROOM)
    assert pack_memory.fit(tight, digits, torch.device("cpu")).members == 3
    assert pack_memory.fit(dataclasses.replace(config, pack_memory_mb=0.001), digits, torch.device("cpu")).members == 1
    assert pack_memory.split(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert pack_memory.split(list(range(4)), 8) == [[0, 1, 2, 3]]


@pytest.mark.parametrize("optimizer,formulation", list(RULES), ids=[f"{o}-{f or 'plain'}" for o, f in RULES])
def test_the_fused_update_is_the_registry_optimizer_per_member(optimizer, formulation):
    """``FusedOptimizer`` steps 3 members with different hyperparameters and LRs as 3 solo
    optimizers do, over 50 steps of gradients spanning 12 orders of magnitude."""
    torch.manual_seed(0)
    hps = [
        resolve_hyperparameters(optimizer, {**hp, **({"formulation": formulation} if formulation else {})})
        for hp in HYPERPARAMETERS[optimizer]
    ]
    start = torch.randn(3, 500) * 0.1
    stacked = start.clone().requires_grad_()
    fused = FusedOptimizer(optimizer, hps, {"w": stacked})
    solo = [start[i].clone().requires_grad_() for i in range(3)]
    solo_optimizers = [build_optimizer(optimizer, [p], hp) for p, hp in zip(solo, hps)]
    for step in range(50):
        grads = torch.randn(3, 500) * torch.logspace(-12, 0, 500)
        lrs = [hp["lr"] * (1 + 0.01 * step) for hp in hps]  # a schedule moving each member's LR
        for p, g, o, lr in zip(solo, grads, solo_optimizers, lrs):
            p.grad = g.clone()
            o.param_groups[0]["lr"] = lr
            o.step()
        stacked.grad = grads.clone()
        fused.step(torch.tensor(lrs, dtype=torch.float64))
    for i in range(3):
        assert torch.allclose(stacked.detach()[i], solo[i].detach(), rtol=0, atol=1e-6), i
        state = solo_optimizers[i].state[solo[i]]
        for key in fused.rule.state:
            scale = state[key].abs().max().item()  # a sum of steps of both signs may cancel to near 0
            assert torch.allclose(fused.state["w"][key][i], state[key], rtol=0, atol=1e-6 * scale), key


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
@pytest.mark.slow  # trains a pack and its solo trials
def test_a_fused_pack_follows_its_solo_trajectories(small, optimizer):
    """The fused update within float rounding over 2 epochs, its checkpoints in the solo format
    (where rounding is not amplified: an adaptive optimizer turns rounding in a gradient near its
    eps into a different step, which only the exact update avoids)."""
    configs = [
        dataclasses.replace(c, pack_update="fused")
        for c in _configs(optimizer, "ema" if optimizer == "momentum" else None, ["onecycle", "cosine", "plateau"])
    ]
    configs[2] = dataclasses.replace(configs[2], optimizer_params={**configs[2].optimizer_params, "weight_decay": 0.0})
    solo, packed, solo_saved, pack_saved = _trained(configs, small)
    for i in range(3):
        _assert_same_trajectory(solo[i], packed[i], solo_saved[i][-1], pack_saved[i][-1], tolerance=TOLERANCE)
