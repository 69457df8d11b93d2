"""Your own optimizer, declared as data and put in the registry beside the built-in ones.

A declaration names a callable (``package.module:Class``, usually a ``torch.optim.Optimizer``
subclass) called as ``target(params, **arguments)``, its hyperparameters with their defaults, and
its search space in ``optim.space``'s vocabulary. Being data, a sweep saves it in ``sweep.yaml``
(a resume needs no file) and each trial carries it to the Ray worker that builds it. A YAML file
(``conf/optimizer/NAME.yaml`` or any path) and ``sweep.api.declare_optimizer`` both end here.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optim import yamlfile
from optim.errors import SpecError
from optim.optimizers import OPTIMIZERS, OptimizerSpec, check_hyperparameter
from optim.space import Choice, Conditional, Distribution, from_data, to_data

BUILT_IN = frozenset(OPTIMIZERS)

FIELDS = ("name", "class", "description", "hyperparameters", "arguments", "space", "schedule_free", "lr_free")
_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
_TARGET = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


@dataclass(frozen=True)
class Declaration:
    """One user optimizer. ``arguments`` packs hyperparameters into one keyword argument as a tuple
    (``betas: [beta1, beta2]``), so each stays one searchable, fixable value; the others pass by name."""

    name: str
    target: str  # package.module:Class
    hyperparameters: Mapping[str, Any]
    space: Mapping[str, Distribution] = field(default_factory=dict)
    arguments: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    description: str = ""
    schedule_free: bool = False
    lr_free: bool = False
    # the callable itself, once imported: a trial carries it to its worker (pickled by reference,
    # or by value when the sweep sends the user's module that way: sweep.execution.shipping)
    loaded: Any = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The declaration as YAML-able data (what ``parse`` reads back; saved in ``sweep.yaml``)."""
        out: dict[str, Any] = {"class": self.target, "hyperparameters": dict(self.hyperparameters)}
        if self.description:
            out["description"] = self.description
        if self.arguments:
            out["arguments"] = {k: list(v) for k, v in self.arguments.items()}
        if self.space:
            out["space"] = {k: to_data(v) for k, v in self.space.items()}
        out.update({k: True for k in ("schedule_free", "lr_free") if getattr(self, k)})
        return out

    def keyword_arguments(self, hp: Mapping[str, Any]) -> dict[str, Any]:
        packed = {name for names in self.arguments.values() for name in names}
        kwargs = {k: v for k, v in hp.items() if k not in packed}
        kwargs.update({argument: tuple(hp[n] for n in names) for argument, names in self.arguments.items()})
        return kwargs

    def spec(self) -> OptimizerSpec:
        target = load_target(self)

        def build(params, hp):
            optimizer = target(params, **self.keyword_arguments(hp))
            if callable(getattr(optimizer, "train", None)) and callable(getattr(optimizer, "eval", None)):
                optimizer.train()  # handed over ready to train, as the built-in Schedule-Free ones are
            return optimizer

        return OptimizerSpec(
            self.name,
            build,
            dict(self.hyperparameters),
            dict(self.space),
            self.description or f"{self.target} (declared)",
            schedule_free=self.schedule_free,
            lr_free=self.lr_free,
        )


def as_data(
    target: str,
    hyperparameters: Mapping[str, Any],
    space: Mapping[str, Any],
    arguments: Mapping[str, Any],
    description: str = "",
    schedule_free: bool = False,
    lr_free: bool = False,
) -> dict[str, Any]:
    """A declaration's fields as a file would hold them (what ``parse`` reads)."""
    return {
        "class": target,
        "hyperparameters": dict(hyperparameters),
        "space": dict(space),
        "arguments": {k: list(v) for k, v in arguments.items()},
        "description": description,
        "schedule_free": schedule_free,
        "lr_free": lr_free,
    }


def parse(name: str, raw: Any, source: str) -> Declaration:
    """A declaration from data; raises ``SpecError`` naming the source and field and what is allowed."""
    where = f"{source}:" if source else ""
    if not isinstance(raw, Mapping):
        raise SpecError(source or name, "must be a mapping with class, hyperparameters and space")
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise SpecError(f"{where}{unknown[0]}", f"unknown field; an optimizer declares {', '.join(FIELDS)}")
    name = raw.get("name", name)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SpecError(f"{where}name", f"must be lower case letters, digits and _ (a-z first), got {name!r}")
    if name in BUILT_IN:
        raise SpecError(f"{where}name", f"{name!r} is a built-in optimizer; give yours another name")
    target = raw.get("class")
    if not isinstance(target, str) or not _TARGET.fullmatch(target):
        raise SpecError(f"{where}class", f"must be package.module:Class, got {target!r}")
    hyperparameters = _hyperparameters(where, raw.get("hyperparameters"))
    arguments = _arguments(where, raw.get("arguments") or {}, hyperparameters)
    space = _space(where, raw.get("space") or {}, hyperparameters)
    flags = {}
    for flag in ("schedule_free", "lr_free"):
        flags[flag] = raw.get(flag, False)
        if not isinstance(flags[flag], bool):
            raise SpecError(f"{where}{flag}", f"must be true or false, got {flags[flag]!r}")
    if flags["lr_free"] and "lr" in space:
        raise SpecError(f"{where}space.lr", "an lr_free optimizer's lr is fixed, not searched")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise SpecError(f"{where}description", f"must be text, got {description!r}")
    declaration = Declaration(name, target, hyperparameters, space, arguments, description, **flags)
    return dataclasses.replace(declaration, loaded=_check_target(where, declaration))


def _hyperparameters(where: str, raw: Any) -> dict[str, Any]:
    if not isinstance(raw, Mapping) or "lr" not in raw:
        raise SpecError(f"{where}hyperparameters", "must map each hyperparameter to its default, lr included")
    for key, value in raw.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise SpecError(f"{where}hyperparameters", f"names must be identifiers, got {key!r}")
        if not isinstance(value, (bool, int, float, str)):
            raise SpecError(f"{where}hyperparameters.{key}", f"must be a number, true/false or text, got {value!r}")
    for key, value in raw.items():
        _check_value(f"{where}hyperparameters.{key}", key, value, value)
    return dict(raw)


def _check_value(field_name: str, key: str, value: Any, default: Any) -> None:
    """``value`` as ``optimizer.KEY=value`` would be checked (a known name's range, else the kind
    of the default), reported under ``field_name``."""
    try:
        check_hyperparameter(key, value, default)
    except SpecError as exc:
        raise SpecError(field_name, exc.message) from None


def _arguments(where: str, raw: Any, hyperparameters: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    if not isinstance(raw, Mapping):
        raise SpecError(f"{where}arguments", f"must map an argument to a list of hyperparameters, got {raw!r}")
    out = {}
    for argument, names in raw.items():
        if argument in hyperparameters:
            raise SpecError(f"{where}arguments.{argument}", "is a hyperparameter's name; give the argument its own")
        if not isinstance(names, list) or not names or any(n not in hyperparameters for n in names):
            raise SpecError(
                f"{where}arguments.{argument}",
                f"must list hyperparameters ({', '.join(hyperparameters)}), got {names!r}",
            )
        out[str(argument)] = tuple(names)
    return out


def _space(where: str, raw: Any, hyperparameters: Mapping[str, Any]) -> dict[str, Distribution]:
    if not isinstance(raw, Mapping):
        raise SpecError(f"{where}space", f"must map hyperparameters to distributions, got {raw!r}")
    space: dict[str, Distribution] = {}
    for key, data in raw.items():
        if key not in hyperparameters:
            raise SpecError(f"{where}space.{key}", f"not a hyperparameter; declared: {', '.join(hyperparameters)}")
        dist = from_data(f"{where}space.{key}", data)
        inner = dist.inner if isinstance(dist, Conditional) else dist
        for value in inner.values if isinstance(inner, Choice) else (inner.low, inner.high):
            _check_value(f"{where}space.{key}", key, value, hyperparameters[key])
        if isinstance(dist, Conditional) and (
            dist.on not in hyperparameters or dist.on == key or dist.on in raw and dist.on not in space
        ):
            raise SpecError(
                f"{where}space.{key}.when",
                f"must name a hyperparameter searched earlier in the space or fixed, got {dist.on!r}",
            )
        space[key] = dist
    return space


def load_target(declaration: Declaration):
    """The declared callable: the one it holds, or imported (the module must be importable there)."""
    if declaration.loaded is not None:
        return declaration.loaded
    module_name, _, attribute = declaration.target.partition(":")
    module = importlib.import_module(module_name)
    target = module
    for part in attribute.split("."):
        target = getattr(target, part)
    return target


def _check_target(where: str, declaration: Declaration):
    """The class, imported and checked to take the declared arguments: found now, not in every trial."""
    try:
        target = load_target(declaration)
    except Exception as exc:  # ImportError, AttributeError, or the module's own error
        raise SpecError(f"{where}class", f"cannot load {declaration.target} ({type(exc).__name__}: {exc})") from None
    if not callable(target):
        raise SpecError(f"{where}class", f"{declaration.target} is not a class or function")
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return target
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return target
    taken = set(declaration.keyword_arguments(declaration.hyperparameters))
    missing = sorted(taken - set(parameters))
    if missing:
        raise SpecError(
            f"{where}hyperparameters",
            f"{declaration.target} takes no argument {missing[0]!r}; it takes {', '.join(list(parameters)[1:])}"
            " (pack several into one with arguments:)",
        )
    return target


def load_file(path: Path) -> Declaration:
    """A declaration from a YAML file; its name is the file's stem unless it says ``name:``."""
    try:
        raw = yamlfile.read(path)
    except yamlfile.FileError as exc:
        raise SpecError(exc.where, exc.problem) from None
    return parse(path.stem, raw, str(path))


_REGISTERED: dict[str, Declaration] = {}


def register(declaration: Declaration) -> None:
    """Put the declaration in the registry under its name (a newer one of the same name replaces
    it); a worker registers each trial's, so registering the same one again costs nothing."""
    known = _REGISTERED.get(declaration.name)
    if known != declaration or (declaration.loaded is not None and known.loaded is not declaration.loaded):
        OPTIMIZERS[declaration.name] = declaration.spec()
        _REGISTERED[declaration.name] = declaration
