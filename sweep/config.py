"""Configuration: YAML files in ``conf/`` plus ``key=value`` overrides, validated in one place.

Every value is checked before anything is written anywhere, and a bad one raises ``ConfigError``
naming the key and what is allowed (the CLI turns it into one line and exit code 2).
Config groups work like Hydra's: ``optimizer=adam`` replaces the whole ``optimizer`` group, then
``optimizer.lr=0.01`` sets a key inside it.
"""
from __future__ import annotations

import copy
import math
import os
import re
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import yaml

from models import MODELS
from optim import OPTIMIZERS, SCHEDULES, resolve_hyperparameters, resolve_schedule_params
from sweep.datasets import DATASETS
from sweep.studies import PRUNERS, SAMPLERS

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("optimizer", "schedule")
# Keys whose command-line value is taken as text, not YAML: `name=2024` is a name, not a number,
# and `storage=sqlite:///a: b.db` is a URL, not a mapping. An empty value means unset.
TEXT_KEYS = ("name", "output_dir", "data_dir", "storage", "tracking_uri", "ray_address", "device")


class ConfigError(ValueError):
    """A bad configuration value; ``str()`` is the one line shown to the user."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


DEFAULTS: dict[str, Any] = {
    # one training trial
    "dataset": "digits",
    "data_dir": "./data",
    "download": False,
    "model": "simple_cnn",
    "optimizer": {"name": "momentum"},
    "schedule": {"name": "constant"},
    "epochs": 10,
    "batch_size": 32,
    "val_fraction": 0.2,
    "seed": 0,
    "l1": 0.0,
    "device": "auto",
    "bf16": False,
    "channels_last": False,
    "divergence_factor": 10.0,
    # a sweep
    "name": "sweep",
    "output_dir": "./sweeps",
    "optimizers": sorted(OPTIMIZERS),
    "schedules": ["constant"],
    "search_effective_lr": False,
    "trials": 6,
    "workers": 2,
    "num_cpus": 1.0,
    "num_gpus": 0.0,
    "max_retries": 2,
    "sampler": "tpe",
    "pruner": "median",
    "storage": None,
    "tracking_uri": None,
    "ray_address": None,
}


# ---- value checks: each returns the normalized value or raises ConfigError -------------------

def _choice(options) -> Callable[[str, Any], Any]:
    def check(key, value):
        names = sorted(options)
        if value not in names:
            raise ConfigError(key, f"unknown {value!r}; choose from: {', '.join(names)}")
        return value
    return check


def _int(low: int, high: int | None = None) -> Callable[[str, Any], int]:
    def check(key, value):
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            bound = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
            raise ConfigError(key, f"must be {bound}, got {value!r}")
        return value
    return check


def _float(low: float, high: float | None = None, low_inclusive: bool = True) -> Callable[[str, Any], float]:
    def check(key, value):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (value >= low if low_inclusive else value > low) and (high is None or value < high)
        if not ok:
            lower = f">= {low}" if low_inclusive else f"> {low}"
            bound = f"a number {lower}" + ("" if high is None else f" and < {high}")
            raise ConfigError(key, f"must be {bound}, got {value!r}")
        return float(value)
    return check


def _bool(key, value):
    if not isinstance(value, bool):
        raise ConfigError(key, f"must be true or false, got {value!r}")
    return value


def _text(key, value):
    if not isinstance(value, str) or not value:
        raise ConfigError(key, f"must be a non-empty string, got {value!r}")
    return value


def _name(key, value):
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", value):
        raise ConfigError(key, f"must be letters, digits, '_', '.', '-' (starting with a letter or digit), got {value!r}")
    return value


def _names(options) -> Callable[[str, Any], list[str]]:
    def check(key, value):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            raise ConfigError(key, f"must be a non-empty list from: {', '.join(sorted(options))}")
        for item in value:
            _choice(options)(key, item)
        if len(set(value)) != len(value):
            raise ConfigError(key, f"lists a name twice: {value}")
        return list(value)
    return check


def _device(key, value):
    if not isinstance(value, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise ConfigError(key, f"must be auto, cpu, cuda or cuda:N, got {value!r}")
    return value


def _optional(check):
    def optional(key, value):
        return None if value is None else check(key, value)
    return optional


def _absolute_file_url(scheme: str, value: str) -> str:
    """sqlite:///rel.db -> sqlite:////abs/rel.db: workers and `sweep resume` may run elsewhere."""
    path = value[len(scheme) + 4:]
    return f"{scheme}:///{Path(path).expanduser().resolve()}"


def _database_url(key, value, schemes) -> str | None:
    if not isinstance(value, str):
        return None
    parsed = urlparse(value)
    scheme = parsed.scheme.split("+")[0]
    if scheme in schemes and scheme in ("sqlite", "journal"):
        path = value[len(scheme) + 4:]
        if value.startswith(f"{scheme}:///") and path and path != ":memory:":
            return _absolute_file_url(scheme, value)
    elif scheme in schemes and parsed.hostname and parsed.path.strip("/"):
        return value
    return None


def _storage_url(key, value):
    url = _database_url(key, value, ("journal", "sqlite", "postgresql", "mysql"))
    if url is None:
        raise ConfigError(key, "must be journal:///PATH, sqlite:///PATH or postgresql://USER@HOST[:PORT]/DB "
                               f"(mysql://... with its driver installed), got {value!r}")
    return url


def _tracking_uri(key, value):
    if isinstance(value, str) and urlparse(value).scheme in ("http", "https"):
        parsed = urlparse(value)
        try:
            if parsed.hostname and parsed.port != 0:
                return value
        except ValueError:
            pass
    url = _database_url(key, value, ("sqlite", "postgresql", "mysql"))
    if url is None:
        raise ConfigError(key, "must be http(s)://HOST[:PORT], sqlite:///PATH or postgresql://USER@HOST/DB, "
                               f"got {value!r}")
    return url


def _ray_address(key, value):
    if isinstance(value, str) and re.fullmatch(r"auto|local|(ray://)?[A-Za-z0-9_.-]+:\d{1,5}", value):
        return value
    raise ConfigError(key, f"must be auto, local, HOST:PORT or ray://HOST:PORT, got {value!r}")


CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "dataset": _choice(DATASETS),
    "data_dir": _text,
    "download": _bool,
    "model": _choice(MODELS),
    "epochs": _int(1, 10_000),
    "batch_size": _int(1, 1_000_000),
    "val_fraction": _float(0.0, 1.0, low_inclusive=False),
    "seed": _int(0, 2**31 - 1),
    "l1": _float(0.0),
    "device": _device,
    "bf16": _bool,
    "channels_last": _bool,
    "divergence_factor": _float(1.0, low_inclusive=False),
    "name": _name,
    "output_dir": _text,
    "optimizers": _names(OPTIMIZERS),
    "schedules": _names(SCHEDULES),
    "search_effective_lr": _bool,
    "trials": _int(1, 100_000),
    "workers": _int(1, 10_000),
    "num_cpus": _float(0.0, low_inclusive=False),
    "num_gpus": _float(0.0),
    "max_retries": _int(0, 100),
    "sampler": _choice(SAMPLERS),
    "pruner": _choice(PRUNERS),
    "storage": _optional(_storage_url),
    "tracking_uri": _optional(_tracking_uri),
    "ray_address": _optional(_ray_address),
}


# ---- loading ----------------------------------------------------------------------------------

def parse_value(text: str) -> Any:
    """YAML scalars and lists (``[sgd,adam]``); ``1e-3`` is a float (YAML 1.1 would say string)."""
    if re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", text.strip()):
        return float(text)
    try:
        return yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        return text


def find_config(config: str | None, default: str) -> Path:
    name = config or default
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    candidate = CONF_DIR / f"{name}.yaml"
    if candidate.exists():
        return candidate
    choices = sorted(p.stem for p in CONF_DIR.glob("*.yaml"))
    raise ConfigError("config", f"no config {name!r}; choose from: {', '.join(choices)} or a path to a .yaml file")


def load_config(config: str | None = None, overrides: list[str] = (), default: str = "train",
                mode: str = "train") -> dict[str, Any]:
    """Defaults <- YAML file <- overrides, then validated. Raises ConfigError on any bad value."""
    path = find_config(config, default)
    try:
        from_file = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError("config", f"{path} is not valid YAML: {exc}") from None
    if not isinstance(from_file, dict):
        raise ConfigError("config", f"{path} must hold a mapping of keys to values")
    cfg = copy.deepcopy(DEFAULTS)
    for key, value in from_file.items():
        _set(cfg, key, value, source=str(path))
    parsed = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(item, "overrides are key=value (e.g. epochs=3 optimizer.lr=0.01)")
        key = key.strip()
        parsed.append((key, (value or None) if key in TEXT_KEYS else parse_value(value)))
    # group selections first, so `optimizer.lr=... optimizer=adam` still means adam with that lr
    for key, value in sorted(parsed, key=lambda kv: "." in kv[0]):
        _set(cfg, key, value, source="command line")
    return validate(cfg, mode)


def _set(cfg: dict[str, Any], key: str, value: Any, source: str) -> None:
    top, _, leaf = key.partition(".")
    if top not in DEFAULTS:
        raise ConfigError(key, f"unknown key (from {source}); valid keys: {', '.join(sorted(DEFAULTS))}")
    if top in GROUPS:
        if leaf:
            cfg[top][leaf] = value
        elif isinstance(value, dict):
            cfg[top] = dict(value)
        else:
            cfg[top] = {"name": value}
    elif leaf:
        raise ConfigError(key, f"{top} has no sub-keys")
    else:
        cfg[top] = value


def validate(cfg: dict[str, Any], mode: str = "train") -> dict[str, Any]:
    """``mode="train"``: group keys must fit the chosen optimizer/schedule. ``"sweep"``: each fixed
    key must fit at least one optimizer in ``optimizers`` (schedule keys: one in ``schedules``)."""
    out = {key: CHECKS[key](key, cfg[key]) for key in CHECKS}
    if mode == "train":
        optimizers, schedules = None, None
    else:
        optimizers, schedules = out["optimizers"], out["schedules"]
    out["optimizer"] = _validate_group("optimizer", cfg["optimizer"], OPTIMIZERS, "momentum", optimizers,
                                       lambda n, given: resolve_hyperparameters(n, given))
    out["schedule"] = _validate_group("schedule", cfg["schedule"], SCHEDULES, "constant", schedules,
                                      lambda n, given: resolve_schedule_params(n, given))
    if out["ray_address"] is None and os.environ.get("RAY_ADDRESS"):
        out["ray_address"] = _ray_address("RAY_ADDRESS", os.environ["RAY_ADDRESS"])
    return out


def _validate_group(group_name, group, registry, default, sweep_names, resolve) -> dict[str, Any]:
    if not isinstance(group, dict):
        raise ConfigError(group_name, f"must be a name or a mapping, got {group!r}")
    group = dict(group)
    name = _choice(registry)(group_name, group.pop("name", default))
    names = [name] if sweep_names is None else sweep_names
    for key, value in group.items():
        takers = [n for n in names if key in accepted_keys(group_name, n)]
        if not takers:
            valid = sorted(set().union(*(accepted_keys(group_name, n) for n in names)))
            raise ConfigError(f"{group_name}.{key}", f"not taken by {', '.join(names)}; valid: {', '.join(valid)}")
        for taker in takers:
            try:
                resolve(taker, {key: value})
            except (KeyError, ValueError) as exc:
                message = (exc.args[0] if exc.args else str(exc)).partition(": ")[2]
                raise ConfigError(f"{group_name}.{key}", message) from None
    return {"name": name, **group}


def accepted_keys(group_name: str, name: str) -> set[str]:
    """The fixed keys an optimizer or schedule takes (schedules also take the warm-up keys)."""
    from optim.schedules import WARMUP_DEFAULTS

    if group_name == "optimizer":
        return set(OPTIMIZERS[name].defaults)
    return set(WARMUP_DEFAULTS) | set(SCHEDULES[name].defaults)


def trial_config(cfg: dict[str, Any]):
    """The TrialConfig for ``sweep train``: the chosen optimizer and schedule with fixed values."""
    from sweep.trial import TrialConfig

    opt = dict(cfg["optimizer"])
    sched = dict(cfg["schedule"])
    opt_name, sched_name = opt.pop("name"), sched.pop("name")
    return TrialConfig(
        dataset=cfg["dataset"], model=cfg["model"], optimizer=opt_name,
        optimizer_params=opt,
        schedule=sched_name, schedule_params=sched,
        epochs=cfg["epochs"], batch_size=cfg["batch_size"], seed=cfg["seed"], l1=cfg["l1"],
        val_fraction=cfg["val_fraction"], data_dir=cfg["data_dir"], download=cfg["download"],
        device=cfg["device"], bf16=cfg["bf16"], channels_last=cfg["channels_last"],
        divergence_factor=cfg["divergence_factor"],
    )
