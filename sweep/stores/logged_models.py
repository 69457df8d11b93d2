"""The logged models of a sweep's runs, as MLflow holds them, and the one a run keeps.

Logging a model takes several writes (MLflow creates the record PENDING, copies its files, marks it
READY; the sweep then tags the run with its URI), so a driver stopped between two of them leaves a
model record behind that the run's tag does not name: PENDING with some or no files, FAILED, or
READY but untagged. ``settle`` is what a (re)logging driver does first: it adopts the run's
complete model, if there is one, and deletes the rest (MLflow's soft delete: ``mlflow gc`` removes
their files), so a run never ends with two. ``records`` reads them for a check of the sweep.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow.entities import LoggedModelStatus

from sweep.stores import tracking

MANIFEST = "MLmodel"  # the file every MLflow model holds at its root, written with the rest


@dataclass(frozen=True)
class LoggedModelRecord:
    """One logged model as the store has it, and whether its files are there."""

    model_id: str
    name: str
    experiment_id: str
    source_run_id: str | None
    status: str  # MLflow's LoggedModelStatus: READY, PENDING, FAILED
    artifact_location: str
    files: bool  # its MLmodel file is where the record says

    @property
    def uri(self) -> str:
        return f"models:/{self.model_id}"

    @property
    def complete(self) -> bool:
        """READY (MLflow marks it so only once its files are all copied) and its files still there."""
        return self.status == LoggedModelStatus.READY.value and self.files


def records(
    uri: str, experiment_id: str, run_id: str | None = None, name: str | None = None
) -> list[LoggedModelRecord]:
    """The experiment's logged models (deleted ones aside), oldest first; only those of run
    ``run_id`` and named ``name`` when given. Read only."""
    client = tracking.client(uri)
    conditions = [f"source_run_id = '{run_id}'"] if run_id else []
    conditions += [f"name = '{name}'"] if name else []
    order = [{"field_name": "creation_timestamp", "ascending": True}]
    found, token = [], None
    while True:
        page = client.search_logged_models(
            [experiment_id], " AND ".join(conditions) or None, order_by=order, page_token=token
        )
        found += page
        token = page.token
        if not token:
            break
    return [
        LoggedModelRecord(
            model_id=m.model_id,
            name=m.name,
            experiment_id=str(m.experiment_id),
            source_run_id=m.source_run_id,
            status=str(m.status),
            artifact_location=m.artifact_location,
            files=has_files(uri, m.model_id),
        )
        for m in found
    ]


def has_files(uri: str, model_id: str) -> bool:
    """Whether the model's MLmodel file is in its artifact location (none at all reads as False)."""
    return any(f.path == MANIFEST for f in tracking.client(uri).list_logged_model_artifacts(model_id))


def remove(uri: str, model_id: str) -> None:
    """Delete a logged model record (MLflow's soft delete; ``mlflow gc`` then removes its files)."""
    tracking.client(uri).delete_logged_model(model_id)


def settle(uri: str, experiment_id: str, run_id: str, name: str, tagged: str | None) -> str | None:
    """Keep one complete model of run ``run_id`` named ``name`` and delete its others; returns the
    kept model's URI, or None when none is complete (the caller logs it anew). The model the run's
    tag names (``tagged``) is kept first, else the oldest complete one."""
    found = records(uri, experiment_id, run_id, name)
    complete = [r for r in found if r.complete]
    keep = next((r for r in complete if r.uri == tagged), complete[0] if complete else None)
    for r in found:
        if r is not keep:
            remove(uri, r.model_id)
    return keep.uri if keep else None
