"""The logged models of a sweep's runs, read-only, for ``sweep check``: ``logged_models.records``
of the sweep's experiment and of the store's Default experiment (where MLflow puts a model logged
with no experiment given: a model of the sweep there is damage), kept when their source run is
one of the sweep's.

A moved or copied sweep's store still records where its models were: their files count as there
when they are at the same place under the sweep's ``artifacts/`` now (a sweep command relocates
the records; a check writes nothing).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from sweep.stores import logged_models, tracking
from sweep.stores.logged_models import MANIFEST, LoggedModelRecord

READY = "READY"
DEFAULT_EXPERIMENT = "0"


def of_runs(tracking_uri: str, experiment_id: str, run_ids: set[str], here: Path | None) -> list[LoggedModelRecord]:
    """The logged models whose source run is in ``run_ids``. ``here``: the sweep directory's
    ``artifacts/`` when the store is its own."""
    recorded = tracking.client(tracking_uri).get_experiment(experiment_id).artifact_location
    found = [
        r
        for exp in dict.fromkeys((experiment_id, DEFAULT_EXPERIMENT))
        for r in logged_models.records(tracking_uri, exp)
        if r.source_run_id in run_ids
    ]
    return [dataclasses.replace(r, files=r.files or _moved_here(r, recorded, here)) for r in found]


def _moved_here(record: LoggedModelRecord, recorded: str | None, here: Path | None) -> bool:
    """Whether the model's MLmodel is at its recorded place under the experiment's recorded
    location, read under where the sweep's ``artifacts/`` is now."""
    root = (recorded or "").rstrip("/")
    if here is None or not root or not record.artifact_location.startswith(root + "/"):
        return False
    return (here / record.artifact_location[len(root) + 1 :] / MANIFEST).is_file()
