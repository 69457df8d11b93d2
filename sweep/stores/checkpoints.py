"""Per-epoch checkpoints of a trial, kept with its MLflow run, so a retried trial resumes exactly.

A ``Checkpoint`` (``sweep.core.records``) holds everything the next epoch depends on: the model's
and optimizer's state, the LR schedule's, the generator that orders batches and draws
augmentations, the global torch RNG, the first batch loss (the divergence check's yardstick) and
the epochs run so far (the final metrics are computed from them) with the evaluation curve so far
(``core.target``). On the CPU a trial resumed from it ends bit-identical to one that never stopped.

Checkpoints live in the run's artifacts (``checkpoints/epoch-0003.pt``), through MLflow's
artifact repository of the run: the sweep directory's ``artifacts/`` locally, the tracking
server's proxy (``mlflow-artifacts:/``) on a cluster, so every node reaches them without a shared
filesystem. A run keeps only its latest one. Storing is best effort: an upload or a delete that
fails is said on stderr and the trial goes on (the next checkpoint tries again); the ``saver``
keeps a trial's first failure, which the worker records on the trial and the driver says on the
terminal (a worker's stderr reaches only Ray's logs). A checkpoint that cannot be read means
resuming from an older one, or from the start.

MLflow and the store are imported when first used, so ``sweep train`` does not pay for them, and
torch too, so the sweep's driver (which only tidies checkpoints) never imports it.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

from sweep.core.errors import first_line
from sweep.core.records import Checkpoint, EpochMetrics
from sweep.core.target import CurvePoint

FOLDER = "checkpoints"
FORMAT = 1  # bumped when the file's layout changes; another layout is not read
_NAME = re.compile(r"^epoch-(\d+)\.pt$")


# ---- the file ----


def write(checkpoint: Checkpoint, path: Path) -> None:
    """Write atomically: a reader never sees half a file at ``path``."""
    import torch

    part = path.with_name(path.name + ".part")
    fields = {
        **checkpoint.__dict__,
        "history": [asdict(m) for m in checkpoint.history],
        "curve": [p.as_list() for p in checkpoint.points()],
    }
    torch.save({"format": FORMAT, **fields}, part)
    os.replace(part, path)


def read(path: Path) -> Checkpoint:
    """Raises on a file that is not a whole checkpoint of this format. Tensors and plain data only
    (``weights_only``): a file in a shared store is data, never code."""
    import torch

    fields = torch.load(path, map_location="cpu", weights_only=True)
    if fields.pop("format", None) != FORMAT:
        raise ValueError(f"not a checkpoint of format {FORMAT}")
    fields["history"] = tuple(EpochMetrics(**m) for m in fields["history"])
    fields["curve"] = tuple(CurvePoint.of(p) for p in fields.get("curve", ()))  # none in a file from before
    return Checkpoint(**fields)


def _name(epoch: int) -> str:
    return f"epoch-{epoch:04d}.pt"


# ---- the run's artifacts ----


@functools.lru_cache(maxsize=256)
def _repository(uri: str, run_id: str, root: str | None = None):
    """The run's artifact repository (the sweep directory's folder ``root``, or the tracking
    server's proxy: ``tracking.artifact_uri``)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    from sweep.stores import tracking

    return get_artifact_repository(tracking.artifact_uri(uri, run_id, root), tracking_uri=uri)


def stored_epochs(uri: str, run_id: str, root: str | None = None) -> list[int]:
    """The epochs the run has checkpoints of, oldest first."""
    names = (Path(f.path).name for f in _repository(uri, run_id, root).list_artifacts(FOLDER) if not f.is_dir)
    return sorted(int(m.group(1)) for m in map(_NAME.match, names) if m)


def _say(text: str) -> None:
    print(f"checkpoints: {text}", file=sys.stderr, flush=True)


def save(uri: str, run_id: str, checkpoint: Checkpoint, root: str | None = None) -> bool:
    """Store the checkpoint, then drop the run's older ones. A failure is said, not raised: the
    trial goes on, and the next checkpoint tries again. Returns whether it was stored."""
    return store(uri, run_id, checkpoint, root) is None


def store(uri: str, run_id: str, checkpoint: Checkpoint, root: str | None = None) -> str | None:
    """``save``, returning why it failed (``epoch 3: OSError: ...``); None once stored."""
    try:
        repository = _repository(uri, run_id, root)
        with tempfile.TemporaryDirectory(prefix="sweep-checkpoint-") as folder:
            path = Path(folder) / _name(checkpoint.epoch)
            write(checkpoint, path)
            repository.log_artifact(str(path), FOLDER)
        for epoch in stored_epochs(uri, run_id, root):
            if epoch < checkpoint.epoch:
                repository.delete_artifacts(f"{FOLDER}/{_name(epoch)}")
    except Exception as exc:  # noqa: BLE001 - a checkpoint is never worth a failed trial
        _say(f"could not store epoch {checkpoint.epoch} of run {run_id} ({first_line(exc)}); training goes on")
        return f"epoch {checkpoint.epoch}: {first_line(exc)}"
    return None


class saver:
    """``run_trial``'s ``save`` callback for a run, used as a context manager. Each checkpoint is
    copied off the live tensors at once (the next epoch changes them), then written and uploaded
    in the background while training goes on: a resnet18 checkpoint (85 MB) took 0.6-1.2 s per
    epoch to write on 2 CPU cores (``bench/trial_loop.py``). At most one write is in flight (the
    next waits for it), so memory holds at most one extra copy; leaving the block waits for the
    last one, so a finished trial's final checkpoint is stored before the trial is told.
    ``failure``: why the first checkpoint that could not be stored failed (None: all stored)."""

    def __init__(self, uri: str, run_id: str, root: str | None = None):
        self.uri, self.run_id, self.root = uri, run_id, root
        self._writer = None
        self._pending = None
        self.failure: str | None = None

    def __enter__(self) -> saver:
        from concurrent.futures import ThreadPoolExecutor

        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sweep-checkpoint")
        return self

    def __call__(self, checkpoint: Checkpoint) -> None:
        self.wait()
        snapshot = checkpoint.detached()
        self._pending = self._writer.submit(store, self.uri, self.run_id, snapshot, self.root)

    def wait(self) -> None:
        if self._pending is not None:
            failure = self._pending.result()  # store() says its failures and never raises
            self.failure = self.failure or failure
            self._pending = None

    def failed(self) -> str | None:
        """``failure`` as known now: a write still in flight counts once it is done (no wait)."""
        if self._pending is not None and self._pending.done():
            self.wait()
        return self.failure

    def __exit__(self, *exc) -> None:
        self.wait()
        self._writer.shutdown()


def load_latest(uri: str, run_id: str, root: str | None = None) -> Checkpoint | None:
    """The run's latest readable checkpoint; None when it has none (then the trial starts over).
    An unreadable one (a torn upload) is said once, and an older one is tried."""
    try:
        epochs = stored_epochs(uri, run_id, root)
    except Exception as exc:  # noqa: BLE001
        _say(f"cannot list the checkpoints of run {run_id} ({first_line(exc)}); training from the start")
        return None
    unreadable = []
    for epoch in reversed(epochs):
        try:
            with tempfile.TemporaryDirectory(prefix="sweep-checkpoint-") as folder:
                local = _repository(uri, run_id, root).download_artifacts(f"{FOLDER}/{_name(epoch)}", folder)
                checkpoint = read(Path(local))
        except Exception as exc:  # noqa: BLE001
            unreadable.append(f"epoch {epoch} ({first_line(exc, 200)})")
            continue
        if unreadable:
            _say(f"run {run_id}: cannot read checkpoint {', '.join(unreadable)}; resuming from epoch {epoch}")
        return checkpoint
    if unreadable:
        _say(f"run {run_id}: cannot read checkpoint {', '.join(unreadable)}; training from the start")
    return None


def delete(uri: str, run_id: str, root: str | None = None) -> bool:
    """Remove all of a run's checkpoints (none is fine). A failure is said; returns whether done."""
    try:
        _repository(uri, run_id, root).delete_artifacts(FOLDER)
    except Exception as exc:  # noqa: BLE001 - tidying up never stops a sweep; the next driver tries again
        _say(f"could not delete the checkpoints of run {run_id} ({first_line(exc)})")
        return False
    return True


class Retention:
    """Which finished trials keep a checkpoint: every one with ``keep_all``; otherwise only the
    optimizer's best trial (its last checkpoint), so when the best changes the previous best's
    goes. ``tidy`` can run any number of times: each run is asked once per driver (a failed
    delete is said, and left to the next driver rather than retried while a store is down), and
    a fresh driver's first pass (a resumed sweep) covers every trial finished before."""

    def __init__(self, uri: str, keep_all: bool, root: str | None = None):
        self.uri, self.keep_all, self.root = uri, keep_all, root
        self.tidied: set[str] = set()

    def tidy(self, finished: Mapping[int, str], best: int | None) -> None:
        """``finished``: trial number -> run id of one optimizer's finished trials."""
        if self.keep_all:
            return
        for number, run_id in finished.items():
            if number != best and run_id not in self.tidied:
                self.tidied.add(run_id)
                delete(self.uri, run_id, self.root)
