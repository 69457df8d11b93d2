"""The optimizer registry: one declarative spec per optimizer under study.

A spec says how to build the optimizer, which hyperparameters it accepts (with defaults that
train ``simple_cnn`` on ``digits`` well), and its default search space as data. Adding an
optimizer is one entry here; the tests parametrize over ``OPTIMIZERS``.

The registry is data and importing this module does not import torch: each ``build`` reaches
torch through ``_torch_optim()`` when it is called, so listing and validating optimizers stays
fast. Only building an optimizer pays for importing torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from optim import modern
from optim.errors import SpecError, UnknownEntry
from optim.momentum import FORMULATIONS
from optim.ranges import NON_NEGATIVE, NON_POSITIVE, OPEN_UNIT, POSITIVE, UNIT, Interval
from optim.space import Distribution, LogUniform, OneMinusLogUniform

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    build: Callable[[Iterable, Mapping[str, Any]], torch.optim.Optimizer]
    defaults: Mapping[str, Any]
    space: Mapping[str, Distribution] = field(default_factory=dict)
    description: str = ""
    ranges: Mapping[str, Interval] = field(default_factory=dict)  # overrides NUMERIC_RANGES
    # momentum multiplies the step by 1/(1 - momentum) (heavy ball): ``search_effective_lr`` applies
    momentum_scales_step: bool = False
    # the optimizer sets its own step size: ``lr`` stays at its default (a multiplier the schedule
    # scales) and is never searched
    lr_free: bool = False
    # Schedule-Free: evaluates at averaged weights (``optimizer.eval()``/``.train()`` around every
    # evaluation and checkpoint) and takes no LR schedule beyond a warm-up
    schedule_free: bool = False
    # ``pack_update=fused`` has its update (optim/fused.py's RULES; tests/test_pack.py checks they agree)
    fused: bool = False

    @property
    def has_momentum(self) -> bool:
        return self.momentum_scales_step


def _torch_optim():
    """``torch.optim``, imported on first use (builders run only when an optimizer is built)."""
    import torch.optim

    return torch.optim


def _momentum_sgd(nesterov: bool):
    def build(params, hp):
        if hp["formulation"] == "pytorch":
            return _torch_optim().SGD(
                params, lr=hp["lr"], momentum=hp["momentum"], nesterov=nesterov, weight_decay=hp["weight_decay"]
            )
        from optim.momentum_sgd import MomentumSGD

        return MomentumSGD(
            params,
            lr=hp["lr"],
            momentum=hp["momentum"],
            nesterov=nesterov,
            formulation=hp["formulation"],
            weight_decay=hp["weight_decay"],
        )

    return build


# Learning-rate ranges span where each family trains at all: SGD-type methods need larger steps.
_LR_SGD = LogUniform(1e-3, 1.0)
# heavy ball multiplies the step by 1/(1 - momentum): the same effective range as SGD's needs a
# smaller lr, and a 6-10 epoch budget has no use for momentum above 0.99 (quick start before: 2 of 6
# momentum trials diverged with lr up to 1 and momentum up to 0.999)
_LR_MOMENTUM = LogUniform(1e-3, 0.3)
# AdaGrad's first step is lr per coordinate (g / |g|), like Adam's, and its later ones shrink: a
# little above Adam's cap, not far (measured in the quick start: lr 0.08, 0.09 and 0.22 diverged at
# the second batch; the best trials were near 0.008)
_LR_ADAGRAD = LogUniform(1e-4, 3e-2)
# adaptive methods: steps are about lr per coordinate, so above ~1e-2 CNNs diverge (quick start
# before, with 1e-5..0.1: 3 of 6 RMSprop trials and 1 of 6 Adam/AdamW diverged)
_LR_ADAPTIVE = LogUniform(1e-5, 1e-2)
_MOMENTUM = OneMinusLogUniform(0.5, 0.99)

OPTIMIZERS: dict[str, OptimizerSpec] = {
    spec.name: spec
    for spec in [
        OptimizerSpec(
            "sgd",
            lambda params, hp: _torch_optim().SGD(params, lr=hp["lr"], weight_decay=hp["weight_decay"]),
            {"lr": 0.1, "weight_decay": 0.0},
            {"lr": _LR_SGD},
            "plain mini-batch SGD",
            fused=True,
        ),
        OptimizerSpec(
            "momentum",
            _momentum_sgd(nesterov=False),
            {"lr": 0.01, "momentum": 0.9, "formulation": "pytorch", "weight_decay": 0.0},
            {"lr": _LR_MOMENTUM, "momentum": _MOMENTUM},
            "SGD with classical (heavy-ball) momentum; formulation selects pytorch/heavy_ball/ema",
            momentum_scales_step=True,
            fused=True,
        ),
        OptimizerSpec(
            "nesterov",
            _momentum_sgd(nesterov=True),
            {"lr": 0.01, "momentum": 0.9, "formulation": "pytorch", "weight_decay": 0.0},
            {"lr": _LR_MOMENTUM, "momentum": _MOMENTUM},
            "SGD with Nesterov look-ahead momentum",
            ranges={"momentum": OPEN_UNIT},  # torch refuses Nesterov without momentum
            momentum_scales_step=True,
            fused=True,
        ),
        OptimizerSpec(
            "adagrad",
            lambda params, hp: _torch_optim().Adagrad(params, lr=hp["lr"], weight_decay=hp["weight_decay"]),
            {"lr": 0.01, "weight_decay": 0.0},
            {"lr": _LR_ADAGRAD},
            "per-parameter step sizes from the sum of squared gradients",
            fused=True,
        ),
        OptimizerSpec(
            "rmsprop",
            lambda params, hp: _torch_optim().RMSprop(
                params, lr=hp["lr"], alpha=hp["alpha"], weight_decay=hp["weight_decay"]
            ),
            {"lr": 0.001, "alpha": 0.99, "weight_decay": 0.0},
            {"lr": _LR_ADAPTIVE, "alpha": OneMinusLogUniform(0.8, 0.999)},
            "step sizes from a moving average of squared gradients",
            fused=True,
        ),
        OptimizerSpec(
            "adam",
            lambda params, hp: _torch_optim().Adam(
                params, lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), weight_decay=hp["weight_decay"]
            ),
            {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "weight_decay": 0.0},
            {"lr": _LR_ADAPTIVE, "beta1": OneMinusLogUniform(0.5, 0.99)},
            "Adam with coupled L2 weight decay",
            fused=True,
        ),
        OptimizerSpec(
            "adamw",
            lambda params, hp: _torch_optim().AdamW(
                params, lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), weight_decay=hp["weight_decay"]
            ),
            {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "weight_decay": 0.01},
            {"lr": _LR_ADAPTIVE, "beta1": OneMinusLogUniform(0.5, 0.99), "weight_decay": LogUniform(1e-5, 0.1)},
            "Adam with decoupled weight decay",
            fused=True,
        ),
        OptimizerSpec(
            "muon",
            modern.muon,
            {"lr": 0.005, "momentum": 0.95, "nesterov": True, "weight_decay": 0.0, "beta1": 0.9, "beta2": 0.95},
            modern.SPACES["muon"],
            "Muon (timm): orthogonalized momentum for conv and dense kernels, AdamW for the rest",
        ),
        OptimizerSpec(
            "lion",
            modern.lion,
            {"lr": 3e-4, "beta1": 0.9, "beta2": 0.99, "weight_decay": 0.1},
            modern.SPACES["lion"],
            "Lion (timm): the sign of an interpolated momentum, decoupled weight decay",
        ),
        OptimizerSpec(
            "nadamw",
            modern.nadamw,
            {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "weight_decay": 0.01},
            modern.SPACES["nadamw"],
            "AdamW with Nesterov momentum (timm; AlgoPerf's baseline)",
        ),
        OptimizerSpec(
            "lamb",
            modern.lamb,
            {"lr": 0.01, "beta1": 0.9, "beta2": 0.999, "weight_decay": 0.01},
            modern.SPACES["lamb"],
            "LAMB (timm): Adam steps scaled per layer by a trust ratio",
        ),
        OptimizerSpec(
            "lars",
            modern.lars,
            {"lr": 1.0, "momentum": 0.9, "weight_decay": 0.0, "trust_coeff": 0.001},
            modern.SPACES["lars"],
            "LARS (timm): momentum SGD with a layer-wise trust ratio",
            momentum_scales_step=True,
        ),
        OptimizerSpec(
            "adan",
            modern.adan,
            {"lr": 0.001, "beta1": 0.98, "beta2": 0.92, "beta3": 0.99, "weight_decay": 0.0},
            modern.SPACES["adan"],
            "Adan (timm): Nesterov-style momentum of the gradient and its difference",
        ),
        OptimizerSpec(
            "adafactor",
            modern.adafactor,
            {"lr": 0.01, "beta2_decay": -0.8, "weight_decay": 0.0},
            modern.SPACES["adafactor"],
            "Adafactor (torch.optim): factored second moments, relative step sizes",
        ),
        OptimizerSpec(
            "sf_sgd",
            modern.sf_sgd,
            {"lr": 0.5, "momentum": 0.9, "weight_decay": 0.0},
            modern.SPACES["sf_sgd"],
            "Schedule-Free SGD (schedulefree): no schedule, evaluated at averaged weights",
            ranges={"momentum": OPEN_UNIT},  # the library refuses 0
            schedule_free=True,
        ),
        OptimizerSpec(
            "sf_adamw",
            modern.sf_adamw,
            {"lr": 0.0025, "beta1": 0.9, "beta2": 0.999, "weight_decay": 0.0},
            modern.SPACES["sf_adamw"],
            "Schedule-Free AdamW (schedulefree; AlgoPerf 2024 self-tuning winner)",
            schedule_free=True,
        ),
        OptimizerSpec(
            "prodigy",
            modern.prodigy,
            {"lr": 1.0, "d_coef": 1.0, "beta1": 0.9, "beta2": 0.999, "weight_decay": 0.0},
            modern.SPACES["prodigy"],
            "Prodigy (prodigyopt): learning-rate-free Adam, D estimated on the fly",
            lr_free=True,
        ),
    ]
}

CATEGORICAL_HYPERPARAMETERS = {"formulation": FORMULATIONS, "nesterov": (False, True)}
NUMERIC_RANGES = {
    "lr": POSITIVE,
    "weight_decay": NON_NEGATIVE,
    "momentum": UNIT,
    "alpha": UNIT,
    "beta1": UNIT,
    "beta2": UNIT,
    "beta3": UNIT,
    "d_coef": POSITIVE,
    "trust_coeff": POSITIVE,
    "beta2_decay": NON_POSITIVE,
}


def resolve_hyperparameters(name: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """Registry defaults overlaid with ``given``; raises KeyError/ValueError naming the bad key."""
    spec = get_optimizer(name)
    unknown = sorted(set(given) - set(spec.defaults))
    if unknown:
        raise UnknownEntry(f"optimizer.{unknown[0]}", f"{name} takes {', '.join(sorted(spec.defaults))}")
    hp = dict(spec.defaults)
    for key, value in given.items():
        check_hyperparameter(key, value, spec.defaults[key], spec.ranges)
        hp[key] = value
    return hp


# A sweep's default ``optimizers``: the seven of the optimizer articles, as before the modern ones
# joined (a default of every entry would make each config without a list run 17 studies, and refuse
# any schedules without constant); ``conf/modern.yaml`` lists all of them
CLASSIC = ("adagrad", "adam", "adamw", "momentum", "nesterov", "rmsprop", "sgd")
SCHEDULE_FREE_SCHEDULES = ("constant",)  # a warm-up (schedule.warmup_epochs) may still run in front


def usable_schedules(name: str, schedules: Iterable[str]) -> list[str]:
    """The ``schedules`` optimizer ``name`` takes: a schedule-free one only ``constant`` (its
    study searches that alone; an empty answer is refused by the config)."""
    if get_optimizer(name).schedule_free:
        return [s for s in schedules if s in SCHEDULE_FREE_SCHEDULES]
    return list(schedules)


def check_hyperparameter(key: str, value: Any, default: Any, ranges: Mapping[str, Interval] | None = None) -> None:
    """Raise ``SpecError(optimizer.KEY, ...)`` unless ``value`` suits hyperparameter ``key``: one
    of its choices, in its range (``ranges`` overrides ``NUMERIC_RANGES``), or, for a declared
    optimizer's own name, of its default's kind."""
    allowed = CATEGORICAL_HYPERPARAMETERS.get(key)
    if allowed is not None:
        if not any(type(value) is type(a) and value == a for a in allowed):
            choices = ", ".join(str(a).lower() if isinstance(a, bool) else str(a) for a in allowed)
            raise SpecError(f"optimizer.{key}", f"must be one of {choices}, got {value!r}")
    elif key in (ranges or {}) or key in NUMERIC_RANGES:
        (ranges or {}).get(key, NUMERIC_RANGES.get(key)).check(f"optimizer.{key}", value)
    else:
        _check_kind(f"optimizer.{key}", value, default)


def _check_kind(key: str, value: Any, default: Any) -> None:
    if isinstance(default, bool) or isinstance(default, str):
        if type(value) is not type(default):
            raise SpecError(key, f"must be {'true or false' if isinstance(default, bool) else 'text'}, got {value!r}")
    elif isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) == float("inf"):
        raise SpecError(key, f"must be a finite number, got {value!r}")


def get_optimizer(name: str) -> OptimizerSpec:
    try:
        return OPTIMIZERS[name]
    except KeyError:
        raise UnknownEntry(
            "optimizer", f"unknown optimizer {name!r}; choose from: {', '.join(sorted(OPTIMIZERS))}"
        ) from None


def build_optimizer(name: str, params: Iterable, hp: Mapping[str, Any]) -> torch.optim.Optimizer:
    return get_optimizer(name).build(params, resolve_hyperparameters(name, hp))
