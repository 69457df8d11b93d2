"""Configuration: one typed, frozen ``SweepConfig``, loaded from ``conf/`` YAML plus ``key=value``.

Each key is declared once, as a field of ``SweepConfig``: its type, default, check (allowed range
or registry), one-line help, whether it is frozen on resume, and whether a trial needs it. Loading,
validation messages, ``FROZEN_KEYS``, ``TrialConfig``, the ``--help`` key table and the saved
``sweep.yaml`` all derive from those fields, so adding a key is one line here.

Every value is checked before anything is written anywhere; a bad one raises ``ConfigError``
naming the key and what is allowed (the CLI prints it as one line and exits 2). Config groups work
like Hydra's: ``optimizer=adam`` selects the group, ``optimizer.lr=0.01`` fixes a key inside it.
Nothing here imports torch, Ray, Optuna or MLflow: ``sweep --help`` and bad input answer at once.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from models import MODELS
from optim import (
    OPTIMIZERS,
    SCHEDULES,
    declared,
    resolve_hyperparameters,
    resolve_schedule_params,
    usable_schedules,
    yamlfile,
)
from optim.declared import BUILT_IN, Declaration
from optim.errors import SpecError
from optim.optimizers import CLASSIC
from optim.schedules import WARMUP_DEFAULTS
from sweep.core import credentials
from sweep.core.datasets import DATASETS
from sweep.core.errors import ConfigError
from sweep.core.objectives import DEFAULT as DEFAULT_OBJECTIVES
from sweep.core.objectives import OBJECTIVES, VAL_ACCURACY
from sweep.core.registries import MULTI_OBJECTIVE_SAMPLERS, NO_PRUNER, PRUNER_NAMES, SAMPLER_NAMES

__all__ = ["SweepConfig", "TrialConfig", "GroupChoice", "load_config", "FROZEN_KEYS"]

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
TRAIN, SWEEP = "train", "sweep"  # load modes: `sweep train` / `sweep run`


# ---- value checks: each returns the normalized value or raises ConfigError -------------------

Check = Callable[[str, Any], Any]


def _choice(options) -> Check:
    def check(key, value):
        names = sorted(options)
        if value not in names:
            raise ConfigError(key, f"unknown {value!r}; choose from: {', '.join(names)}")
        return value

    check.allowed = ", ".join(sorted(options))
    return check


def _int(low: int, high: int) -> Check:
    def check(key, value):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(key, f"must be an integer in [{low}, {high}], got {value!r}")
        return value

    check.allowed = f"integer in [{low}, {high}]"
    return check


def _float(low: float, high: float | None = None, low_inclusive: bool = True) -> Check:
    lower = f">= {low:g}" if low_inclusive else f"> {low:g}"
    bound = f"a number {lower}" + ("" if high is None else f" and < {high:g}")

    def check(key, value):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (value >= low if low_inclusive else value > low) and (high is None or value < high)
        if not ok:
            raise ConfigError(key, f"must be {bound}, got {value!r}")
        return float(value)

    check.allowed = bound.removeprefix("a ")
    return check


def _bool(key, value):
    if not isinstance(value, bool):
        raise ConfigError(key, f"must be true or false, got {value!r}")
    return value


_bool.allowed = "true | false"

AUTO = "auto"


def _auto_bool(key, value):
    """``auto`` (on where it pays: a CUDA device; see ``trial.resolve_auto``), ``true`` or ``false``."""
    if value != AUTO and not isinstance(value, bool):
        raise ConfigError(key, f"must be auto, true or false, got {value!r}")
    return value


_auto_bool.allowed = "auto | true | false"


PACK_LIMIT = 1024
EXACT, FUSED = "exact", "fused"
PACK_UPDATES = (EXACT, FUSED)


def _pack(key, value):
    """``auto`` or how many trials of one optimizer train together (``sweep.train.packed``)."""
    if value == AUTO:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= PACK_LIMIT:
        raise ConfigError(key, f"must be auto or an integer in [1, {PACK_LIMIT}], got {value!r}")
    return value


_pack.allowed = f"auto | integer in [1, {PACK_LIMIT}]"


def _text(key, value):
    if not isinstance(value, str) or not value:
        raise ConfigError(key, f"must be a non-empty string, got {value!r}")
    return value


_text.allowed = "text"


def _name(key, value):
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", value):
        raise ConfigError(
            key, f"must be letters, digits, '_', '.', '-' (starting with a letter or digit), got {value!r}"
        )
    return value


_name.allowed = "letters, digits, _ . -"


def _names(options) -> Check:
    def check(key, value):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not value:
            raise ConfigError(key, f"must be a non-empty list from: {', '.join(sorted(options))}")
        for item in value:
            _choice(options)(key, item)
        if len(set(value)) != len(value):
            raise ConfigError(key, f"lists a name twice: {list(value)}")
        return tuple(value)

    check.allowed = f"list of: {', '.join(sorted(options))}"
    return check


def _custom_optimizers(key, value):
    """Declarations (``optim.declared``) by name, each checked and put in the registry."""
    if value is None:
        return ()
    if isinstance(value, tuple) and all(isinstance(d, Declaration) for d in value):
        declarations = value
    elif isinstance(value, dict):
        try:
            declarations = tuple(declared.parse(name, raw, f"{key}.{name}") for name, raw in value.items())
        except SpecError as exc:
            raise ConfigError(exc.key, exc.message) from None
    else:
        raise ConfigError(key, f"must map each optimizer's name to its declaration, got {value!r}")
    for declaration in declarations:
        declared.register(declaration)
    return declarations


_custom_optimizers.allowed = "NAME: {class, hyperparameters, space, ...}"


def _train_subset(key, value):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(
            key, f"must be an integer >= 1 (the most training images to use), or null for all, got {value!r}"
        )
    return value


_train_subset.allowed = "integer >= 1, or null (all)"

BATCH_SIZE_RANGE = (1, 65536)


def _batch_sizes(key, value):
    """Searched batch sizes; unset (null or []) means not searched."""
    if value is None or (isinstance(value, (list, tuple)) and not value):
        return None
    low, high = BATCH_SIZE_RANGE
    if not isinstance(value, (list, tuple)):
        raise ConfigError(
            key,
            f"must be a list of distinct integers in [{low}, {high}] (e.g. [32,64,128]), "
            f"or [] to use batch_size, got {value!r}",
        )
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or not low <= item <= high:
            raise ConfigError(key, f"must hold integers in [{low}, {high}], got {item!r} in {list(value)}")
    if len(set(value)) != len(value):
        raise ConfigError(key, f"lists a batch size twice: {list(value)}")
    return tuple(value)


_batch_sizes.allowed = f"list of distinct integers in [{BATCH_SIZE_RANGE[0]}, {BATCH_SIZE_RANGE[1]}]"


def _device(key, value):
    if not isinstance(value, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise ConfigError(key, f"must be auto, cpu, cuda or cuda:N, got {value!r}")
    return value


_device.allowed = "auto | cpu | cuda | cuda:N"


def _target_accuracy(key, value):
    """A validation accuracy to measure time to (``core.target``), or None for none."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ConfigError(key, f"must be a validation accuracy in (0, 1], or null for none, got {value!r}")
    return float(value)


_target_accuracy.allowed = "number in (0, 1], or null (none)"


def _optional(check: Check) -> Check:
    def optional(key, value):
        return None if value is None else check(key, value)

    optional.allowed = f"{check.allowed} (unset: the default)"
    return optional


def _database_url(value, schemes) -> str | None:
    """The normalized URL, or None if it is not one of ``schemes`` with a usable location.
    File URLs become absolute: workers and `sweep resume` may run from elsewhere."""
    if not isinstance(value, str):
        return None
    parsed = urlparse(value)
    scheme = parsed.scheme.split("+")[0]
    if scheme in schemes and scheme in ("sqlite", "journal"):
        path = value[len(scheme) + 4 :]
        if value.startswith(f"{scheme}:///") and path and path != ":memory:":
            return f"{scheme}:///{Path(path).expanduser().resolve()}"
    elif scheme in schemes and parsed.hostname and parsed.path.strip("/"):
        return value
    return None


def _check_userinfo(key, value) -> None:
    """A password with ``/``, ``?`` or ``#`` must be percent-encoded: unencoded, URL parsers (ours,
    and the masking of secrets) end the host part early and would see no password at all, while
    SQLAlchemy still connects with it, so it would be saved and shown in clear. The value is not
    printed: it holds the password."""
    if not isinstance(value, str) or "://" not in value:
        return
    rest = value.split("://", 1)[1]
    if "@" in rest and "@" not in urlparse(value).netloc:
        raise ConfigError(
            key,
            "its password (or user) holds a character a URL needs percent-encoded "
            "(/ as %2F, ? as %3F, # as %23, @ as %40); or leave the password out and set "
            "PGPASSWORD / MLFLOW_TRACKING_PASSWORD",
        )


def _storage_url(key, value):
    _check_userinfo(key, value)
    url = _database_url(value, ("journal", "sqlite", "postgresql", "mysql"))
    if url is None:
        raise ConfigError(
            key,
            "must be journal:///PATH, sqlite:///PATH or postgresql://USER@HOST[:PORT]/DB "
            f"(mysql://... with its driver installed), got {value!r}",
        )
    return url


_storage_url.allowed = "journal:///PATH | sqlite:///PATH | postgresql://USER@HOST/DB"


def _tracking_uri(key, value):
    _check_userinfo(key, value)
    if isinstance(value, str) and urlparse(value).scheme in ("http", "https"):
        parsed = urlparse(value)
        try:
            if parsed.hostname and parsed.port != 0:
                return value
        except ValueError:
            pass
    url = _database_url(value, ("sqlite", "postgresql", "mysql"))
    if url is None:
        raise ConfigError(
            key, f"must be http(s)://HOST[:PORT], sqlite:///PATH or postgresql://USER@HOST/DB, got {value!r}"
        )
    return url


_tracking_uri.allowed = "http(s)://HOST:PORT | sqlite:///PATH | postgresql://USER@HOST/DB"


def _ray_address(key, value):
    if isinstance(value, str) and re.fullmatch(r"auto|local|(ray://)?[A-Za-z0-9_.-]+:\d{1,5}", value):
        return value
    raise ConfigError(key, f"must be auto, local, HOST:PORT or ray://HOST:PORT, got {value!r}")


_ray_address.allowed = "auto | local | HOST:PORT | ray://HOST:PORT"


def _objectives(key, value):
    """What each study optimizes (``core.objectives``), validation accuracy first: the ranking,
    the re-evaluation and the pruner stay on it."""
    names = _names(OBJECTIVES)(key, value)
    if names[0] != VAL_ACCURACY.name:
        others = ",".join(n for n in names if n != VAL_ACCURACY.name)
        raise ConfigError(
            key,
            f"must start with {VAL_ACCURACY.name} (the ranking, re-evaluation and pruning use it), "
            f"got [{','.join(names)}]; e.g. {key}=[{VAL_ACCURACY.name},{others}]",
        )
    return names


_objectives.allowed = f"list of: {', '.join(OBJECTIVES)}, starting with {VAL_ACCURACY.name}"


# ---- the config ------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupChoice:
    """A config group (``optimizer``, ``schedule``): the chosen entry and the values fixed for it.

    ``name`` is None in a sweep, where the entries come from ``optimizers``/``schedules`` and the
    fixed values apply to every entry that takes them."""

    name: str | None
    fixed: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**({"name": self.name} if self.name else {}), **self.fixed}


def key(
    default,
    check: Check,
    help: str,
    *,
    frozen: bool = False,
    trial: bool = False,
    text: bool = False,
    store_url: bool = False,
):
    """Declare a key. ``frozen``: may not change on resume (it defines what the sweep measures).
    ``trial``: part of every trial's ``TrialConfig``. ``text``: a command-line value is taken as
    text, not YAML (``name=2024`` is a name; ``storage=sqlite:///a: b.db`` is a URL).
    ``store_url``: a URL that may hold a password, which is never saved or shown (``credentials``)."""
    meta = {"check": check, "help": help, "frozen": frozen, "trial": trial, "text": text, "store_url": store_url}
    if isinstance(default, (GroupChoice, tuple)):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class SweepConfig:
    # one training trial
    dataset: str = key("digits", _choice(DATASETS), "dataset (see Datasets)", frozen=True, trial=True)
    data_dir: str = key("./data", _text, "where dataset files are looked for", trial=True, text=True)
    download: bool = key(False, _bool, "download missing dataset files (needs a network)", trial=True)
    model: str = key("simple_cnn", _choice(MODELS), "CNN from the model registry", frozen=True, trial=True)
    optimizer: GroupChoice = key(
        GroupChoice(None), None, "optimizer=NAME (train) selects; optimizer.KEY=V fixes a value", frozen=True
    )
    schedule: GroupChoice = key(
        GroupChoice(None), None, "schedule=NAME (train) selects; schedule.KEY=V fixes a value", frozen=True
    )
    epochs: int = key(10, _int(1, 10_000), "epochs per trial", frozen=True, trial=True)
    batch_size: int = key(32, _int(1, 1_000_000), "mini-batch size", frozen=True, trial=True)
    val_fraction: float = key(
        0.2,
        _float(0.0, 1.0, low_inclusive=False),
        "share of training data held out for validation",
        frozen=True,
        trial=True,
    )
    train_subset: int | None = key(
        None,
        _train_subset,
        "train on the first N shuffled training images only (validation and test sets unchanged; unset: all)",
        frozen=True,
        trial=True,
    )
    seed: int = key(
        0, _int(0, 2**31 - 1), "training seed (split, init, batch order) and sampler seed", frozen=True, trial=True
    )
    l1: float = key(0.0, _float(0.0), "L1 penalty added to the loss", frozen=True, trial=True)
    device: str = key("auto", _device, "training device (cuda in a sweep needs num_gpus > 0)", trial=True, text=True)
    bf16: bool | str = key(AUTO, _auto_bool, "bf16 autocast (auto: on a CUDA device)", frozen=True, trial=True)
    channels_last: bool | str = key(
        AUTO, _auto_bool, "channels_last memory format (auto: on a CUDA device)", trial=True
    )
    pack_update: str = key(
        "exact",
        _choice(PACK_UPDATES),
        "how a pack's optimizer steps its members: exact (each "
        "member's own optimizer: bit-identical to solo on CPU) or fused (one pass for all members)",
        trial=True,
    )
    pack_memory_mb: float | None = key(
        None,
        _optional(_float(0.0, low_inclusive=False)),
        "memory a pack may use on its device, in MB (unset: the free memory); a bigger pack runs as sub-packs",
        trial=True,
    )
    compile: bool = key(False, _bool, "torch.compile the model (its time is reported as compile_seconds)", trial=True)
    divergence_check_steps: int = key(
        0,
        _int(0, 100_000),
        "check the loss for divergence every N batches, one "
        "host sync each (0: every batch on a CPU, every 32 on a GPU)",
        trial=True,
    )
    divergence_factor: float = key(
        10.0,
        _float(1.0, low_inclusive=False),
        "a batch loss this many times the first one is divergence",
        frozen=True,
        trial=True,
    )
    checkpoint_every: int = key(1, _int(0, 10_000), "save a resumable checkpoint every N epochs (0: never)", trial=True)
    tracking_retry_s: float = key(
        300.0, _float(0.0), "how long a trial keeps retrying MLflow before it fails", trial=True
    )
    eval_every_steps: int = key(
        0,
        _int(0, 10_000_000),
        "also evaluate on the validation set every N optimizer steps (0: once per epoch); "
        "its time is counted in eval_seconds, not training time",
        frozen=True,
        trial=True,
    )
    target_accuracy: float | None = key(
        None,
        _target_accuracy,
        "validation accuracy a trial's time_to_target_s is measured to (unset: none)",
        frozen=True,
        trial=True,
    )
    # a sweep
    name: str = key("sweep", _name, "sweep name: <output_dir>/<name>/, the MLflow experiment", text=True)
    output_dir: str = key("./sweeps", _text, "folder that holds sweeps", text=True)
    custom_optimizers: tuple[Declaration, ...] = key(
        (),
        _custom_optimizers,
        "your own optimizers: NAME: {class: pkg.module:Class, hyperparameters, space}; "
        "a file named in optimizers= lands here too (see Your own optimizer)",
    )
    optimizers: tuple[str, ...] = key(
        CLASSIC,
        _names(OPTIMIZERS),
        "one Optuna study per optimizer (a name, conf/optimizer/NAME.yaml, or a path to a .yaml)",
    )
    schedules: tuple[str, ...] = key(("constant",), _names(SCHEDULES), "LR schedules searched between", frozen=True)
    batch_sizes: tuple[int, ...] | None = key(
        None,
        _batch_sizes,
        "batch sizes each trial picks from (unset: batch_size, not searched); refused by `sweep train`",
        frozen=True,
    )
    search_effective_lr: bool = key(False, _bool, "search lr/(1-momentum) instead of lr", frozen=True)
    search: bool = key(
        True,
        _bool,
        "search each optimizer's space (false: every trial trains at the optimizer's defaults, "
        "the self-tuning ruleset of a benchmark)",
        frozen=True,
    )
    trials: int = key(6, _int(1, 100_000), "finished trials per optimizer")
    workers: int = key(2, _int(1, 10_000), "trials (or packs of trials) in flight at once")
    pack: int | str = key(
        1,
        _pack,
        "trials of one optimizer trained together as one fused model on one device, "
        "one Ray task (auto: as many as fit in its memory, up to 16)",
    )
    num_cpus: float = key(1.0, _float(0.0, low_inclusive=False), "Ray CPUs per trial")
    num_gpus: float = key(0.0, _float(0.0), "Ray GPUs per trial (fractions share a GPU)")
    max_retries: int = key(2, _int(0, 100), "Ray retries of a trial whose worker process died")
    reeval_seeds: int = key(
        3,
        _int(0, 1000),
        "after the search, train each optimizer's best configuration again "
        "with this many further seeds, scored on the test set (0: no re-evaluation)",
    )
    reeval_top: int = key(
        1,
        _int(1, 100),
        "re-evaluate this many of each optimizer's best configurations; the one "
        "with the best mean validation accuracy over the seeds is reported",
    )
    report_figures: bool = key(
        True,
        _bool,
        "draw the report's figures when `sweep run` ends (false: the table "
        "only, seconds sooner; `sweep report NAME` draws them)",
    )
    keep_checkpoints: bool = key(
        False, _bool, "keep every finished trial's last checkpoint (the best's is always kept)"
    )
    sampler: str = key("tpe", _choice(SAMPLER_NAMES), "Optuna sampler", frozen=True)
    pruner: str = key("median", _choice(PRUNER_NAMES), "Optuna pruner (one epoch = one step)", frozen=True)
    objectives: tuple[str, ...] = key(
        DEFAULT_OBJECTIVES,
        _objectives,
        "what each study optimizes: [val_accuracy], or [val_accuracy,train_seconds] for a "
        "multi-objective search (needs pruner=none; the report shows each Pareto set)",
        frozen=True,
    )
    storage: str | None = key(
        None, _optional(_storage_url), "Optuna storage URL", frozen=True, text=True, store_url=True
    )
    tracking_uri: str | None = key(
        None, _optional(_tracking_uri), "MLflow tracking URI", frozen=True, text=True, store_url=True
    )
    ray_address: str | None = key(None, _optional(_ray_address), "Ray cluster to use (or RAY_ADDRESS)", text=True)

    def to_dict(self, urls: Callable[[str | None], str | None] = credentials.public) -> dict[str, Any]:
        """Plain YAML-able values, as saved in ``sweep.yaml`` and compared on resume. Store URLs go
        through ``urls``: by default without their password (``--print-config`` shows it masked);
        the attributes themselves keep it, in memory only."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = (
                value.to_dict()
                if isinstance(value, GroupChoice)
                else {d.name: d.to_dict() for d in value}
                if f.name == "custom_optimizers"
                else list(value)
                if isinstance(value, tuple)
                else urls(value)
                if f.metadata["store_url"]
                else value
            )
        return out

    def __repr__(self) -> str:  # a config in a log or a traceback shows no password
        return f"SweepConfig({', '.join(f'{k}={v!r}' for k, v in self.to_dict(credentials.redacted).items())})"

    def replace(self, **changes) -> SweepConfig:
        return dataclasses.replace(self, **changes)

    def trial_config(
        self,
        optimizer: str | None = None,
        optimizer_params: Mapping[str, Any] | None = None,
        schedule: str | None = None,
        schedule_params: Mapping[str, Any] | None = None,
    ) -> TrialConfig:
        """The trial's settings: the trial keys, and an optimizer and schedule with their values
        (by default the chosen ones with their fixed values, as ``sweep train`` runs them)."""
        return TrialConfig(
            **{f.name: getattr(self, f.name) for f in TRIAL_FIELDS},
            optimizer=(chosen := optimizer or self.optimizer.name or GROUPS["optimizer"][0]),
            custom_optimizer=next((d for d in self.custom_optimizers if d.name == chosen), None),
            optimizer_params=dict(self.optimizer.fixed if optimizer_params is None else optimizer_params),
            schedule=schedule or self.schedule.name or GROUPS["schedule"][0],
            schedule_params=dict(self.schedule.fixed if schedule_params is None else schedule_params),
        )


KEYS: dict[str, dataclasses.Field] = {f.name: f for f in fields(SweepConfig)}
FROZEN_KEYS = tuple(name for name, f in KEYS.items() if f.metadata["frozen"])
STORE_URL_KEYS = tuple(name for name, f in KEYS.items() if f.metadata["store_url"])
TEXT_KEYS = tuple(name for name, f in KEYS.items() if f.metadata["text"])
GROUPS = {"optimizer": ("momentum", OPTIMIZERS, "optimizers"), "schedule": ("constant", SCHEDULES, "schedules")}
TRIAL_FIELDS = tuple(f for f in fields(SweepConfig) if f.metadata["trial"])


@dataclass(frozen=True)
class TrialConfig:
    """One trial's settings: ``SweepConfig``'s trial keys (same names, types and defaults; a test
    checks they agree), plus the optimizer and schedule it trains with. Shipped to Ray workers."""

    dataset: str = "digits"
    data_dir: str = "./data"
    download: bool = False
    model: str = "simple_cnn"
    epochs: int = 10
    batch_size: int = 32
    val_fraction: float = 0.2
    train_subset: int | None = None
    seed: int = 0
    l1: float = 0.0
    device: str = "auto"
    bf16: bool | str = AUTO
    channels_last: bool | str = AUTO
    pack_update: str = EXACT
    pack_memory_mb: float | None = None
    compile: bool = False
    divergence_check_steps: int = 0
    divergence_factor: float = 10.0
    checkpoint_every: int = 1
    tracking_retry_s: float = 300.0
    eval_every_steps: int = 0
    target_accuracy: float | None = None
    optimizer: str = GROUPS["optimizer"][0]
    optimizer_params: dict[str, Any] = field(default_factory=dict)
    custom_optimizer: Declaration | None = None  # the declaration of a user's optimizer, for its worker
    schedule: str = GROUPS["schedule"][0]
    schedule_params: dict[str, Any] = field(default_factory=dict)


def default_text(name: str) -> str:
    """The default as shown in help."""
    value = SweepConfig().to_dict()[name] if name not in GROUPS else None
    if name in GROUPS:
        return GROUPS[name][0] + " (train)"
    if isinstance(value, list):
        return f"[{','.join(map(str, value))}]"
    return "-" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def key_table() -> str:
    """``key  default  help`` for every key, for ``--help``."""
    rows = [(name, default_text(name), f.metadata["help"]) for name, f in KEYS.items()]
    width = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    return "\n".join(f"  {n:<{width[0]}}  {d:<{width[1]}}  {h}" for n, d, h in rows)


# ---- loading ----------------------------------------------------------------------------------


def parse_value(text: str) -> Any:
    """YAML scalars and lists (``[sgd,adam]``), read as the config files are (``1e-3`` a float)."""
    try:
        return yamlfile.loads(text) if text.strip() else None
    except yaml.YAMLError:
        return text


def config_names() -> list[str]:
    return sorted(p.stem for p in CONF_DIR.glob("*.yaml"))


def find_config(config: str | None, default: str) -> Path:
    name = config or default
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    candidate = CONF_DIR / f"{name}.yaml"
    if candidate.exists():
        return candidate
    raise ConfigError(
        "config", f"no config {name!r}; choose from: {', '.join(config_names())} or a path to a .yaml file"
    )


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping, read as every config file is (``optim.yamlfile``: ``1e-3`` a number, a key
    given twice refused); what is wrong with the file is one line with its place in it."""
    try:
        loaded = yamlfile.read(path) or {}
    except yamlfile.FileError as exc:
        raise ConfigError("config", str(exc)) from None
    if not isinstance(loaded, dict):
        raise ConfigError("config", f"{path} must hold a mapping of keys to values")
    return loaded


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    parsed = []
    for item in overrides:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(item, "overrides are key=value (e.g. epochs=3 optimizer.lr=0.01)")
        parsed.append((name, (value or None) if name in TEXT_KEYS else parse_value(value)))
    # group selections first, so `optimizer.lr=... optimizer=adam` still means adam with that lr
    return sorted(parsed, key=lambda kv: "." in kv[0])


def load_config(
    config: str | None = None,
    overrides: list[str] = (),
    default: str = "train",
    mode: str = TRAIN,
    values: Mapping[str, Any] | None = None,
) -> SweepConfig:
    """Defaults <- YAML file <- overrides <- ``values`` (Python values by key, from ``sweep.api``),
    then validated. Raises ConfigError on any bad value."""
    path = find_config(config, default)
    return validate(raw_values(read_yaml(path), str(path), overrides, values), mode)


def raw_values(
    from_file: Mapping[str, Any], source: str, overrides: list[str] = (), values: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A file's values <- overrides <- Python values, each key checked to exist, none validated
    yet (a benchmark validates one copy per workload: ``sweep.core.benchmark``)."""
    raw: dict[str, Any] = {name: None for name in GROUPS}
    for name, value in from_file.items():
        _set(raw, name, value, source=source)
    for name, value in parse_overrides(list(overrides)):
        _set(raw, name, value, source="command line")
    for name, value in (values or {}).items():
        _set(raw, name, value, source="Python")
    return raw


def _set(raw: dict[str, Any], name: str, value: Any, source: str) -> None:
    top, _, leaf = name.partition(".")
    if top not in KEYS:
        raise ConfigError(name, f"unknown key (from {source}); valid keys: {', '.join(KEYS)}")
    if top in GROUPS:
        group = dict(raw[top] or {})
        if leaf:
            group[leaf] = value
        elif isinstance(value, dict):
            group = dict(value)
        else:
            group = {**{k: v for k, v in group.items() if k != "name"}, "name": value}
        raw[top] = group
    elif leaf:
        raise ConfigError(name, f"{top} has no sub-keys")
    else:
        raw[top] = value


def validate(raw: Mapping[str, Any], mode: str = TRAIN) -> SweepConfig:
    """Check each key, then the keys against each other. ``mode=train``: a group's fixed values
    must fit its chosen entry; ``sweep``: each must fit at least one of ``optimizers``/``schedules``,
    and choosing one entry (``optimizer=adam``) is refused: the sweep searches the list."""
    raw = _declared_references(raw, mode)
    defaults = SweepConfig()
    values: dict[str, Any] = {}
    for name, f in KEYS.items():
        if name in GROUPS:
            continue
        value = raw.get(name, getattr(defaults, name))
        values[name] = f.metadata["check"](name, value)
    if values["ray_address"] is None and os.environ.get("RAY_ADDRESS"):
        values["ray_address"] = _ray_address("RAY_ADDRESS", os.environ["RAY_ADDRESS"])
    for group_name in GROUPS:
        values[group_name] = _validate_group(group_name, raw.get(group_name), mode, values)
    cfg = SweepConfig(**values)
    _check_together(cfg, mode)
    return cfg


def _declared_references(raw: Mapping[str, Any], mode: str) -> dict[str, Any]:
    """Optimizers named by file (``optimizers=[sgd,my_lion]`` with conf/optimizer/my_lion.yaml, or
    ``./my_lion.yaml``): each file's declaration joins ``custom_optimizers`` and its name replaces
    the reference, so the saved config holds the declaration itself."""
    raw = dict(raw)
    given = raw.get("custom_optimizers") or {}
    customs = dict(given) if isinstance(given, dict) else None  # anything else is refused by its check
    group = raw.get("optimizer") if isinstance(raw.get("optimizer"), dict) else None

    def resolve(key: str, reference: Any) -> Any:
        if not isinstance(reference, str) or reference in BUILT_IN or (customs and reference in customs):
            return reference
        path = _optimizer_file(key, reference)
        try:
            declaration = declared.load_file(path)
        except SpecError as exc:
            raise ConfigError(exc.key, exc.message) from None
        if customs is None:
            raise ConfigError("custom_optimizers", "must be a mapping when optimizers name files")
        customs[declaration.name] = declaration.to_dict()
        return declaration.name

    names = raw.get("optimizers")
    if isinstance(names, str):
        names = [names]
    if isinstance(names, list | tuple) and mode == SWEEP:
        raw["optimizers"] = [resolve("optimizers", n) for n in names]
    if group is not None and group.get("name") is not None and mode == TRAIN:
        raw["optimizer"] = {**group, "name": resolve("optimizer", group["name"])}
    if customs:
        raw["custom_optimizers"] = customs
    return raw


def _optimizer_file(key: str, reference: str) -> Path:
    path = Path(reference)
    if path.suffix in (".yaml", ".yml"):
        if path.is_file():
            return path
        raise ConfigError(key, f"no optimizer file {reference} (a path to a .yaml declaring one)")
    candidate = CONF_DIR / "optimizer" / f"{reference}.yaml"
    if candidate.is_file():
        return candidate
    files = sorted(p.stem for p in (CONF_DIR / "optimizer").glob("*.yaml"))
    raise ConfigError(
        key,
        f"unknown {reference!r}; choose from: {', '.join(sorted(OPTIMIZERS))}"
        + (f", the files in conf/optimizer/ ({', '.join(files)})" if files else "")
        + ", or a path to a .yaml declaring one",
    )


def _validate_group(group_name: str, given: Any, mode: str, values: Mapping[str, Any]) -> GroupChoice:
    default, registry, list_key = GROUPS[group_name]
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise ConfigError(group_name, f"must be a name or a mapping, got {given!r}")
    given = dict(given)
    chosen = given.pop("name", None)
    if mode == SWEEP:
        if chosen is not None:
            raise ConfigError(
                group_name,
                f"`sweep run` searches every entry of {list_key}= (now "
                f"[{','.join(values[list_key])}]); use {list_key}=[{chosen}] to sweep "
                f"{chosen} alone, and {group_name}.KEY=VALUE to fix a value",
            )
        names = list(values[list_key])
    else:
        chosen = _choice(registry)(group_name, chosen or default)
        names = [chosen]
    for fixed_key, value in given.items():
        takers = [n for n in names if fixed_key in accepted_keys(group_name, n)]
        if not takers:
            valid = sorted(set().union(*(accepted_keys(group_name, n) for n in names)))
            raise ConfigError(
                f"{group_name}.{fixed_key}", f"not taken by {', '.join(names)}; valid: {', '.join(valid)}"
            )
        resolve = resolve_hyperparameters if group_name == "optimizer" else resolve_schedule_params
        for taker in takers:
            try:
                resolve(taker, {fixed_key: value})
            except SpecError as exc:
                raise ConfigError(exc.key, exc.message) from None
    return GroupChoice(chosen if mode != SWEEP else None, given)


def _check_together(cfg: SweepConfig, mode: str) -> None:
    warmup = cfg.schedule.fixed.get("warmup_epochs", WARMUP_DEFAULTS["warmup_epochs"])
    if warmup >= cfg.epochs:
        raise ConfigError(
            "schedule.warmup_epochs",
            f"must be less than epochs ({cfg.epochs}), got {warmup}: the warm-up would be the whole run",
        )
    if mode == TRAIN and cfg.batch_sizes:
        raise ConfigError(
            "batch_sizes",
            f"`sweep train` runs one batch size: set batch_size=N (batch_sizes="
            f"[{','.join(map(str, cfg.batch_sizes))}] is searched by `sweep run`), "
            "or batch_sizes=[]",
        )
    if cfg.pack != 1 and cfg.compile:
        raise ConfigError("pack", "packed trials do not run under torch.compile: set compile=false, or pack=1")
    if cfg.pack != 1 and cfg.batch_sizes:
        raise ConfigError(
            "pack",
            "a pack's trials share every batch, so they cannot search the batch size: "
            "set batch_sizes=[] (batch_size=N), or pack=1",
        )
    _check_optimizer_needs(cfg, mode)
    _check_objectives(cfg)
    if mode == SWEEP and cfg.device.startswith("cuda") and cfg.num_gpus == 0:
        raise ConfigError(
            "device",
            f"device={cfg.device} in a sweep needs num_gpus > 0 (Ray gives a trial "
            "only the GPUs it asks for); set num_gpus=1 (or a fraction), or device=auto",
        )


def _check_optimizer_needs(cfg: SweepConfig, mode: str) -> None:
    """What some optimizers cannot do: Schedule-Free takes no LR schedule but a warm-up (its
    averaging is the schedule), and ``pack_update=fused`` implements the classic optimizers only."""
    names = list(cfg.optimizers) if mode == SWEEP else [cfg.optimizer.name or GROUPS["optimizer"][0]]
    schedules = list(cfg.schedules) if mode == SWEEP else [cfg.schedule.name or GROUPS["schedule"][0]]
    refused = [n for n in names if not usable_schedules(n, schedules)]
    if refused:
        key = "schedules" if mode == SWEEP else "schedule"
        they = "it takes" if len(refused) == 1 else "they take"
        raise ConfigError(
            key,
            f"{', '.join(refused)} {'is' if len(refused) == 1 else 'are'} schedule-free: {they} no LR schedule "
            f"but constant (a warm-up is schedule.warmup_epochs=N), got {', '.join(schedules)}; "
            + (
                "add constant to schedules (the others' studies still search the rest)"
                if mode == SWEEP
                else "set schedule=constant"
            ),
        )
    unfused = [n for n in names if not OPTIMIZERS[n].fused]
    if mode == SWEEP and cfg.pack != 1 and cfg.pack_update == FUSED and unfused:
        fused = ", ".join(n for n in OPTIMIZERS if OPTIMIZERS[n].fused)
        raise ConfigError(
            "pack_update",
            f"fused has no update for {', '.join(unfused)} (it has one for {fused}): "
            "set pack_update=exact (each member its own optimizer), or pack=1",
        )


def _check_objectives(cfg: SweepConfig) -> None:
    """A multi-objective study takes no pruner (Optuna prunes on one value per step) and not
    every sampler (CMA-ES refuses one)."""
    if len(cfg.objectives) < 2:
        return
    given = f"objectives=[{','.join(cfg.objectives)}]"
    if cfg.pruner != NO_PRUNER:
        raise ConfigError("pruner", f"Optuna cannot prune multi-objective trials ({given}): set pruner={NO_PRUNER}")
    if cfg.sampler not in MULTI_OBJECTIVE_SAMPLERS:
        raise ConfigError(
            "sampler",
            f"{cfg.sampler} cannot search a multi-objective study ({given}): "
            f"set sampler to one of {', '.join(MULTI_OBJECTIVE_SAMPLERS)}",
        )


def accepted_keys(group_name: str, name: str) -> set[str]:
    """The fixed keys an optimizer or schedule takes (schedules also take the warm-up keys)."""
    if group_name == "optimizer":
        return set(OPTIMIZERS[name].defaults)
    return set(WARMUP_DEFAULTS) | set(SCHEDULES[name].defaults)


def saved_values(saved: Mapping[str, Any]) -> dict[str, Any]:
    """A saved ``sweep.yaml`` as today's keys: sweeps saved before the typed config kept the
    train-mode group name (``optimizer: {name: momentum}``), which a sweep never used, and store
    URLs with their password, which today's leave out (it comes from the environment or the
    command line)."""
    return {
        name: (
            {k: v for k, v in value.items() if k != "name"}
            if name in GROUPS and isinstance(value, dict)
            else credentials.public(value)
            if name in STORE_URL_KEYS and isinstance(value, str)
            else value
        )
        for name, value in saved.items()
    }


def from_saved(saved: Mapping[str, Any], overrides: list[str]) -> SweepConfig:
    """A saved ``sweep.yaml`` with overrides on top (``sweep resume``)."""
    raw: dict[str, Any] = {name: None for name in GROUPS}
    for name, value in saved_values(saved).items():
        if name in KEYS:
            _set(raw, name, value, source="sweep.yaml")
    for name, value in parse_overrides(list(overrides)):
        _set(raw, name, value, source="command line")
    return validate(raw, SWEEP)
