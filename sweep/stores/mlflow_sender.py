"""A trial's MLflow writes, sent in order by one background thread: training never waits for MLflow.

A tracking server that goes away (restarted, redeployed, a network blip) must neither stall
training nor stop the sweep, and nothing logged meanwhile may be lost or stored twice. So each
write (an epoch's metric batch, tags, closing the run) is queued and sent by one thread, oldest
first; a failed write is retried with backoff, for at most ``tracking_retry_s`` counted from the
first failure of the oldest pending write. Past that the sender gives up for good and says which
epochs were not logged: the trial then ends FAILED with that reason (never a silent gap), and its
run, left RUNNING, is closed from Optuna's record by the driver once MLflow answers again.
Only an outage is waited for (a server that does not answer, or answers 5xx); any other error (a
refusal, a local store's full disk) stops the sweep as ``StoreUnavailable`` at once, as every
other store call does.

Every write must be safe to send twice (the server may have stored it before its answer was
lost): an epoch's ``Metric`` objects are built once with a fixed timestamp, and MLflow's SQL store
skips metrics it already holds with the same key, value, timestamp and step
(``SqlAlchemyStore._log_metrics_once``: on the primary key's IntegrityError it keeps only the rows
not yet stored); tags are upserts; closing a closed run does nothing.

The worker's own HTTP requests are kept short (``SHORT_REQUESTS``, for the task's duration): MLflow's client would
otherwise retry each one for ~4 minutes inside the library, past any budget of ours.
"""

from __future__ import annotations

import collections
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from sweep.core import credentials
from sweep.core.errors import StoreUnavailable, SweepError, first_line
from sweep.core.outcome import TrialOutcome
from sweep.stores import tracking
from sweep.stores.finish import MLFLOW

REQUEST_TIMEOUT_S = 15  # one HTTP request; a log_batch takes milliseconds when the server answers
FIRST_DELAY_S, MAX_DELAY_S = 0.5, 5.0  # backoff between tries: a returning server is found within 5 s
ERROR_GRACE_S = 5.0  # when the trial stops on an error of its own, how long queued writes may still go out

T = TypeVar("T")
# What a failed request comes down to, inside MLflow's and urllib3's wrapping ("API request to URL
# failed with exception HTTPConnectionPool(...): Max retries exceeded ... (Caused by ...)").
_CAUSE = re.compile(r"\[Errno -?\d+\] [^'\")]+|Read timed out|too many \d+ error responses|Connection aborted")


# While a trial runs, one MLflow HTTP request is one try with a short timeout: the sender's bounded
# retries replace the client's (7 retries, 120-s timeouts, minutes in all). Set for the task's
# duration only (``credentials.environment``): a process that also drives a sweep (a test running
# a trial in-process) keeps the client's retries for the driver's own calls.
SHORT_REQUESTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(REQUEST_TIMEOUT_S)}


@dataclass(frozen=True)
class Write:
    """One MLflow request for a trial's run; ``send`` must be safe to repeat."""

    what: str  # for the failure reason: "epoch 3", "tags", "final metrics and status"
    send: Callable[[], None]
    epoch: int | None = None


class GaveUp(SweepError):
    """The tracking server stayed away past the budget: the trial fails, naming what was not logged."""


def is_outage(exc: Exception, tracking_uri: str) -> bool:
    """A tracking server that did not answer (refused, reset, timed out: MLflow's client wraps
    these in a bare ``MlflowException``) or answered that it is in trouble (5xx, 408, 429): worth
    waiting for. Anything else (a refusal, a local store's error such as a full disk) is a store
    failure that stops the sweep at once, as in every other store call."""
    from mlflow.exceptions import MlflowException, RestException

    if not credentials.is_server(tracking_uri):
        return False
    if isinstance(exc, RestException):
        status = exc.get_http_status_code()
        return status >= 500 or status in (408, 429)
    return isinstance(exc, MlflowException)


def retrying(
    action: Callable[[], T],
    budget_s: float,
    worth_retrying: Callable[[Exception], bool],
    stop: threading.Event,
    on_retry: Callable[[], None] = lambda: None,
) -> T:
    """``action()``, tried again with backoff until it succeeds or ``budget_s`` has passed since its
    first failure; then its last error is raised (at once if not ``worth_retrying``, or on ``stop``).
    ``on_retry`` is called before each wait."""
    first_failure: float | None = None
    delay = FIRST_DELAY_S
    while True:
        try:
            return action()
        except Exception as exc:
            now = time.monotonic()
            first_failure = now if first_failure is None else first_failure
            left = budget_s - (now - first_failure)
            if not worth_retrying(exc) or left <= 0:
                raise
            on_retry()
            if stop.wait(min(delay, left)):
                raise
            delay = min(2 * delay, MAX_DELAY_S)


def _cause(exc: Exception) -> str:
    found = _CAUSE.search(str(exc))
    return found.group(0).strip() if found else first_line(exc)


def epoch_ranges(epochs: list[int]) -> str:
    """[3, 4, 5, 8] -> "epochs 3-5, 8"."""
    spans: list[list[int]] = []
    for epoch in sorted(set(epochs)):
        if spans and epoch == spans[-1][1] + 1:
            spans[-1][1] = epoch
        else:
            spans.append([epoch, epoch])
    text = ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in spans)
    return f"epoch{'s' if len(set(epochs)) > 1 else ''} {text}"


class TrackingSender:
    """Sends one trial run's writes in order from a background thread (a context manager).

    ``submit`` never blocks; ``flush`` waits until everything is sent or the sender stopped;
    ``failure`` is then the reason the trial fails with (the server stayed away past the budget),
    and a store failure that is no outage is raised as ``StoreUnavailable`` by ``check`` and
    ``flush``. Leaving the block on an error of the trial's own (another store gone, a bug) waits
    ``ERROR_GRACE_S`` at most, then drops what is left."""

    def __init__(self, tracking_uri: str, run_id: str, budget_s: float):
        self.uri, self.run_id, self.budget_s = tracking_uri, run_id, budget_s
        self._pending: collections.deque[Write] = collections.deque()
        self._unsent: list[Write] = []
        self._gave_up = self._last_error = ""
        self._store_error: StoreUnavailable | None = None
        self._retrying = False  # the oldest pending write has failed: MLflow is away
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"mlflow-sender-{run_id[:8]}", daemon=True)

    def __enter__(self) -> TrackingSender:
        self._thread.start()
        return self

    def __exit__(self, kind, exc, tb) -> None:
        self._wait(timeout_s=None if exc is None else ERROR_GRACE_S)
        self._stop.set()
        with self._changed:
            self._changed.notify_all()
        self._thread.join(timeout=REQUEST_TIMEOUT_S + 1)  # a request in flight ends within its timeout

    # ---- what the worker queues ----
    def submit(self, write: Write) -> None:
        """Queue a write (a checkpoint upload fits here too); once stopped it is only recorded as unsent."""
        with self._changed:
            if self._stopped():
                self._unsent.append(write)
            else:
                self._pending.append(write)
                self._changed.notify_all()

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        batch = tracking.epoch_metrics(metrics, step=epoch)  # stamped now, resent unchanged
        self.submit(Write(f"epoch {epoch}", lambda: tracking.log_metrics(self.uri, self.run_id, batch), epoch))

    def tag(self, tags: Mapping[str, str]) -> None:
        self.submit(Write("tags", lambda: tracking.tag_run(self.uri, self.run_id, tags)))

    def close_run(self, outcome: TrialOutcome) -> None:
        """Close the run after everything queued before; if MLflow cannot be reached within the
        budget the run stays RUNNING and the driver closes it from Optuna's record later."""
        if self.failure:
            return
        stamp = int(time.time() * 1000)
        self.submit(
            Write(
                "final metrics and status",
                lambda: tracking.close_run(self.uri, self.run_id, outcome, timestamp_ms=stamp),
            )
        )
        self.flush()

    def call(self, read: Callable[[], T], on_retry: Callable[[], None] = lambda: None) -> T:
        """A read the trial needs before it goes on, retried like a write (its error raised when
        the budget is spent)."""
        return retrying(read, self.budget_s, lambda exc: is_outage(exc, self.uri), self._stop, on_retry)

    # ---- state ----
    def catch_up(self) -> None:
        """While MLflow answers, wait until what is queued is sent (milliseconds): an epoch is then
        in MLflow before Optuna hears of it, so a worker killed right after loses nothing (its
        retry logs only what MLflow lacks). During an outage, return at once: training goes on."""
        with self._changed:
            self._changed.wait_for(
                lambda: not self._pending or self._retrying or self._stopped(), timeout=REQUEST_TIMEOUT_S + 1
            )

    def check(self) -> None:
        """Raise what stopped the sender: ``StoreUnavailable`` (the sweep stops, as for any store)
        or ``GaveUp`` (the trial fails: training on would only widen the run's gap)."""
        if self._store_error is not None:
            raise self._store_error
        if self.failure:
            raise GaveUp(self.failure)

    def flush(self) -> None:
        """Wait until every write is sent or the sender gave up; raise a store failure."""
        self._wait(timeout_s=None)
        if self._store_error is not None:
            raise self._store_error

    @property
    def failure(self) -> str:
        """Why the run misses writes ("" while nothing is lost): the trial's FAIL reason."""
        with self._changed:
            if not self._gave_up:
                return ""
            epochs = [w.epoch for w in self._unsent if w.epoch is not None]
            others = sorted({w.what for w in self._unsent if w.epoch is None})
            missing = ", ".join(([epoch_ranges(epochs)] if epochs else []) + others) or "nothing"
            return f"{self._gave_up}; {missing} not logged (last error: {self._last_error})"

    def _stopped(self) -> bool:
        return bool(self._gave_up) or self._store_error is not None

    def _wait(self, timeout_s: float | None) -> None:
        with self._changed:
            self._changed.wait_for(lambda: not self._pending or self._stopped(), timeout=timeout_s)

    # ---- the thread ----
    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._pending or self._stop.is_set())
                if not self._pending:
                    return
                write = self._pending[0]
            try:
                self.call(write.send, on_retry=self._away)
            except Exception as exc:
                if self._stop.is_set():
                    return
                self._give_up(exc)
                continue
            with self._changed:
                self._pending.popleft()
                self._retrying = False
                self._changed.notify_all()

    def _away(self) -> None:
        with self._changed:
            self._retrying = True
            self._changed.notify_all()

    def _give_up(self, exc: Exception) -> None:
        with self._changed:
            if is_outage(exc, self.uri):
                self._gave_up = f"MLflow tracking server unreachable for {self.budget_s:g} s"
                self._last_error = self._redacted(_cause(exc))
            else:
                self._store_error = StoreUnavailable(MLFLOW, self._redacted(first_line(exc)))
            self._unsent.extend(self._pending)
            self._pending.clear()
            self._changed.notify_all()

    def _redacted(self, text: str) -> str:
        """Errors quote the request URL, which may carry the server's credentials."""
        return credentials.redact(text, self.uri)
