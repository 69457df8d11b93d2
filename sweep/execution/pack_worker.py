"""What runs on a Ray worker for a pack: several trials of one optimizer trained as one fused model
(``sweep.train.packed``), each still its own Optuna trial and MLflow run.

Each member gets what a solo trial gets from ``sweep.execution.worker``: its attempt counted, its epochs
reported to Optuna and logged to MLflow through its own sender, its checkpoints (in the solo
format), and its outcome finished through ``finish.finish_trial``. Its records differ from a solo
trial's only by the ``pack`` attribute (``sweep.pack`` tag in MLflow): the trial numbers it was
packed with.

A member that leaves the pack early (pruned, diverged, its reporting failed) is recorded at once,
as a solo trial would be; the others when the pack ends.

Where the pack's own computation raises (nothing any one member did), each member not finished
goes on alone in this task from its last checkpoint, and records the pack's error as
``pack_error``. A pack task is never re-run by Ray: when its worker dies, the driver sends each
unfinished member as a solo task, which goes on from that member's checkpoint
(``driver.Driver.collect``).

A pack too big for the device's memory runs as sub-packs, one after another (``sweep.train.memory``).
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass

from sweep.core import credentials
from sweep.core.errors import StoreUnavailable, store_calls
from sweep.core.keys import Attr
from sweep.core.outcome import Status, TrialOutcome
from sweep.execution.worker import (
    Attempt,
    TrialTask,
    device_memory,
    install_declared,
    load_study,
    run_attempt,
    this_node,
)
from sweep.stores.finish import OPTUNA
from sweep.stores.mlflow_sender import SHORT_REQUESTS, TrackingSender


@dataclass(frozen=True)
class PackTask:
    """Trials of one study to train as one pack (at least one)."""

    members: tuple[TrialTask, ...]
    device_share: float = 1.0  # the task's fraction of its GPU (num_gpus < 1): the share of free memory it may use

    @property
    def label(self) -> str:
        return ",".join(str(m.number) for m in self.members)


def execute_pack(task: PackTask, data) -> list[TrialOutcome]:
    """The members' outcomes, in the task's order. Credentials and store errors as ``worker.execute``."""
    install_declared(task.members[0].config)
    with credentials.environment({**task.members[0].credentials, **SHORT_REQUESTS}):
        try:
            return _execute_pack(task, data)
        except StoreUnavailable as exc:
            raise StoreUnavailable(exc.store, exc.detail) from None


def _solo(member: TrialTask, data, tags: dict[str, str]) -> TrialOutcome:
    with TrackingSender(member.stores.tracking_uri, member.run_id, member.config.tracking_retry_s) as sender:
        return run_attempt(member, data, sender, tags)


def _execute_pack(task: PackTask, data) -> list[TrialOutcome]:
    import torch

    from sweep.core.datasets import device_tensors
    from sweep.train import memory as pack_memory
    from sweep.train.steps import pick_device

    first = task.members[0]
    torch.set_num_threads(max(1, first.threads))
    study = load_study(first)
    with store_calls(OPTUNA):
        earlier = [study.record(m.number) for m in task.members]
    device = pick_device(first.config.device)
    try:
        device_tensors(data, device)  # the data's device copy first: the members get what is free after it
        fit = pack_memory.fit(first.config, data, device, task.device_share)
    except Exception as exc:  # noqa: BLE001 - even one member's step failed: each member alone says why
        error = f"{type(exc).__name__}: {exc}"
        return [_solo(member, data, {Attr.PACK: task.label, Attr.PACK_ERROR: error[:500]}) for member in task.members]
    members = list(range(len(task.members)))
    sub_packs = pack_memory.split(members, fit.members)
    if len(sub_packs) > 1:
        print(
            f"pack {task.label}: {fit.members} members fit ({fit.member_bytes / 2**20:.0f} MB each, "
            f"{fit.available_bytes / 2**20:.0f} MB free): run as {len(sub_packs)} sub-packs",
            file=sys.stderr,
            flush=True,
        )
    outcomes: dict[int, TrialOutcome] = {}
    left: dict[int, str] = {}  # members the pack could not finish -> the pack's error
    node = this_node()
    for sub_pack in sub_packs:
        _run_sub_pack(task, sub_pack, data, study, earlier, node, outcomes, left)
    for i, error in left.items():
        member = task.members[i]
        print(f"pack {task.label}: trial {member.number} goes on solo ({error})", file=sys.stderr, flush=True)
        outcomes[i] = _solo(member, data, {Attr.PACK: task.label, Attr.PACK_ERROR: error[:500]})
    return [outcomes[i] for i in range(len(task.members))]


def _run_sub_pack(
    task: PackTask,
    sub_pack: list[int],
    data,
    study,
    earlier,
    node: dict[str, str],
    outcomes: dict[int, TrialOutcome],
    left: dict[int, str],
) -> None:
    """Train the members at ``sub_pack`` (positions in the task) as one pack: each finished member's
    outcome goes into ``outcomes``, each one the pack could not finish into ``left`` with its error."""
    from sweep.train.packed import run_pack

    tags = {Attr.PACK: ",".join(str(task.members[i].number) for i in sub_pack)}
    with contextlib.ExitStack() as stack:
        started = time.perf_counter()
        senders = [
            stack.enter_context(
                TrackingSender(
                    task.members[i].stores.tracking_uri, task.members[i].run_id, task.members[i].config.tracking_retry_s
                )
            )
            for i in sub_pack
        ]
        attempts = [
            Attempt(task.members[i], study, earlier[i], sender, node, tags) for i, sender in zip(sub_pack, senders)
        ]
        savers = [stack.enter_context(a.saver()) for a in attempts]
        for a in attempts:  # the pack's set-up is shared: each member counts all of it
            a.spent["setup_seconds"] = time.perf_counter() - started

        def finish(position: int, result, memory: dict[str, float]) -> None:
            savers[position].wait()  # its last checkpoint is stored before the trial is told
            outcomes[sub_pack[position]] = attempts[position].finish(result, memory)

        def left_early(position: int, result) -> None:  # recorded now, as solo (a pack may die later)
            if result.status != Status.OK:  # the members that finish training: with the device's memory
                finish(position, result, {})

        with device_memory() as memory:
            packed = run_pack(
                [task.members[i].config for i in sub_pack], data, [a.report for a in attempts], savers, left_early
            )
        for position, result in enumerate(packed.results):
            if result is None:
                left[sub_pack[position]] = packed.error
            elif sub_pack[position] not in outcomes:
                finish(position, result, memory)
