"""The MLflow writes of a job's trial runs, off Tune's event loop: a background thread that
merges what waits for a run into one request, keeps each trial's order, rides out a tracking
server that goes away for a while, and says what it could not write."""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from functools import cached_property, partial
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tuning_platform._compat.mlflow import sql_store
from tuning_platform.tracking.batch import CREATE, FLUSH, LOG, STOP, UPDATE, Batch, counted_as
from tuning_platform.tracking.client import open_client
from tuning_platform.tracking.database import printable

logger = logging.getLogger(__name__)


class Clock:
    """The writer's time: `now` for its stalls, retries and flush bounds, `sleep` between
    retries. Tests give the writer one they move by hand, so waiting out a store that is away
    takes no real seconds and no test depends on how busy the machine is."""

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


# A tracking server that does not answer: how long one write may stall before the job says so,
# how long the writer keeps retrying a write, and how long the end of a job waits for the rest.
STALL_WARNING_S = 10.0
RETRY_FOR_S = 600.0
FINAL_FLUSH_TIMEOUT_S = 120.0
# A flush that lasts (a tracking server behind the trials of a large job) says every this many
# seconds how many writes are left, so the end of a job does not look hung.
FLUSH_PROGRESS_EVERY_S = 10.0
# Writes queued at most; past that Tune's event loop waits for the writer (memory stays bounded).
MAX_QUEUED_WRITES = 20000
# Seconds of requests that may wait, at the pace the writer has been sending them, while it is
# writing (it finished a write within WRITING_S): past that Tune's loop waits, about one request
# at a time. Trials that end faster than the store takes their records (10,000 trivial trials on
# SQLite: about 2,000 a minute against the writer's 1,500) otherwise leave a backlog that the end
# of the job waits out (60 s of a 6-minute job), and the MLflow UI falls that far behind. A store
# that does not answer finishes no write, so the queue rides out its absence as before, up to
# MAX_QUEUED_WRITES. Trials slower than the store do not wait: the backlog stays small.
MAX_BEHIND_S = 10.0
WRITING_S = 2.0
# The writer's pace: requests per second of its last this many rounds of writing. A round with a
# request retried or longer than WRITING_S (a store that was away) is not counted.
PACE_ROUNDS = 50
# MLflow errors that no retry mends: the request itself is wrong.
_PERMANENT_ERRORS = {
    "INVALID_PARAMETER_VALUE",
    "RESOURCE_DOES_NOT_EXIST",
    "RESOURCE_ALREADY_EXISTS",
    "INVALID_STATE",
    "BAD_REQUEST",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
}


def _may_pass(err: Exception) -> bool:
    """Whether a failed write may succeed if tried again: the store did not answer (a refused or
    dropped connection, a timeout, a database that is restarting) or answered with an error that
    is not about the request. A refused or malformed request, and any other exception (a bug
    such as a TypeError in a queued write), fails at once and is counted."""
    if isinstance(err, MlflowException):
        return err.error_code not in _PERMANENT_ERRORS
    if isinstance(err, OSError):  # ConnectionError, TimeoutError, requests' errors
        return True
    # SQLAlchemy's OperationalError: a database that does not answer (not imported unless in use).
    return type(err).__name__ == "OperationalError" and type(err).__module__.startswith("sqlalchemy")


class RunWriter:
    """The MLflow writes of a job's trial runs, done in order by a background thread (over HTTP
    with helpers, PARALLEL_WRITES trials side by side).

    Tune calls its callbacks on its event loop, between scheduling decisions, so a write done
    there (a SQLite commit, an HTTP round trip: 10-20 ms each) delays every trial's next step.
    Here a write is queued in microseconds. The thread lets writes gather for LINGER_S and
    merges what queued up: a run's params, waiting results and end tags become one
    `log_batch`, so a short trial costs a tracking server three requests (create, one batch,
    end), not one per epoch. Writes for one trial keep their order; `flush` returns once
    everything queued before it is written.

    A tracking server that goes away for a while loses nothing: MLflow's client retries a
    request with backoff, and a write that still fails is tried again, with backoff, for up to
    RETRY_FOR_S. While a write stalls longer than STALL_WARNING_S the job prints a `warning:`
    line, and a `note:` when the server answers again. The queue holds at most
    MAX_QUEUED_WRITES; a store that answers but is slower than the trials keeps them waiting
    once the requests waiting would take it MAX_BEHIND_S at its recent pace, so the backlog,
    and the end of the job's wait for it, stays about that long. The final flush waits while
    writes are being done, saying every FLUSH_PROGRESS_EVERY_S how many are left: a tracking
    server that takes its time (it was 36 s behind a 2,000-trial job of trivial trials on this
    2-core machine) loses nothing. It gives up once no write has been done for
    FINAL_FLUSH_TIMEOUT_S, and names what was not written.

    MLflow's own `log_batch(synchronous=False)` was not enough: creating and ending a run stay
    synchronous there, and a failed write is only logged. Here failures are counted and the
    job names them at its end.
    """

    def __init__(self, tracking_uri: str, clock: Clock | None = None):
        self.tracking_uri = tracking_uri
        self.clock = clock or Clock()
        self._queue: queue.Queue = queue.Queue(maxsize=MAX_QUEUED_WRITES)
        self._thread: threading.Thread | None = None
        self._client: MlflowClient | None = None
        # trial id -> run id. Only the thread reads and writes it once it runs.
        self.run_ids: dict[str, str] = {}
        self.failures: list[str] = []
        # Writes queued and not yet done, by number: (trial id, counted kind, kind). What a
        # bounded flush reports.
        self._unwritten: dict[int, tuple[str, str, str]] = {}
        self._numbers = itertools.count()
        self._lock = threading.Lock()
        self._written = threading.Condition(self._lock)  # notified as writes are done
        # The requests those writes make (a trial's waiting results merge into one), and the
        # writer's pace: how far behind the trials it is.
        self._requests_left = 0
        self._logs_left: dict[str, int] = {}  # trial id -> results (LOG writes) not yet done
        self._requests_done = 0
        self._stalls = 0  # requests retried, or longer than WRITING_S
        self._rounds: deque[tuple[int, float]] = deque(maxlen=PACE_ROUNDS)  # (requests, seconds)
        self._seconds_per_request = 0.0  # over those rounds; 0 before the first
        self._paced = False  # whether the job said that the trials wait for the writer
        # Set when a flush or stop is queued: the thread stops lingering and writes at once.
        self._hurry = threading.Event()
        self._busy: dict[int, float] = {}  # thread -> when its write in progress began
        self._stall_reported: float | None = None  # when the stall warning was printed
        self._wrote_at: float | None = None  # when a queued write was last done
        _OPEN_WRITERS.add(self)

    def create(self, trial_id: str, make: Callable[[MlflowClient], str]) -> None:
        """Queue `make(client) -> run id`: the trial's run is made (or found) in the thread."""
        self._put(trial_id, CREATE, make)

    def update(self, trial_id: str, change: Callable[[MlflowClient, str], None]) -> None:
        """Queue `change(client, run_id)` for the trial's run."""
        self._put(trial_id, UPDATE, change)

    def log(
        self,
        trial_id: str,
        metrics: Sequence[Metric] = (),
        tags: Sequence[RunTag] = (),
        params: Sequence[Param] = (),
    ) -> None:
        """Queue metrics, tags and params of the trial's run; what waits for one run is written together."""
        self._put(trial_id, LOG, (list(metrics), list(tags), list(params)))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is written, or until no write has been done for
        `timeout` seconds; whether it was all written."""
        if self._thread is None:
            return True
        done = threading.Event()
        started = self.clock.now()
        said = started
        self._put("", FLUSH, done)
        while not done.wait(timeout=1.0):
            self.report_stall()
            if not self._thread.is_alive():
                return False
            now = self.clock.now()
            wrote_at = self._wrote_at
            if timeout is not None and now - (started if wrote_at is None else max(started, wrote_at)) > timeout:
                return False
            if now - said >= FLUSH_PROGRESS_EVERY_S:
                said = now
                logger.info(
                    "note: writing the trial runs to MLflow (%s): %d writes left, %.0fs so far",
                    printable(self.tracking_uri),
                    self.writes_left(),
                    now - started,
                )
        self.report_stall()
        return True

    def writes_left(self) -> int:
        with self._lock:
            return len(self._unwritten)

    def close(self, timeout: float | None = None) -> bool:
        """Flush and stop the thread; a later write starts a new one. With `timeout`, gives up
        on a thread still waiting for the store then, and returns False."""
        if not self.flush(timeout):
            self._thread = None  # a daemon, stuck in a request: left to end with the process
            return False
        if self._thread is not None:
            self._put("", STOP, None)
            self._thread.join()
            self._thread = None
        return True

    def not_written(self) -> str:
        """What is still queued or in progress, for a user: `12 results of trials a, b; 2 run endings`."""
        with self._lock:
            outstanding = [(trial, counted) for trial, counted, _ in self._unwritten.values()]
        parts = []
        for kind, what in ((LOG, "results"), (CREATE, "run creations"), (UPDATE, "run updates")):
            trials = sorted({trial for trial, k in outstanding if k == kind})
            count = sum(k == kind for _, k in outstanding)
            if count:
                parts.append(f"{count} {what} of trials {', '.join(trials)}")
        return "; ".join(parts)

    def report_stall(self) -> None:
        """Say so when a write has waited for the store longer than STALL_WARNING_S, and when
        the store answers again. Called from Tune's loop (each queued write), from flush, and by
        the writer after a failed attempt and after each write; decided under the lock, so each
        is said once."""
        now = self.clock.now()
        with self._lock:
            busy_since = min(self._busy.values(), default=None)
            stalled = busy_since is not None and now - busy_since > STALL_WARNING_S
            warn = stalled and self._stall_reported is None
            answered = busy_since is None and self._stall_reported is not None
            reported_at = self._stall_reported
            if warn:
                self._stall_reported = now
            elif answered:
                self._stall_reported = None
        if warn:
            assert busy_since is not None
            logger.warning(
                "warning: the MLflow tracking store %s has not answered for %.0fs; trial results are kept "
                "and written when it answers (retried for up to %.0fs)",
                printable(self.tracking_uri),
                now - busy_since,
                RETRY_FOR_S,
            )
        elif answered:
            assert reported_at is not None
            logger.warning(
                "note: the MLflow tracking store answers again; writes resumed after %.0fs",
                now - reported_at + STALL_WARNING_S,
            )

    def _put(self, trial_id: str, kind: str, payload: Any) -> None:
        if self._thread is None and kind not in (FLUSH, STOP):
            self._thread = threading.Thread(target=self._run, name="mlflow-run-writer", daemon=True)
            self._thread.start()
        write = None
        if kind in (CREATE, UPDATE, LOG):
            self._keep_up()
            write = next(self._numbers)
            with self._lock:
                self._unwritten[write] = (trial_id, counted_as(kind, payload), kind)
                self._count_request(trial_id, kind, +1)
            self.report_stall()
        self._queue.put((trial_id, kind, payload, self.clock.now(), write))
        if kind in (FLUSH, STOP):
            self._hurry.set()

    def _keep_up(self) -> None:
        """Wait (on Tune's loop) while the requests not yet sent would take the writer more than
        MAX_BEHIND_S and it is writing: trials then end at the pace the store takes their records."""
        held = False
        with self._written:
            while self._behind() > MAX_BEHIND_S and self._writing():
                held = True
                self._written.wait(timeout=0.25)  # also sees the writer stop writing
            announce = held and not self._paced
            self._paced |= held
        if announce:
            logger.info(
                "note: trials end faster than MLflow (%s) takes their records; they wait for the "
                "writes once these are %gs behind",
                printable(self.tracking_uri),
                MAX_BEHIND_S,
            )

    def _count_request(self, trial_id: str, kind: str, change: int) -> None:
        """Keep `_requests_left` as the writes not yet done change (under the lock): a run made or
        changed is a request; a trial's waiting results are one, however many they are."""
        if kind == LOG:
            before = self._logs_left.get(trial_id, 0)
            after = before + change
            if after:
                self._logs_left[trial_id] = after
            else:
                del self._logs_left[trial_id]
            if before and after:  # merged with the trial's other waiting results
                return
        self._requests_left += change

    def _behind(self) -> float:
        """Seconds the requests not yet sent would take at the pace of the writer's recent rounds;
        0 before it has sent any (called under the lock)."""
        return self._requests_left * self._seconds_per_request

    def _writing(self) -> bool:
        """Whether the writer is getting writes done: it finished one within WRITING_S."""
        thread, wrote_at = self._thread, self._wrote_at
        alive = thread is not None and thread.is_alive()
        return alive and wrote_at is not None and self.clock.now() - wrote_at < WRITING_S

    def _done(self, writes: Iterable[int]) -> None:
        self._wrote_at = self.clock.now()
        with self._written:
            for write in writes:  # a job of 10,000 trials keeps no entry per finished trial
                trial_id, _, kind = self._unwritten.pop(write)
                self._count_request(trial_id, kind, -1)
            self._written.notify_all()

    def _run(self) -> None:
        while True:
            items = [self._queue.get()]
            _, first_kind, _, queued_at, _ = items[0]
            if first_kind not in (FLUSH, STOP):
                # Let the trials' next writes queue up and join these requests, for LINGER_S from
                # when the first was queued: a write that already waited that long behind slow
                # requests (a busy tracking server) goes at once. A flush cuts it short.
                self._hurry.wait(max(0.0, queued_at + LINGER_S - self.clock.now()))
            # Cleared before the queue is read: a flush queued after this is seen in this round
            # or ends the next round's wait.
            self._hurry.clear()
            while True:  # everything that queued up meanwhile
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            # Each trial's writes, in order; what was queued before a flush is done before it.
            pending: dict[str, Batch] = {}
            writes: dict[str, list[Callable[[], None]]] = {}
            for trial_id, kind, payload, _, write in items:
                if kind == LOG:
                    pending.setdefault(trial_id, Batch()).add(write, *payload)
                    continue
                if trial_id in pending:  # this trial's results first: its writes keep their order
                    writes.setdefault(trial_id, []).append(partial(self._write, trial_id, pending.pop(trial_id)))
                if kind in (CREATE, UPDATE):
                    writes.setdefault(trial_id, []).append(partial(self._change, trial_id, kind, payload, write))
                elif kind in (FLUSH, STOP):
                    self._do(writes, pending)
                    if kind == STOP:
                        return
                    payload.set()
            self._do(writes, pending)

    def _do(self, writes: dict[str, list[Callable[[], None]]], pending: dict[str, Batch]) -> None:
        """Every trial's writes in order, and then its waiting results; trials side by side on a
        tracking server (PARALLEL_WRITES at once), one after another on a SQL store."""
        started, sent_before, stalls_before = self.clock.now(), self._requests_done, self._stalls
        for trial_id, batch in pending.items():
            writes.setdefault(trial_id, []).append(partial(self._write, trial_id, batch))
        pending.clear()
        todo: queue.SimpleQueue = queue.SimpleQueue()
        for trial_writes in writes.values():
            todo.put(trial_writes)
        writes.clear()

        def drain() -> None:
            while True:
                try:
                    trial_writes = todo.get_nowait()
                except queue.Empty:
                    return
                for write in trial_writes:
                    write()

        # Daemon threads, as this one: a write stuck on a dead server must not hold up the exit.
        helpers = [
            threading.Thread(target=drain, name="mlflow-run-writer", daemon=True)
            for _ in range(min(self._side_by_side, todo.qsize()) - 1)
        ]
        for helper in helpers:
            helper.start()
        drain()
        for helper in helpers:
            helper.join()
        with self._lock:
            sent = self._requests_done - sent_before
            if sent and self._stalls == stalls_before:  # the pace, once a round, not on each queued write
                self._rounds.append((sent, self.clock.now() - started))
                requests = sum(count for count, _ in self._rounds)
                self._seconds_per_request = sum(took for _, took in self._rounds) / requests

    def _change(self, trial_id: str, kind: str, payload: Any, write: int) -> None:
        if kind == CREATE:
            self._attempt(self._create, trial_id, payload)
        elif trial_id in self.run_ids:  # else its run could not be made; that failure is counted already
            self._attempt(payload, self.client, self.run_ids[trial_id])
        self._done([write])

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = open_client(self.tracking_uri)
        return self._client

    @cached_property
    def _side_by_side(self) -> int:
        """Trials written at once: one on a SQL store (SQLite takes one writer), else several."""
        return 1 if sql_store(self.client) is not None else PARALLEL_WRITES

    def _create(self, trial_id: str, make: Callable[[MlflowClient], str]) -> None:
        self.run_ids[trial_id] = make(self.client)

    def _write(self, trial_id: str, batch: Batch) -> None:
        run_id = self.run_ids.get(trial_id)
        if run_id is not None:  # else its run could not be made; that failure is counted already
            for metrics, tags, params in batch.requests():
                self._attempt(self.client.log_batch, run_id, metrics=metrics, params=params, tags=tags)
        self._done(batch.writes)

    def _attempt(self, write: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """One write, retried with backoff while the store is unreachable (up to RETRY_FOR_S)."""
        started, thread = self.clock.now(), threading.get_ident()
        with self._lock:
            self._busy[thread] = started
        delay = 1.0
        try:
            while True:
                try:
                    write(*args, **kwargs)
                    if self.clock.now() - started > WRITING_S:  # MLflow's own retries, or a slow store
                        self._stalls += 1
                    return
                except Exception as err:  # noqa: BLE001 - the job goes on; `failures` names it at the end
                    if not _may_pass(err) or self.clock.now() - started > RETRY_FOR_S:
                        if not self.failures:
                            logger.warning("an MLflow write failed: %s: %s", type(err).__name__, err)
                        self.failures.append(f"{type(err).__name__}: {err}")
                        return
                    self._stalls += 1
                    self.report_stall()  # the writer itself knows first that the store is away
                    self.clock.sleep(delay)
                    delay = min(delay * 2, 30.0)
        finally:
            with self._lock:
                del self._busy[thread]
                self._requests_done += 1
            self.report_stall()


# Seconds the writer lets writes gather before it sends them: a trial's params, its first
# results and (for a trial this short) its end go in one request instead of one each, and a
# trial of 0.4 s epochs sends about one batch a second, not one per epoch. Each `log_batch` on
# a SQLite store costs the driver about 8 ms of CPU whatever its size (measured: a 5-epoch trial
# written one epoch per batch 40 ms, all in one 11 ms), taken from the trials on a small machine.
# A run in the UI is at most this far behind its trial; a flush does not wait for it.
LINGER_S = 1.0
# Trials whose writes go to a tracking server at once. One after another, the last second of a
# 60-trial job of short trials (30 requests of about 20 ms) took 0.7 s after its last trial, and
# the writer was busy for 7-8 s of the trials' 10 s. A SQL store gets one at a time: SQLite
# takes one writer, and the requests there are the driver's CPU, not a wait.
PARALLEL_WRITES = 4


# Writers of this process, so the job can flush them before reading its runs back. The Tune
# callback that owns one is out of the job's reach after `--resume` (Tune unpickles it).
_OPEN_WRITERS: weakref.WeakSet[RunWriter] = weakref.WeakSet()


def flush_run_writers(timeout: float | None = FINAL_FLUSH_TIMEOUT_S) -> None:
    for writer in list(_OPEN_WRITERS):
        if not writer.flush(timeout):
            logger.warning("warning: not written to MLflow: %s", writer.not_written() or "a write in progress")
