"""Fused optimizers: one update for the stacked parameters of a pack of trials, each member with
its own hyperparameters and state.

torch.optim keeps one set of hyperparameters per param group, and a pack stores each parameter
of all its members as one tensor with a leading member dimension, so torch.optim cannot step a
pack. ``FusedOptimizer`` takes every hyperparameter as a tensor of per-member values (broadcast
over the member dimension) and does, element for element, what the registry's optimizer does for
one trial: torch.optim's SGD (with PyTorch-style momentum and Nesterov), Adagrad, RMSprop, Adam
and AdamW at their default ``eps``/``lr_decay``/``centered``, and ``MomentumSGD``'s heavy-ball
and EMA formulations. tests/test_pack.py checks each against the solo optimizer.

The state keeps torch.optim's names (``momentum_buffer``, ``exp_avg`` ...), so one member's state
becomes a solo optimizer's ``state_dict`` (``member_state``): a member's checkpoint is a solo
trial's checkpoint, and a pack that has to be re-run goes on solo from it.

``MemberOptimizers`` (``pack_update=exact``) steps each member with its own registry optimizer
instead: every optimizer of the registry packs that way, the ones without a rule here included.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

Tensor = torch.Tensor

ADAGRAD_EPS, RMSPROP_EPS, ADAM_EPS = 1e-10, 1e-8, 1e-8  # torch.optim's defaults, which the registry uses


@dataclass(frozen=True)
class Rule:
    """One optimizer's per-element update. ``update(p, g, state, hp, lr, step)`` changes ``p``
    and ``state`` in place. ``hp`` maps each hyperparameter, and ``one_minus_<name>`` of each, to
    its per-member values shaped to broadcast against ``p`` (``<name>_f64``: in double precision);
    ``lr`` holds the members' learning rates in double precision. torch.optim takes these as
    Python floats (double) and rounds each scalar it computes from them to the parameter's
    precision once; so does this, in the same order of operations, which keeps a member within
    float rounding of its solo trajectory even where an adaptive optimizer amplifies rounding
    (gradients near its ``eps``). ``state`` names torch.optim's per-parameter state of the same
    optimizer; ``counts_steps``: that state also has torch's ``step``."""

    hyperparameters: tuple[str, ...]
    state: tuple[str, ...]
    update: Callable[..., None]
    counts_steps: bool = False


def _decayed(p: Tensor, g: Tensor, hp: Mapping[str, Tensor]) -> Tensor:
    """L2 weight decay as torch.optim couples it: g + wd * p."""
    return g + hp["weight_decay"] * p


def _f32(value: Tensor, like: Tensor) -> Tensor:
    return value.to(like.dtype)


def _sgd(p, g, state, hp, lr, step):
    p.sub_(_f32(lr, p) * _decayed(p, g, hp))


def _pytorch_momentum(nesterov: bool):
    def update(p, g, state, hp, lr, step):
        g = _decayed(p, g, hp)
        buf = state["momentum_buffer"]
        buf.mul_(hp["momentum"]).add_(g)  # torch seeds the buffer with the first gradient: 0*mu + g
        p.sub_(_f32(lr, p) * (g + hp["momentum"] * buf if nesterov else buf))

    return update


def _heavy_ball(nesterov: bool):
    def update(p, g, state, hp, lr, step):
        g = _decayed(p, g, hp)
        v = state["velocity"]
        v.mul_(hp["momentum"]).add_(_f32(lr, p) * g)
        p.sub_(hp["momentum"] * v + _f32(lr, p) * g if nesterov else v)

    return update


def _ema(nesterov: bool):
    def update(p, g, state, hp, lr, step):
        g = _decayed(p, g, hp)
        v = state["velocity"]
        v.mul_(hp["momentum"]).add_(hp["one_minus_momentum"] * g)
        p.sub_(_f32(lr, p) * (hp["momentum"] * v + hp["one_minus_momentum"] * g if nesterov else v))

    return update


def _adagrad(p, g, state, hp, lr, step):
    g = _decayed(p, g, hp)
    state["sum"].addcmul_(g, g)
    p.sub_(_f32(lr, p) * g / state["sum"].sqrt().add_(ADAGRAD_EPS))


def _rmsprop(p, g, state, hp, lr, step):
    g = _decayed(p, g, hp)
    square_avg = state["square_avg"]
    square_avg.mul_(hp["alpha"]).add_(hp["one_minus_alpha"] * g * g)
    p.sub_(_f32(lr, p) * g / square_avg.sqrt().add_(RMSPROP_EPS))


def _adam(decoupled: bool):
    def update(p, g, state, hp, lr, step):
        if decoupled:
            p.mul_(_f32(1 - lr * hp["weight_decay_f64"], p))
        else:
            g = _decayed(p, g, hp)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(g, hp["one_minus_beta1"])
        exp_avg_sq.mul_(hp["beta2"]).add_(hp["one_minus_beta2"] * g * g)
        step_size = _f32(lr / (1 - hp["beta1_f64"] ** step), p)
        correction2_sqrt = _f32((1 - hp["beta2_f64"] ** step).sqrt(), p)
        p.sub_(step_size * exp_avg / (exp_avg_sq.sqrt() / correction2_sqrt).add_(ADAM_EPS))

    return update


_MOMENTUM_HP = ("momentum", "weight_decay")
_ADAM_HP = ("beta1", "beta2", "weight_decay")

# (optimizer, formulation) -> its rule; a formulation of None: the optimizer has none
RULES: dict[tuple[str, str | None], Rule] = {
    ("sgd", None): Rule(("weight_decay",), (), _sgd),
    ("momentum", "pytorch"): Rule(_MOMENTUM_HP, ("momentum_buffer",), _pytorch_momentum(False)),
    ("nesterov", "pytorch"): Rule(_MOMENTUM_HP, ("momentum_buffer",), _pytorch_momentum(True)),
    ("momentum", "heavy_ball"): Rule(_MOMENTUM_HP, ("velocity",), _heavy_ball(False)),
    ("nesterov", "heavy_ball"): Rule(_MOMENTUM_HP, ("velocity",), _heavy_ball(True)),
    ("momentum", "ema"): Rule(_MOMENTUM_HP, ("velocity",), _ema(False)),
    ("nesterov", "ema"): Rule(_MOMENTUM_HP, ("velocity",), _ema(True)),
    ("adagrad", None): Rule(("weight_decay",), ("sum",), _adagrad, counts_steps=True),
    ("rmsprop", None): Rule(("alpha", "weight_decay"), ("square_avg",), _rmsprop, counts_steps=True),
    ("adam", None): Rule(_ADAM_HP, ("exp_avg", "exp_avg_sq"), _adam(decoupled=False), counts_steps=True),
    ("adamw", None): Rule(_ADAM_HP, ("exp_avg", "exp_avg_sq"), _adam(decoupled=True), counts_steps=True),
}


def rule_for(optimizer: str, hyperparameters: Sequence[Mapping]) -> Rule:
    """The rule for a pack's members; they must agree on the optimizer's formulation."""
    formulations = {hp.get("formulation") for hp in hyperparameters}
    if len(formulations) != 1:
        raise ValueError(f"a pack's members must share one momentum formulation, got {sorted(map(str, formulations))}")
    try:
        return RULES[(optimizer, formulations.pop())]
    except KeyError:
        raise ValueError(f"optimizer {optimizer!r} has no fused form") from None


class FusedOptimizer:
    """Steps stacked parameters ``{name: tensor of shape (members, ...)}``: member ``i`` of each
    tensor is one trial's parameter, updated with member ``i``'s hyperparameters and learning rate.
    ``hyperparameters``: one resolved mapping per member (``optim.resolve_hyperparameters``)."""

    def __init__(self, optimizer: str, hyperparameters: Sequence[Mapping], params: Mapping[str, Tensor]):
        self.optimizer = optimizer
        self.rule = rule_for(optimizer, hyperparameters)
        device = next(iter(params.values())).device
        dtype = next(iter(params.values())).dtype
        self.hp: dict[str, Tensor] = {}
        for key in self.rule.hyperparameters:
            values = [float(hp[key]) for hp in hyperparameters]
            self.hp[key] = torch.tensor(values, device=device, dtype=dtype)
            self.hp[f"one_minus_{key}"] = torch.tensor([1.0 - v for v in values], device=device, dtype=dtype)
            self.hp[f"{key}_f64"] = torch.tensor(values, device=device, dtype=torch.float64)
        self.params = dict(params)
        self.state = {name: {key: torch.zeros_like(p) for key in self.rule.state} for name, p in self.params.items()}
        self.steps = 0

    @torch.no_grad()
    def step(self, lr: Tensor) -> None:
        """One update of every member; ``lr`` holds each member's learning rate for this step
        (float64: see ``Rule``)."""
        self.steps += 1
        shaped: dict[int, tuple[dict[str, Tensor], Tensor]] = {}
        for name, p in self.params.items():
            if p.grad is None:
                continue
            if p.dim() not in shaped:
                view = (-1,) + (1,) * (p.dim() - 1)
                shaped[p.dim()] = ({k: v.view(view) for k, v in self.hp.items()}, lr.view(view))
            hp, member_lr = shaped[p.dim()]
            self.rule.update(p, p.grad, self.state[name], hp, member_lr, self.steps)

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    def select(self, keep: Tensor, params: Mapping[str, Tensor]) -> None:
        """Keep only the members ``keep`` (indices), stepping ``params`` (the model's compacted
        tensors) from now on."""
        self.hp = {k: v[keep] for k, v in self.hp.items()}
        self.state = {name: {k: v[keep].contiguous() for k, v in state.items()} for name, state in self.state.items()}
        self.params = dict(params)

    def member_state(self, member: int, names: Sequence[str]) -> dict[int, dict[str, Tensor]]:
        """Member ``member``'s state as torch.optim's ``state_dict()['state']`` of the solo optimizer
        over parameters ``names`` (in the model's parameter order)."""
        state: dict[int, dict[str, Tensor]] = {}
        for index, name in enumerate(names):
            entry = {k: v[member].detach().clone() for k, v in self.state[name].items()}
            if self.rule.counts_steps:
                entry["step"] = torch.tensor(float(self.steps))
            if entry and self.steps:  # torch.optim has no state before the first step
                state[index] = entry
        return state


class MemberOptimizers:
    """Each member stepped by its own registry optimizer (any of them: torch.optim, ``MomentumSGD``,
    timm's, Schedule-Free, Prodigy), built as for a solo trial: the very update a solo trial makes,
    so a member is bit-identical to its solo trial on the CPU.

    Each member's optimizer steps the member's own copy of its parameters (and of their gradients),
    not views of its slice of the stacked tensors: a slice starts wherever the members before it
    end, and a BLAS reduction (Prodigy's ``torch.dot``) sums an unaligned vector in another order
    than the aligned tensor a solo trial has. So each step copies the member's gradients in and its
    parameters back (exact copies); the pack compacting (``select``) moves nothing. It costs one
    optimizer step per member (a loop over the members, each over the parameters) and the copies,
    where ``FusedOptimizer`` makes one pass for all; bench/packing.py measures the difference.

    ``holder(i)`` is member ``i``'s optimizer: its schedule sets its LR, its ``state_dict()`` is the
    member's optimizer checkpoint as is. A Schedule-Free one's ``eval()``/``train()`` move the
    member's own parameters: ``publish`` then copies them into the stacked tensors."""

    def __init__(self, optimizer: str, hyperparameters: Sequence[Mapping], params: Mapping[str, Tensor]):
        from optim.optimizers import build_optimizer

        self.optimizer = optimizer
        self.params = dict(params)
        # per member, by parameter name in the model's order (a solo optimizer's state_dict order)
        members = range(len(hyperparameters))
        self.own = [{name: p.detach()[i].clone() for name, p in self.params.items()} for i in members]
        self.grads = [{name: torch.empty_like(p) for name, p in own.items()} for own in self.own]
        self.members = [build_optimizer(optimizer, list(p.values()), hp) for p, hp in zip(self.own, hyperparameters)]

    def holder(self, member: int) -> torch.optim.Optimizer:
        return self.members[member]

    @torch.no_grad()
    def step(self, lr: Tensor | None = None) -> None:
        """One update of every member, each at its own optimizer's LR (``lr`` is not needed)."""
        for member, (own, grads, optimizer) in enumerate(zip(self.own, self.grads, self.members)):
            for name, p in own.items():
                grad = self.params[name].grad
                p.grad = None if grad is None else grads[name].copy_(grad[member])
            optimizer.step()
            self._copy_back(member)

    def publish(self, optimizer: torch.optim.Optimizer) -> None:
        """Copy the parameters of member ``optimizer`` (after its ``eval()``/``train()``) into the
        stacked tensors."""
        with torch.no_grad():
            self._copy_back(next(i for i, o in enumerate(self.members) if o is optimizer))

    def _copy_back(self, member: int) -> None:
        for name, p in self.own[member].items():
            self.params[name].data[member].copy_(p)

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    def select(self, keep: Tensor, params: Mapping[str, Tensor]) -> None:
        """Keep members ``keep``; their optimizers, each over its own parameters, step the
        compacted ``params`` from now on."""
        kept = keep.tolist()
        self.members = [self.members[k] for k in kept]
        self.own = [self.own[k] for k in kept]
        self.grads = [self.grads[k] for k in kept]
        self.params = dict(params)
