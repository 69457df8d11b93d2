"""Each optimizer's best re-evaluated model, logged as an MLflow PyTorch model users can load by URI.

The model is rebuilt from its run's last checkpoint (the worker already stores one after the final
epoch), so training never pays for it and a model is logged once per optimizer, not per trial.
It is logged with MLflow 3's ``log_model`` as a logged model of the sweep's experiment, named after
its optimizer (``sgd``), stored under the experiment's artifact location (the sweep directory's
``artifacts/models/`` without a tracking server) and linked to the re-evaluation run that trained
it (its ``source_run_id``, and the run's model outputs), with an input example (a few normalised
test images: the model expects inputs normalised with the training split's mean and std, as the
sweep's data is) and the model package's code, so it loads in any Python with torch and MLflow:
``mlflow.pytorch.load_model(uri)``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sweep.core.datasets import DataSplits
from sweep.core.errors import first_line
from sweep.core.keys import Tag
from sweep.stores import checkpoints, tracking
from sweep.stores.sweepdir import Stores

EXAMPLE_IMAGES = 4


def log(stores: Stores, run_id: str, model_name: str, data: DataSplits, epochs: int) -> str | None:
    """Log the run's final model; returns its URI, or None (said on stderr) when the run has no
    checkpoint of its last epoch (``checkpoint_every=0``, or its store lost it)."""
    import mlflow
    import torch

    import models
    from models import build_model

    uri = stores.tracking_uri
    known = tracking.model_uri(uri, run_id)
    if known:  # a resumed driver does not log it twice
        return known
    checkpoint = checkpoints.load_latest(uri, run_id, stores.artifacts)
    if checkpoint is None or checkpoint.epoch != epochs:
        found = "none" if checkpoint is None else f"epoch {checkpoint.epoch}"
        print(
            f"best model: run {run_id} has no checkpoint of epoch {epochs} ({found}); no model logged",
            file=sys.stderr,
            flush=True,
        )
        return None
    model = build_model(model_name, data.in_shape, data.num_classes)
    model.load_state_dict(checkpoint.model)
    model.eval()
    mlflow.set_tracking_uri(uri)
    logged = None
    try:
        # Created first in the run's own experiment: left to log_model, a logged model goes to the
        # process's active experiment (MLflow's Default one in the driver), not to the sweep's.
        run = tracking.client(uri).get_run(run_id)
        logged = mlflow.initialize_logged_model(
            name=run.data.tags.get(Tag.OPTIMIZER) or "model",
            source_run_id=run_id,
            experiment_id=run.info.experiment_id,
            params=dict(run.data.params),
        )
        info = mlflow.pytorch.log_model(
            model,
            model_id=logged.model_id,
            run_id=run_id,
            input_example=data.test_x[:EXAMPLE_IMAGES],
            code_paths=[str(Path(models.__file__).parent)],
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )
    except Exception as exc:  # noqa: BLE001 - a model that cannot be logged is said; the report goes on
        if logged is not None:
            _mark_failed(logged.model_id)
        print(f"best model: could not log the model of run {run_id} ({first_line(exc)})", file=sys.stderr, flush=True)
        return None
    tracking.tag_run(uri, run_id, {Tag.MODEL_URI: info.model_uri})
    return info.model_uri


def _mark_failed(model_id: str) -> None:
    """A logged model whose artifacts never arrived shows as FAILED, not PENDING forever."""
    import mlflow
    from mlflow.entities import LoggedModelStatus

    try:
        mlflow.finalize_logged_model(model_id, LoggedModelStatus.FAILED)
    except Exception:  # noqa: BLE001 - best effort: the reason was said already
        pass
