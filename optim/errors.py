"""The registries' one error type: which config key is wrong and what it allows.

The sweep's config turns it into its own ``ConfigError`` from these two fields, never by parsing
the message text. Kept free of imports, like the registries.
"""

from __future__ import annotations


class SpecError(ValueError):
    """A bad optimizer or schedule name, key or value. ``key`` is the config key
    (``optimizer``, ``optimizer.lr``, ``schedule.milestones``), ``message`` what is allowed."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message

    def __str__(self) -> str:  # a KeyError would show its message quoted
        return self.args[0]

    def __reduce__(self):
        return type(self), (self.key, self.message)


class UnknownEntry(SpecError, KeyError):
    """A name the registry does not hold (a ``KeyError`` too: it is a failed look-up)."""
