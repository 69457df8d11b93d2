"""Every key the sweep writes into a store, named once, grouped by store.

Optuna user attributes (``Attr``) and MLflow tags (``Tag``) often say the same thing under
different names (``retry_of`` / ``sweep.retry_of``): with both declared here, side by side, code
names the store it writes to (``Attr.RETRY_OF``, ``Tag.RETRY_OF``), and a test checks that no
string literal elsewhere in ``sweep/`` spells one of these keys. Saved sweeps depend on the
values: change one and a sweep written before no longer reads back.
"""

from __future__ import annotations


class Attr:
    """Optuna user attributes: of a trial, unless marked as the study's."""

    MLFLOW_RUN = "mlflow_run_id"  # the trial's MLflow run (on a study: its parent run)
    HYPERPARAMETERS = "hyperparameters"  # the trial's chosen values, as the report shows them
    STATUS, REASON = "status", "reason"  # the outcome (``outcome.Status``) and why
    RETRY_OF = "retry_of"  # an interrupted trial queued again: the trial it repeats
    ATTEMPT = "attempt"  # > 1 when Ray re-ran the trial after its worker died
    WORKER = "worker"  # host:pid of the latest attempt's process
    NODE_ID, NODE_ADDRESS = "node_id", "node_address"  # the Ray node of the latest attempt
    RESUMED_FROM = "resumed_from_epoch"  # the checkpoint's epoch a retried attempt went on from
    SOURCE_TRIAL, REEVAL_SEED = "source_trial", "reeval_seed"  # a re-evaluation: whose configuration, which seed
    PACK = "pack"  # the trial numbers trained together as one pack
    PACK_ERROR = "pack_error"  # why a pack's member went on solo
    NO_CHECKPOINT = "no_checkpoint"  # the first checkpoint a trial could not store: its epoch and why
    CURVE = "eval_curve"  # every validation evaluation: [steps, images, train_seconds, val_accuracy] each
    SWEEP_ID = "sweep_id"  # study: which sweep of that name owns it
    SAMPLER_BUDGET = "sampler_budget"  # study: the trial budget its sampler was built for
    TRAIN_IMAGES = "train_images"  # study: the training split's size (steps per epoch, in the report)
    OBJECTIVES = "objectives"  # study: what a multi-objective study optimizes (``core.objectives``), in order


class Tag:
    """MLflow tags on runs and experiments."""

    ROLE = "sweep.role"  # parent, trial, reeval or sweep (``tracking``'s roles)
    OPTIMIZER = "sweep.optimizer"
    TRIAL = "optuna.trial_number"
    STATE = "optuna.state"  # the Optuna state the trial ended in
    STATUS, REASON = "sweep.status", "sweep.reason"
    RETRY_OF = "sweep.retry_of"
    ATTEMPTS = "sweep.attempts"
    NODE_ID, NODE_ADDRESS = "sweep.node_id", "sweep.node_address"
    RESUMED_FROM = "sweep.resumed_from_epoch"
    SOURCE_TRIAL, REEVAL_SEED = "sweep.source_trial", "sweep.reeval_seed"
    PACK = "sweep.pack"
    PACK_ERROR = "sweep.pack_error"
    NO_CHECKPOINT = "sweep.no_checkpoint"
    TARGET = "sweep.target"  # whether and when the trial reached target_accuracy
    ORPHANED = "sweep.orphaned"  # a run whose trial a torn journal lost: kept, never reused
    SWEEP_ID = "sweep.id"  # tells sweeps of the same name in a shared store apart
    CONFIG = "sweep.config"  # on the experiment: sweep.yaml as last run (no passwords), for `sweep check --repair`
    BEST_RUN, MODEL_URI, TIED = "sweep.best_run_id", "sweep.model_uri", "sweep.tied"  # on a parent run
    PARENT = "mlflow.parentRunId"
    NOTE = "mlflow.note.content"  # a run's description in the MLflow UI
    EXPERIMENT_KIND = "mlflow.experimentKind"


# The trial attributes a worker mirrors as tags on the trial's run.
MIRRORED = {
    Attr.NODE_ID: Tag.NODE_ID,
    Attr.NODE_ADDRESS: Tag.NODE_ADDRESS,
    Attr.RESUMED_FROM: Tag.RESUMED_FROM,
    Attr.PACK: Tag.PACK,
    Attr.PACK_ERROR: Tag.PACK_ERROR,
    Attr.NO_CHECKPOINT: Tag.NO_CHECKPOINT,
}
