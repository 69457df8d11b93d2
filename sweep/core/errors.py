"""Every error the product raises on purpose, in one hierarchy (kept free of heavy imports).

``SweepError`` is the base: the CLI maps each kind to an exit code (``ConfigError`` and
``DatasetUnavailable`` 2: bad input, nothing written; ``SweepDamaged`` 2: a sweep's file is damaged,
nothing written; ``StoreUnavailable`` 1: a store went away,
finished work kept). Each is rebuilt from its own arguments when pickled, so one raised on a Ray
worker reaches the driver as itself, not as Ray's ``UnserializableException``. ``Stopped`` is
the one kind outside it, on purpose: it is a ``KeyboardInterrupt``, so no ``except Exception``
on the way up can swallow a stop.
"""

from __future__ import annotations

import signal

from sweep.core.credentials import redact


class SweepError(Exception):
    """The base: ``str()`` is the one line shown to the user."""

    def __init__(self, message: str, *init_args):
        super().__init__(message)
        self._init_args = init_args or (message,)

    def __reduce__(self):
        """Pickled by the arguments it was built from: by default an exception is rebuilt from
        ``args`` (the one message string), which fails for a subclass taking other arguments."""
        return type(self), self._init_args


class ConfigError(SweepError, ValueError):
    """A bad configuration value or location (exit 2)."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}", key, message)
        self.key, self.message = key, message


class DatasetUnavailable(SweepError, RuntimeError):
    """The dataset's files are missing and could not be fetched; the message says where and how to fix it."""

    key = "dataset"  # the config key to change


class BadSplit(DatasetUnavailable):
    """The split leaves a part empty."""

    key = "val_fraction"


class StoreUnavailable(SweepError, RuntimeError):
    """A store (Optuna storage, MLflow tracking, the disk) failed during the sweep.

    Not a trial outcome: the trial did nothing wrong, so it must not use up its optimizer's budget.
    The sweep stops with one line and the trial runs again on resume.
    """

    def __init__(self, store: str, detail: str):
        super().__init__(f"{store} unavailable: {detail}", store, detail)
        self.store = store
        self.detail = detail


class SweepDamaged(SweepError, RuntimeError):
    """A file of an existing sweep is missing or unreadable (exit 2, nothing written): a bad copy,
    a sync tool, a disk error or an editor, found before any command uses the file. The one line
    names the file, what is wrong with it, and the way back (restore it, or ``sweep check --repair``)."""

    def __init__(self, path: str, problem: str, remedy: str):
        super().__init__(f"{path}: {problem}; {remedy}", path, problem, remedy)
        self.path, self.problem, self.remedy = path, problem, remedy


class Stopped(KeyboardInterrupt):
    """Ctrl-C or SIGTERM (batch schedulers, `docker stop`, Kubernetes): stop like Ctrl-C."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    def __reduce__(self):
        return type(self), (self.signum,)


# lines that say nothing about the error itself: SQLAlchemy puts this one before the database's
# own message ("(sqlite3.OperationalError) database or disk is full") when a flush fails
_PREAMBLES = ("(raised as a result of Query-invoked autoflush",)


def first_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message``: library errors can be pages long. Passwords are masked
    first (client errors quote URLs; a cut must not leave half of one)."""
    lines = [line for line in redact(str(exc)).strip().splitlines() if line.strip() and not line.startswith(_PREAMBLES)]
    return f"{type(exc).__name__}: {lines[0][:limit] if lines else ''}".rstrip(": ")


class store_calls:
    """Context manager: any error from a store client inside becomes ``StoreUnavailable(store)``.

    Used around every call to Optuna's storage and MLflow during a sweep, so that a store that went
    away (after its client's own retries) or a full disk stops the sweep instead of being recorded
    as the trial's failure. ``passthrough`` exceptions (e.g. pruning) go through unchanged."""

    def __init__(self, store: str, passthrough: tuple[type[BaseException], ...] = ()):
        self.store, self.passthrough = store, passthrough

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or not isinstance(exc, Exception) or isinstance(exc, (StoreUnavailable, *self.passthrough)):
            return False
        raise StoreUnavailable(self.store, first_line(exc)) from exc
