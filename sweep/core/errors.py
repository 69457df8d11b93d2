"""The errors the engine raises and the CLI turns into exit codes (kept free of heavy imports)."""
from __future__ import annotations

from sweep.core.credentials import redact


class ConfigError(ValueError):
    """A bad configuration value or location; ``str()`` is the one line shown to the user (exit 2)."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message

    def __reduce__(self):  # pickled by its own arguments, not by ``args`` (one string)
        return type(self), (self.key, self.message)


class StoreUnavailable(RuntimeError):
    """A store (Optuna storage, MLflow tracking, the disk) failed during the sweep.

    Not a trial outcome: the trial did nothing wrong, so it must not use up its optimizer's budget.
    The sweep stops with one line and the trial runs again on resume.
    """

    def __init__(self, store: str, detail: str):
        super().__init__(f"{store} unavailable: {detail}")
        self.store = store
        self.detail = detail

    def __reduce__(self):
        """Raised on a Ray worker, it must unpickle on the driver: by default an exception is
        rebuilt from ``args`` (one string here), which fails, and Ray hands the driver an
        ``UnserializableException`` that reads as the trial's own failure."""
        return type(self), (self.store, self.detail)


# lines that say nothing about the error itself: SQLAlchemy puts this one before the database's
# own message ("(sqlite3.OperationalError) database or disk is full") when a flush fails
_PREAMBLES = ("(raised as a result of Query-invoked autoflush",)


def first_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message``: library errors can be pages long. Passwords are masked
    first (client errors quote URLs; a cut must not leave half of one)."""
    lines = [line for line in redact(str(exc)).strip().splitlines()
             if line.strip() and not line.startswith(_PREAMBLES)]
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
