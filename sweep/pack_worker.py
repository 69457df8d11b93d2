"""What runs on a Ray worker for a pack: several trials of one optimizer trained as one fused model
(``sweep.pack_trial``), each still its own Optuna trial and MLflow run.

Each member gets what a solo trial gets from ``sweep.worker``: its attempt counted, its epochs
reported to Optuna and logged to MLflow through its own sender, its checkpoints (in the solo
format), and its outcome finished through ``finish.finish_trial``. Its records differ from a solo
trial's only by the ``pack`` attribute (``sweep.pack`` tag in MLflow): the trial numbers it was
packed with.

Where the pack cannot go on, its members go on solo, one after another in this task:

* the pack's own computation raised (nothing any one member did): each member not finished goes
  on alone from its last checkpoint, and records the pack's error as ``pack_error``;
* this is Ray re-running the task (the pack's worker process died): every member not finished
  goes on alone from its last checkpoint, as a solo trial's re-run does.

A pack too big for the device's memory runs as sub-packs, one after another (``pack_memory``).
"""
from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass

from sweep import credentials
from sweep.errors import StoreUnavailable, store_calls
from sweep.finish import OPTUNA
from sweep.mlflow_sender import TrackingSender, use_short_requests
from sweep.outcome import TrialOutcome
from sweep.studies import ATTEMPT
from sweep.worker import Attempt, TrialTask, _execute, _load, device_memory, this_node

PACK = "pack"              # Optuna user attribute and MLflow tag (sweep.pack): the trial numbers packed together
PACK_ERROR = "pack_error"  # why a member went on solo


@dataclass(frozen=True)
class PackTask:
    """Trials of one study to train as one pack (at least one)."""

    members: tuple[TrialTask, ...]

    @property
    def label(self) -> str:
        return ",".join(str(m.number) for m in self.members)


def execute_pack(task: PackTask, data) -> list[TrialOutcome]:
    """The members' outcomes, in the task's order. Credentials and store errors as ``worker.execute``."""
    use_short_requests()
    with credentials.environment(task.members[0].credentials):
        try:
            return _execute_pack(task, data)
        except StoreUnavailable as exc:
            raise StoreUnavailable(exc.store, exc.detail) from None


def _solo(member: TrialTask, data, tags: dict[str, str]) -> TrialOutcome:
    with TrackingSender(member.stores.tracking_uri, member.run_id, member.config.tracking_retry_s) as sender:
        return _execute(member, data, sender, tags)


def _execute_pack(task: PackTask, data) -> list[TrialOutcome]:
    import torch

    from sweep import pack_memory
    from sweep.pack_trial import run_pack

    first = task.members[0]
    torch.set_num_threads(max(1, first.threads))
    study = _load(first)
    with store_calls(OPTUNA):
        earlier = [study.record(m.number) for m in task.members]
    tags = {PACK: task.label}
    if any(int(record.user_attrs.get(ATTEMPT, 0)) for record in earlier):  # Ray re-runs the task: solo
        return [_solo(member, data, tags) for member in task.members]
    from sweep.trial import pick_device

    device = pick_device(first.config.device)
    try:
        fit = pack_memory.fit(first.config, data, device)
    except Exception as exc:  # noqa: BLE001 - even one member's step failed: each member alone says why
        error = f"{type(exc).__name__}: {exc}"
        return [_solo(member, data, {PACK: task.label, PACK_ERROR: error[:500]}) for member in task.members]
    members = list(range(len(task.members)))
    sub_packs = pack_memory.split(members, fit.members)
    if len(sub_packs) > 1:
        print(f"pack {task.label}: {fit.members} members fit ({fit.member_bytes / 2**20:.0f} MB each, "
              f"{fit.available_bytes / 2**20:.0f} MB free): run as {len(sub_packs)} sub-packs", file=sys.stderr,
              flush=True)
    outcomes: dict[int, TrialOutcome] = {}
    left: dict[int, str] = {}  # members the pack could not finish -> the pack's error
    node = this_node()
    for sub_pack in sub_packs:
        tags = {PACK: ",".join(str(task.members[i].number) for i in sub_pack)}
        with contextlib.ExitStack() as stack:
            started = time.perf_counter()
            senders = [stack.enter_context(TrackingSender(task.members[i].stores.tracking_uri, task.members[i].run_id,
                                                          task.members[i].config.tracking_retry_s)) for i in sub_pack]
            attempts = [Attempt(task.members[i], study, earlier[i], sender, node, tags)
                        for i, sender in zip(sub_pack, senders)]
            savers = [stack.enter_context(a.saver()) for a in attempts]
            for a in attempts:  # the pack's set-up is shared: each member counts all of it
                a.spent["setup_seconds"] = time.perf_counter() - started
            with device_memory() as memory:
                packed = run_pack([task.members[i].config for i in sub_pack], data, [a.report for a in attempts],
                                  savers)
            for i, attempt, save, result in zip(sub_pack, attempts, savers, packed.results):
                if result is None:
                    left[i] = packed.error
                    continue
                save.wait()  # its last checkpoint is stored before the trial is told
                outcomes[i] = attempt.finish(result, memory)
    for i, error in left.items():
        member = task.members[i]
        print(f"pack {task.label}: trial {member.number} goes on solo ({error})", file=sys.stderr, flush=True)
        outcomes[i] = _solo(member, data, {PACK: task.label, PACK_ERROR: error[:500]})
    return [outcomes[i] for i in range(len(task.members))]
