"""The logged models of a sweep's runs, read-only, with whether their files exist (``sweep check``).

Kept apart so that a fuller reader of logged models can replace ``logged_models`` as it is.
Models are found through MLflow's ``search_logged_models`` in the sweep's experiment and in the
store's Default experiment (where MLflow puts a model logged with no experiment given), and kept
when their source run is one of the sweep's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from sweep.stores import tracking

READY = "READY"
MODEL_FILE = "MLmodel"  # every model MLflow logs has it at its root
DEFAULT_EXPERIMENT = "0"


@dataclass(frozen=True)
class LoggedModel:
    model_id: str
    name: str
    status: str  # READY, PENDING or FAILED (MLflow's LoggedModelStatus)
    experiment_id: str
    source_run_id: str | None
    files: bool  # its MLmodel file is where the store says


def logged_models(tracking_uri: str, experiment_id: str, run_ids: set[str], here: Path | None) -> list[LoggedModel]:
    """The logged models whose source run is in ``run_ids``. ``here``: the sweep directory's
    ``artifacts/`` when the store is its own (a moved sweep's recorded locations are read there)."""
    client = tracking.client(tracking_uri)
    recorded = client.get_experiment(experiment_id).artifact_location
    found = []
    for exp in dict.fromkeys((experiment_id, DEFAULT_EXPERIMENT)):
        token = None
        while True:
            page = client.search_logged_models(experiment_ids=[exp], max_results=100, page_token=token)
            found += [m for m in page if m.source_run_id in run_ids]
            token = page.token
            if not token:
                break
    return [
        LoggedModel(
            m.model_id,
            m.name,
            str(getattr(m.status, "name", m.status)).removeprefix("LoggedModelStatus."),
            str(m.experiment_id),
            m.source_run_id,
            _has_files(m.artifact_location, recorded, here, tracking_uri),
        )
        for m in found
    ]


def _has_files(location: str, recorded: str | None, here: Path | None, tracking_uri: str) -> bool:
    """Whether the model's ``MLmodel`` exists: on disk for a local location (moved with the
    sweep when it lies under the experiment's recorded location), else in its artifact store."""
    if here is not None and recorded and location.startswith(recorded.rstrip("/") + "/"):
        return (here / location[len(recorded.rstrip("/")) + 1 :] / MODEL_FILE).is_file()
    parsed = urlparse(location)
    if parsed.scheme in ("", "file"):
        return (Path(unquote(parsed.path)) / MODEL_FILE).is_file()
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    try:
        names = {
            Path(f.path).name for f in get_artifact_repository(location, tracking_uri=tracking_uri).list_artifacts()
        }
    except Exception:  # noqa: BLE001 - a store that cannot list them shows no files
        return False
    return MODEL_FILE in names


def delete(tracking_uri: str, model_id: str) -> None:
    """Remove a logged model's record (``sweep check --repair``: only one without files)."""
    tracking.client(tracking_uri).delete_logged_model(model_id)
