"""Ray's start-up chatter off the driver's terminal; Ray's warnings and errors stay on it.

``import ray`` gives the ``ray`` logger a handler that writes to stderr at INFO, and ``ray.init``
logs through it: "Started a local Ray instance." on every ``sweep run``, "Generated new
authentication token and saved to ~/.ray/auth_token" on a machine's first, and a WARNING that
"Token authentication is enabled for this Ray cluster" (Ray's default for a local cluster: news,
not trouble, and nothing to do). ``ray.init(logging_level=...)`` only sets the logger's level, which
cannot drop one warning among the others; a filter on the handler itself sees every record of
Ray's loggers, child loggers included, and leaves the level Ray sets alone.

Kept: every WARNING and ERROR except the ones in ``DROPPED``. Ray's own ``RAY_LOGGER_LEVEL``, when
set, lets its INFO and DEBUG lines through again (for a diagnosis). Only the driver process is
touched: workers' logs go to Ray's session files, not to the terminal (``log_to_driver=False``).
"""

from __future__ import annotations

import logging
import os

# The beginnings of Ray's warnings that are not trouble.
DROPPED = ("Token authentication is enabled for this Ray cluster",)
LEVEL_ENV = "RAY_LOGGER_LEVEL"  # Ray's setting for its driver-side logger


class RayNoise(logging.Filter):
    """Drops Ray's INFO and DEBUG records (unless ``RAY_LOGGER_LEVEL`` asks for them) and the
    warnings in ``DROPPED``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return LEVEL_ENV in os.environ
        return not record.getMessage().startswith(DROPPED)


def quiet() -> None:
    """Filter the handlers of Ray's ``ray`` logger in this process (again: no second filter).
    Call it before ``ray.init``."""
    import ray  # noqa: F401 - its import installs the handler filtered here

    for handler in logging.getLogger("ray").handlers:
        if not any(isinstance(f, RayNoise) for f in handler.filters):
            handler.addFilter(RayNoise())
