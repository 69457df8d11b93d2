"""``python -m tests.stop_at MOMENT SIGNAL sweep-args...``: the sweep CLI, which signals its own
process (SIGKILL or SIGTERM) the first time it reaches MOMENT of logging a best model.

The moments sit between the writes a logged model takes, too close together for a test that
polls the stores to land in (a READY model stays untagged for milliseconds): the real MLflow and
sweep functions run unchanged, each wrapped to send the signal right after it returns.

- ``initialized``: MLflow created the model record (PENDING, no files)
- ``files``: its files are copied, MLflow has not marked it READY
- ``ready``: MLflow marked it READY; the run is not tagged with it yet
- ``tagged``: the first optimizer's run is tagged with its model; the next is not logged yet
"""

from __future__ import annotations

import functools
import os
import signal
import sys


def _after(owner, attr: str, sig: signal.Signals, when=lambda *args, **kwargs: True) -> None:
    """Wrap ``owner.attr`` to send ``sig`` to this process after its first call that ``when`` accepts."""
    real = getattr(owner, attr)

    @functools.wraps(real)
    def wrapped(*args, **kwargs):
        result = real(*args, **kwargs)
        if when(*args, **kwargs) and not wrapped.sent:
            wrapped.sent = True
            os.kill(os.getpid(), sig)
        return result

    wrapped.sent = False
    setattr(owner, attr, wrapped)


def install(moment: str, sig: signal.Signals) -> None:
    import mlflow
    import mlflow.tracking.fluent
    from mlflow.tracking.client import MlflowClient

    from sweep.core.keys import Tag
    from sweep.stores import tracking

    if moment == "initialized":
        _after(mlflow, "initialize_logged_model", sig)
    elif moment == "files":
        _after(MlflowClient, "log_model_artifacts", sig)
    elif moment == "ready":
        _after(mlflow.tracking.fluent, "finalize_logged_model", sig, lambda model_id, status: str(status) == "READY")
    elif moment == "tagged":
        _after(tracking, "tag_run", sig, lambda uri, run_id, tags: Tag.MODEL_URI in tags)
    else:
        raise SystemExit(f"unknown moment {moment!r}")


if __name__ == "__main__":
    from sweep.cli import main

    install(sys.argv[1], signal.Signals[sys.argv[2]])
    sys.exit(main(sys.argv[3:]))
