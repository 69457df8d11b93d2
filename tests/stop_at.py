"""``python -m tests.stop_at MOMENT HOW sweep-args...``: the sweep CLI, which actnals its own
process (HOW: SIGKILL or SIGTERM) or fills the disk (HOW: ``fill:FILE``, FILE written until the
disk is full) the first time it reaches MOMENT of logging a best model.

The moments sit between the writes a logged model takes, too close together for a test that
polls the stores to land in (a READY model stays untagged for milliseconds): the real MLflow and
sweep functions run unchanged, each wrapped to send the actnal right after it returns.

- ``initialized``: MLflow created the model record (PENDING, no files)
- ``files``: its files are copied, MLflow has not marked it READY
- ``ready``: MLflow marked it READY; the run is not tagged with it yet
- ``tagged``: the first optimizer's run is tagged with its model; the next is not logged yet
"""

from __future__ import annotations

import errno
import functools
import os
import signal
import sys


def fill(path: str) -> None:
    """Write ``path`` until the disk under it is full."""
    chunk = b"\0" * 4096
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        while True:
            try:
                os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return
    finally:
        os.close(fd)


def _after(owner, attr: str, act, when=lambda *args, **kwargs: True) -> None:
    """Wrap ``owner.attr`` to ``act()`` after its first call that ``when`` accepts."""
    real = getattr(owner, attr)

    @functools.wraps(real)
    def wrapped(*args, **kwargs):
        result = real(*args, **kwargs)
        if when(*args, **kwargs) and not wrapped.sent:
            wrapped.sent = True
            act()
        return result

    wrapped.sent = False
    setattr(owner, attr, wrapped)


def install(moment: str, how: str) -> None:
    import mlflow
    import mlflow.tracking.fluent
    from mlflow.tracking.client import MlflowClient

    from sweep.core.keys import Tag
    from sweep.stores import tracking

    if how.startswith("fill:"):
        act = functools.partial(fill, how[len("fill:") :])
    else:
        act = functools.partial(os.kill, os.getpid(), signal.Signals[how])
    if moment == "initialized":
        _after(mlflow, "initialize_logged_model", act)
    elif moment == "files":
        _after(MlflowClient, "log_model_artifacts", act)
    elif moment == "ready":
        _after(mlflow.tracking.fluent, "finalize_logged_model", act, lambda model_id, status: str(status) == "READY")
    elif moment == "tagged":
        _after(tracking, "tag_run", act, lambda uri, run_id, tags: Tag.MODEL_URI in tags)
    else:
        raise SystemExit(f"unknown moment {moment!r}")


if __name__ == "__main__":
    from sweep.cli import main

    install(sys.argv[1], sys.argv[2])
    sys.exit(main(sys.argv[3:]))
