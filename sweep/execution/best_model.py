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
from sweep.stores import checkpoints, logged_models, tracking
from sweep.stores.sweepdir import Stores

EXAMPLE_IMAGES = 4


def log(stores: Stores, run_id: str, model_name: str, data: DataSplits, epochs: int) -> str | None:
    """Log the run's final model; returns its URI, or None (said on stderr) when the run has no
    checkpoint of its last epoch (``checkpoint_every=0``, or its store lost it), or the model
    itself could not be saved. The run's tag is the commit point: a model the run already holds
    complete is adopted (and tagged), what a stopped driver left half done is deleted first
    (``logged_models.settle``), so a rerun after a stop at any moment ends with one model. A
    store error (a full disk, a server gone) stops the sweep, to be finished by ``sweep resume``."""
    import mlflow
    import torch

    import models
    from models import build_model

    uri = stores.tracking_uri
    run = tracking.client(uri).get_run(run_id)
    name = run.data.tags.get(Tag.OPTIMIZER) or "model"
    tagged = run.data.tags.get(Tag.MODEL_URI)
    kept = logged_models.settle(uri, run.info.experiment_id, run_id, name, tagged)
    if kept:  # logged before: by this driver's predecessor, maybe stopped before its tag
        if kept != tagged:
            tracking.tag_run(uri, run_id, {Tag.MODEL_URI: kept})
        return kept
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
    # Created first in the run's own experiment: left to log_model, a logged model goes to the
    # process's active experiment (MLflow's Default one in the driver), not to the sweep's.
    logged = mlflow.initialize_logged_model(
        name=name, source_run_id=run_id, experiment_id=run.info.experiment_id, params=dict(run.data.params)
    )
    try:
        info = mlflow.pytorch.log_model(
            model,
            model_id=logged.model_id,
            run_id=run_id,
            input_example=data.test_x[:EXAMPLE_IMAGES],
            code_paths=[str(Path(models.__file__).parent)],
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )
    except BaseException as exc:  # a stop (SIGTERM, Ctrl-C) or an error: no half model is left
        _discard(uri, logged.model_id)
        if not isinstance(exc, Exception) or _store_error(exc):
            raise
        print(f"best model: could not log the model of run {run_id} ({first_line(exc)})", file=sys.stderr, flush=True)
        return None
    tracking.tag_run(uri, run_id, {Tag.MODEL_URI: info.model_uri})
    return info.model_uri


def _store_error(exc: Exception) -> bool:
    """An error of the stores (MLflow's, or the disk's), not of the model: it stops the sweep."""
    from mlflow.exceptions import MlflowException

    return isinstance(exc, (MlflowException, OSError))


def _discard(uri: str, model_id: str) -> None:
    """Delete a model whose logging stopped halfway; best effort: the next driver's ``settle``
    deletes it if this cannot (the store is what failed)."""
    try:
        logged_models.remove(uri, model_id)
    except Exception:  # noqa: BLE001 - the reason is said by whoever stops the sweep
        pass
