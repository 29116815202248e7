"""MLflow records of a job: one parent run, one nested child run per trial, the registered model.

Only the driver talks to MLflow (a Tune `Callback` runs in the driver), so workers on other
nodes never need to reach the tracking server and a SQLite store sees a single writer per job.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import queue
import sys
import tempfile
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path
from typing import Any

from filelock import FileLock
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_ENTITIES_PER_BATCH, MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH
from ray.tune import Callback

from tuning_platform.guard import DIVERGED_KEY, TUNE_RESULT_KEYS, is_diverged, missing_metric_error

logger = logging.getLogger(__name__)

PARENT_RUN_ID_TAG = "mlflow.parentRunId"
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
_MAX_PARAM_LENGTH = 6000
# Seconds a SQLite writer waits for another job's write to finish (sqlite3's default is 5).
SQLITE_BUSY_TIMEOUT_S = 60


def store_uri(tracking_uri: str) -> str:
    """The URI MLflow opens: a SQLite store gets a busy timeout, so two jobs writing to one file
    wait for each other instead of failing with "database is locked"."""
    if tracking_uri.startswith("sqlite:") and "?" not in tracking_uri:
        return f"{tracking_uri}?timeout={SQLITE_BUSY_TIMEOUT_S}"
    return tracking_uri


def ui_links(tracking_uri: str, experiment_id: str, run_id: str) -> tuple[str | None, str, str]:
    """The command that serves the MLflow UI (None for a tracking server, which serves it),
    and the links to the experiment's runs table and to one run.

    MLflow 3's UI remembers a GenAI / model-training switch per browser and opens a fresh
    browser on GenAI; `workflowType=machine_learning` in the link overrides it (its bundled
    JavaScript, the `mlflow.workflowType` local-storage key). `mlflow ui` serves on
    127.0.0.1:5000 unless told otherwise.
    """
    if tracking_uri.startswith(("http://", "https://")):
        command, base = None, tracking_uri.rstrip("/")
    else:
        command, base = f"mlflow ui --backend-store-uri {tracking_uri}", "http://127.0.0.1:5000"
    query = "?workflowType=machine_learning"
    experiment = f"{base}/#/experiments/{experiment_id}"
    return command, f"{experiment}/runs{query}", f"{experiment}/runs/{run_id}{query}"


def open_client(tracking_uri: str) -> MlflowClient:
    from tuning_platform.store_template import create_from_template

    create_from_template(tracking_uri)  # a new SQLite file: a copy, not MLflow's migrations
    return QuietEndClient(store_uri(tracking_uri))


class QuietEndClient(MlflowClient):
    """MLflow's client, less what its `set_terminated` adds over HTTP to ending a run: it reads
    the run back (`get_run`) to print "View run NAME at: URL" and "View experiment at: URL" to
    stdout (mlflow/tracking/_tracking_service/client.py, `set_terminated` line 788 and `_log_url`
    line 755, in 3.17). For a job that is a fourth request and two lines of output per trial:
    20,000 lines for 10,000 trials. The end is written as `set_terminated` then writes it, with
    the store's `update_run_info`; tests/test_tracking.py fails if that changes. The job's
    summary prints the links that matter."""

    def set_terminated(self, run_id: str, status: str | None = None, end_time: int | None = None) -> None:
        from mlflow.entities import RunStatus

        self._tracking_client.store.update_run_info(
            run_id,
            run_status=RunStatus.from_string(status or "FINISHED"),
            end_time=end_time or int(time.time() * 1000),
            run_name=None,
        )


def first_use_lock(tracking_uri: str) -> FileLock:
    """Held while a job opens the store and creates its experiment.

    MLflow creates the tables of a fresh SQLite file without a lock, and two jobs creating one
    experiment race on its unique name; the lock (in the temp folder, keyed by the URI) makes
    the second job wait and find what the first made.
    """
    digest = hashlib.md5(tracking_uri.encode(), usedforsecurity=False).hexdigest()
    return FileLock(f"{tempfile.gettempdir()}/tuning-platform-store-{digest}.lock")


def finished_status(last_result: dict[str, Any], metric: str, max_t: int | None) -> str:
    """How a trial that ended without an exception ended: `diverged`, `failed` (it never
    reported the metric), `early_stopped` (ASHA cut it before max_t) or `completed`."""
    if last_result.get(DIVERGED_KEY):
        return "diverged"
    if metric not in last_result:
        return "failed"
    return "completed" if max_t is None or _step(last_result) >= max_t else "early_stopped"


def trial_params(config: dict[str, Any]) -> dict[str, str]:
    """A trial's hyperparameters as MLflow params (the data block is the parent run's)."""
    return {key: str(value)[:_MAX_PARAM_LENGTH] for key, value in config.items() if key != "data"}


def result_metrics(result: dict[str, Any]) -> dict[str, float]:
    return {
        key: float(value)
        for key, value in result.items()
        if key not in TUNE_RESULT_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def child_runs(client: MlflowClient, experiment_id: str, parent_run_id: str, status: str | None = None) -> list[Any]:
    """The trial runs of one job; with `status`, only those in it (the store filters, so a job
    of 10,000 finished trials does not read them all to find the few still RUNNING)."""
    where = f"tags.`{PARENT_RUN_ID_TAG}` = '{parent_run_id}'"
    if status is not None:
        where += f" and attributes.status = '{status}'"
    return client.search_runs([experiment_id], filter_string=where, max_results=50000)


def search_trial_runs(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list[Any]:
    """The runs of one job's search trials: its trial runs, less the reseeded runs of `selection`."""
    return [run for run in child_runs(client, experiment_id, parent_run_id) if _is_search_trial(run.data.tags)]


def _is_search_trial(tags: dict[str, str]) -> bool:
    """A child run made for a trial of the search (not a reseeded run of `selection`)."""
    return "trial_id" in tags and tags.get("trial_status") != RESEED


@dataclass(frozen=True)
class TrialRunRecord:
    """What a job's study reads of one trial run."""

    run_id: str
    start_ms: int
    end_ms: int | None
    tags: dict[str, str]
    params: dict[str, str]


def trial_run_records(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list[TrialRunRecord]:
    """The runs of one job's search trials, as `search_trial_runs` finds them, read lean.

    `search_runs` builds an object per run, tag, param and latest metric: 5 s for the 10,000
    runs of a large job here. On a SQL store this reads the same rows as plain tuples, in three
    queries (runs, tags, params) through the store's own sessions. The tables are MLflow's
    (mlflow/store/tracking/dbmodels/models.py: `SqlRun` line 250, `SqlTag` 420, `SqlParam` 576
    in 3.17) and the session maker is `SqlAlchemyStore.ManagedSessionMaker`
    (sqlalchemy_store.py, line 416); tests/test_tracking.py fails if they change. Any other
    store (a tracking server) is read through `search_runs`.
    """
    store = _sql_store(client)
    if store is None:
        return [
            TrialRunRecord(
                run.info.run_id, run.info.start_time or 0, run.info.end_time, dict(run.data.tags), dict(run.data.params)
            )
            for run in search_trial_runs(client, experiment_id, parent_run_id)
        ]
    from mlflow.entities import LifecycleStage
    from mlflow.store.tracking.dbmodels.models import SqlParam, SqlRun, SqlTag
    from sqlalchemy import select

    children = select(SqlTag.run_uuid).where(SqlTag.key == PARENT_RUN_ID_TAG, SqlTag.value == parent_run_id)
    with store.ManagedSessionMaker() as session:
        runs = session.execute(
            select(SqlRun.run_uuid, SqlRun.start_time, SqlRun.end_time).where(
                SqlRun.experiment_id == int(experiment_id),
                SqlRun.lifecycle_stage == LifecycleStage.ACTIVE,
                SqlRun.run_uuid.in_(children),
            )
        ).all()
        tags: dict[str, dict[str, str]] = {run_id: {} for run_id, _, _ in runs}
        params: dict[str, dict[str, str]] = {run_id: {} for run_id, _, _ in runs}
        for table, found in ((SqlTag, tags), (SqlParam, params)):
            rows = session.execute(select(table.run_uuid, table.key, table.value).where(table.run_uuid.in_(children)))
            for run_id, key, value in rows:
                if run_id in found:
                    found[run_id][key] = value
    return [
        TrialRunRecord(run_id, start or 0, end, tags[run_id], params[run_id])
        for run_id, start, end in runs
        if _is_search_trial(tags[run_id])
    ]


def _store(client: MlflowClient) -> Any:
    """The store behind MLflow's client (`MlflowClient._tracking_client.store`), which the
    public client does not expose: a SQL store, or a tracking server's `RestStore`."""
    return getattr(getattr(client, "_tracking_client", None), "store", None)


def _sql_store(client: MlflowClient) -> Any:
    """The client's store when it is MLflow's SQL store (SQLite or a database), else None."""
    store = _store(client)
    # Not imported unless some client uses a SQL store, and then never needed here.
    module = sys.modules.get("mlflow.store.tracking.sqlalchemy_store")
    return store if module is not None and isinstance(store, module.SqlAlchemyStore) else None


# Run ids per bulk query of metric histories; far below SQLite's limit of bound parameters.
HISTORY_CHUNK = 500
# Metric histories read at once from a tracking server without the bulk read below.
HISTORY_READERS = 8
# A tracking server's bulk read of metric histories: the MLflow UI's own route for its charts,
# served by `mlflow server` (mlflow/server/__init__.py line 129, `get_metric_history_bulk_handler`
# in mlflow/server/handlers.py line 2384, in 3.17): up to 100 runs and 25,000 values a request,
# one SQL query on the server. 60 runs read in 0.02-0.04 s here, against 0.5-0.8 s one run per
# call. The REST API documents only `get-history-bulk-interval`, which samples long histories
# and reads run by run on the server (0.3 s for the same 60). A server without the route is read
# one run per call; tests/test_mlflow_server.py fails if the route changes.
BULK_HISTORY_PATH = "/ajax-api/2.0/mlflow/metrics/get-history-bulk"
BULK_HISTORY_RUNS, BULK_HISTORY_VALUES = 100, 25_000


def metric_histories(client: MlflowClient, run_ids: list[str], metric: str) -> dict[str, list[Any]]:
    """Every logged value of `metric` for each run: in one query per HISTORY_CHUNK runs on a SQL
    store, one request per BULK_HISTORY_RUNS runs from a tracking server (a job of 10,000 trials
    reads its study in seconds, not one round trip per trial), one call per run otherwise.

    The SQL bulk read is MLflow's `SqlAlchemyStore.get_metric_history_bulk`
    (mlflow/store/tracking/sqlalchemy_store.py, line 1747 in 3.17), which the public client does
    not expose; tests/test_tracking.py fails if it disappears.
    """
    store = _store(client)
    bulk = getattr(store, "get_metric_history_bulk", None)
    histories: dict[str, list[Any]] = {run_id: [] for run_id in run_ids}
    if bulk is None:
        found = _server_histories(client, run_ids, metric)
        histories.update(found if found is not None else _histories_per_run(client, run_ids, metric))
        return histories
    for start in range(0, len(run_ids), HISTORY_CHUNK):
        chunk = run_ids[start : start + HISTORY_CHUNK]
        for row in bulk(chunk, metric, max_results=2**31 - 1):
            histories[row.run_id].append(row)  # a Metric with its run_id
    return histories


def _histories_per_run(client: MlflowClient, run_ids: list[str], metric: str) -> dict[str, list[Any]]:
    """One call per run, HISTORY_READERS at a time: each is mostly a wait for the server."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(HISTORY_READERS, thread_name_prefix="mlflow-history") as readers:
        found = readers.map(lambda run_id: list(client.get_metric_history(run_id, metric)), run_ids)
        return dict(zip(run_ids, found, strict=True))


def _server_histories(client: MlflowClient, run_ids: list[str], metric: str) -> dict[str, list[Any]] | None:
    """The histories from a tracking server's bulk read (BULK_HISTORY_PATH); None when the store
    is not a tracking server. Runs the route does not answer (a server without it, or one that
    refuses it) are read one per call, which reports a real problem (no access, no such run) as
    MLflow's client does; so are the runs of a request that may have been cut at
    BULK_HISTORY_VALUES values."""
    store = _store(client)
    host_creds = getattr(store, "get_host_creds", None)  # a RestStore's, with the user's auth
    if host_creds is None:
        return None
    from mlflow.entities import Metric
    from mlflow.utils.rest_utils import http_request

    histories: dict[str, list[Any]] = {}
    for start in range(0, len(run_ids), BULK_HISTORY_RUNS):
        chunk = run_ids[start : start + BULK_HISTORY_RUNS]
        response = http_request(
            host_creds(),
            BULK_HISTORY_PATH,
            "GET",
            params={"run_id": chunk, "metric_key": metric, "max_results": BULK_HISTORY_VALUES},
        )
        try:
            values = response.json().get("metrics", []) if response.status_code == 200 else None
        except ValueError:  # a 200 that is not MLflow's JSON: a proxy's page, say
            values = None
        if values is None:
            histories.update(_histories_per_run(client, run_ids[start:], metric))
            break
        if len(values) >= BULK_HISTORY_VALUES:  # maybe cut: these runs have long histories
            histories.update(_histories_per_run(client, chunk, metric))
            continue
        histories.update({run_id: [] for run_id in chunk})
        for value in values:
            histories[value["run_id"]].append(Metric(metric, value["value"], value["timestamp"], value["step"]))
    return histories


class JobTracker:
    """The parent run of one tuning job and everything logged around it."""

    def __init__(self, tracking_uri: str, experiment_name: str):
        self.tracking_uri = tracking_uri
        self._client: MlflowClient | None = None
        self.experiment_name = experiment_name
        self.experiment_id = ""
        self.parent_run_id = ""

    @property
    def client(self) -> MlflowClient:
        # Made on first use: opening a SQLite store creates the file, and nothing may be
        # written before the job really starts.
        if self._client is None:
            self._client = open_client(self.tracking_uri)
        return self._client

    def start(self, run_name: str, tags: dict[str, str], params: dict[str, str], artifacts: dict[str, str]) -> str:
        with first_use_lock(self.tracking_uri):
            experiment = self.client.get_experiment_by_name(self.experiment_name)
            if experiment is None:
                self.experiment_id = self.client.create_experiment(self.experiment_name)
            else:
                self.experiment_id = experiment.experiment_id
        # MLflow 3's UI opens an experiment of this kind on its runs table, not on GenAI traces.
        self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.parent_run_id = run.info.run_id
        self.client.log_batch(
            self.parent_run_id, params=[Param(k, str(v)[:_MAX_PARAM_LENGTH]) for k, v in params.items()]
        )
        for artifact_file, text in artifacts.items():
            self.client.log_text(self.parent_run_id, text, artifact_file)
        return self.parent_run_id

    def reattach(self, parent_run_id: str, tags: dict[str, str]) -> None:
        """Continue an unfinished job's parent run (`--resume`): RUNNING again, never a new one."""
        run = self.client.get_run(parent_run_id)
        self.parent_run_id = parent_run_id
        self.experiment_id = run.info.experiment_id
        self.client.update_run(parent_run_id, status="RUNNING")
        self.client.log_batch(parent_run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def trial_callback(
        self,
        metric: str,
        max_t: int | None,
        ray_run: str = "",
        shown_params: tuple[str, ...] = (),
        reseed: dict[str, str] | None = None,
    ) -> TrialRunsCallback:
        return TrialRunsCallback(
            self.tracking_uri, self.experiment_id, self.parent_run_id, metric, max_t, ray_run, shown_params, reseed
        )

    def close_trial_runs(self, statuses: dict[str, str], errors: dict[str, str] | None = None) -> None:
        """Every child run still RUNNING gets its trial's final status.

        The Tune callback does this as trials end; what it could not (the driver was killed
        between a trial's end and its record, or Ctrl-C stopped trials mid-epoch) is settled
        here. A trial Tune no longer knows of (started after Ray's last saved state) and a
        trial an interruption left unfinished are KILLED with `trial_status=interrupted`.
        """
        errors = errors or {}
        flush_run_writers()  # the trial callback's writes still queued
        for run in child_runs(self.client, self.experiment_id, self.parent_run_id, status="RUNNING"):
            trial_id = run.data.tags.get("trial_id", "")
            status = statuses.get(trial_id, "interrupted")
            # A reseeded run of `selection` keeps its status and says how it ended beside it.
            reseeded = run.data.tags.get("trial_status") == RESEED
            tags = [RunTag("outcome" if reseeded else "trial_status", status)]
            if trial_id in errors:
                tags.append(RunTag("error", errors[trial_id][:500]))
            end_run(self.client, run.info.run_id, tags, RUN_STATUS[status])

    def log_to_parent(
        self,
        metrics: dict[str, float] | None = None,
        params: dict[str, str] | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        metrics, params, tags = metrics or {}, params or {}, tags or {}
        now = int(time.time() * 1000)
        self.client.log_batch(
            self.parent_run_id,
            metrics=[Metric(k, v, now, 0) for k, v in metrics.items() if v is not None and math.isfinite(v)],
            params=[Param(k, str(v)[:_MAX_PARAM_LENGTH]) for k, v in params.items()],
            tags=[RunTag(k, str(v)) for k, v in tags.items()],
        )

    def log_bytes(self, content: bytes, artifact_file: str) -> None:
        """A file (a picture) on the parent run, at `artifact_file` (`folder/name.png`)."""
        folder, _, name = artifact_file.rpartition("/")
        with tempfile.TemporaryDirectory() as tmp:
            path = f"{tmp}/{name}"
            with open(path, "wb") as handle:
                handle.write(content)
            self.client.log_artifact(self.parent_run_id, path, artifact_path=folder or None)

    def finish(self, status: str, error: str | None = None) -> None:
        """status: FINISHED, FAILED or KILLED; a failed job says why in its `error` tag."""
        if error:
            self.client.set_tag(self.parent_run_id, "error", error[:500])
        self.client.set_terminated(self.parent_run_id, status)

    @contextmanager
    def closed_on_error(self) -> Iterator[None]:
        """The parent run's end when the job does not reach its own: KILLED on Ctrl-C or
        SIGTERM (a second one: Tune stopped without saving its last state), FAILED with the
        error on anything else; the trial runs still RUNNING get the same."""
        try:
            yield
        except KeyboardInterrupt:
            self.close_trial_runs({})
            self.finish("KILLED")
            raise
        except BaseException as err:
            self.close_trial_runs({})
            self.finish("FAILED", error=f"{type(err).__name__}: {err}")
            raise


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
    MAX_QUEUED_WRITES. The final flush waits while writes are being done, saying every
    FLUSH_PROGRESS_EVERY_S how many are left: a tracking server that takes its time (it was 36 s
    behind a 2,000-trial job of trivial trials on this 2-core machine) loses nothing. It gives up
    once no write has been done for FINAL_FLUSH_TIMEOUT_S, and names what was not written.

    MLflow's own `log_batch(synchronous=False)` was not enough: creating and ending a run stay
    synchronous there, and a failed write is only logged. Here failures are counted and the
    job names them at its end.
    """

    def __init__(self, tracking_uri: str):
        self.tracking_uri = tracking_uri
        self._queue: queue.Queue = queue.Queue(maxsize=MAX_QUEUED_WRITES)
        self._thread: threading.Thread | None = None
        self._client: MlflowClient | None = None
        # trial id -> run id. Only the thread reads and writes it once it runs.
        self.run_ids: dict[str, str] = {}
        self.failures: list[str] = []
        # Writes queued and not yet done, by (trial id, kind): what a bounded flush reports.
        self._outstanding: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        # Set when a flush or stop is queued: the thread stops lingering and writes at once.
        self._hurry = threading.Event()
        self._busy: dict[int, float] = {}  # thread -> when its write in progress began
        self._stall_reported: float | None = None  # when the stall warning was printed
        self._wrote_at = time.monotonic()  # when a queued write was last done
        _OPEN_WRITERS.add(self)

    def create(self, trial_id: str, make: Callable[[MlflowClient], str]) -> None:
        """Queue `make(client) -> run id`: the trial's run is made (or found) in the thread."""
        self._put(trial_id, _CREATE, make)

    def update(self, trial_id: str, change: Callable[[MlflowClient, str], None]) -> None:
        """Queue `change(client, run_id)` for the trial's run."""
        self._put(trial_id, _UPDATE, change)

    def log(
        self,
        trial_id: str,
        metrics: Sequence[Metric] = (),
        tags: Sequence[RunTag] = (),
        params: Sequence[Param] = (),
    ) -> None:
        """Queue metrics, tags and params of the trial's run; what waits for one run is written together."""
        self._put(trial_id, _LOG, (list(metrics), list(tags), list(params)))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is written, or until no write has been done for
        `timeout` seconds; whether it was all written."""
        if self._thread is None:
            return True
        done = threading.Event()
        started = time.monotonic()
        said = started
        self._put("", _FLUSH, done)
        while not done.wait(timeout=1.0):
            self.report_stall()
            if not self._thread.is_alive():
                return False
            now = time.monotonic()
            if timeout is not None and now - max(started, self._wrote_at) > timeout:
                return False
            if now - said >= FLUSH_PROGRESS_EVERY_S:
                said = now
                logger.info(
                    "note: writing the trial runs to MLflow (%s): %d writes left, %.0fs so far",
                    self.tracking_uri,
                    self.writes_left(),
                    now - started,
                )
        self.report_stall()
        return True

    def writes_left(self) -> int:
        with self._lock:
            return sum(count for count in self._outstanding.values() if count > 0)

    def close(self, timeout: float | None = None) -> bool:
        """Flush and stop the thread; a later write starts a new one. With `timeout`, gives up
        on a thread still waiting for the store then, and returns False."""
        if not self.flush(timeout):
            self._thread = None  # a daemon, stuck in a request: left to end with the process
            return False
        if self._thread is not None:
            self._put("", _STOP, None)
            self._thread.join()
            self._thread = None
        return True

    def not_written(self) -> str:
        """What is still queued or in progress, for a user: `12 results of trials a, b; 2 run endings`."""
        with self._lock:
            outstanding = {key: count for key, count in self._outstanding.items() if count > 0}
        parts = []
        for kind, what in ((_LOG, "results"), (_CREATE, "run creations"), (_UPDATE, "run updates")):
            trials = sorted({trial for (trial, k) in outstanding if k == kind})
            count = sum(n for (_, k), n in outstanding.items() if k == kind)
            if count:
                parts.append(f"{count} {what} of trials {', '.join(trials)}")
        return "; ".join(parts)

    def report_stall(self) -> None:
        """Say so when a write has waited for the store longer than STALL_WARNING_S, and when
        the store answers again. Called from Tune's loop (each queued write) and from flush."""
        with self._lock:
            busy_since = min(self._busy.values(), default=None)
        now = time.monotonic()
        if busy_since is not None and now - busy_since > STALL_WARNING_S and self._stall_reported is None:
            self._stall_reported = now
            logger.warning(
                "warning: the MLflow tracking store %s has not answered for %.0fs; trial results are kept "
                "and written when it answers (retried for up to %.0fs)",
                self.tracking_uri,
                now - busy_since,
                RETRY_FOR_S,
            )
        elif busy_since is None and self._stall_reported is not None:
            logger.warning(
                "note: the MLflow tracking store answers again; writes resumed after %.0fs",
                now - self._stall_reported + STALL_WARNING_S,
            )
            self._stall_reported = None

    def _put(self, trial_id: str, kind: str, payload: Any) -> None:
        if self._thread is None and kind not in (_FLUSH, _STOP):
            self._thread = threading.Thread(target=self._run, name="mlflow-run-writer", daemon=True)
            self._thread.start()
        if kind in (_CREATE, _UPDATE, _LOG):
            counted = _counted_as(kind, payload)
            with self._lock:
                self._outstanding[(trial_id, counted)] = self._outstanding.get((trial_id, counted), 0) + 1
            self.report_stall()
        self._queue.put((trial_id, kind, payload, time.monotonic()))
        if kind in (_FLUSH, _STOP):
            self._hurry.set()

    def _done(self, trial_id: str, kind: str, count: int = 1) -> None:
        self._wrote_at = time.monotonic()
        with self._lock:
            left = self._outstanding.get((trial_id, kind), 0) - count
            if left:
                self._outstanding[(trial_id, kind)] = left
            else:  # a job of 10,000 trials keeps no entry per finished trial
                self._outstanding.pop((trial_id, kind), None)

    def _run(self) -> None:
        while True:
            items = [self._queue.get()]
            _, first_kind, _, queued_at = items[0]
            if first_kind not in (_FLUSH, _STOP):
                # Let the trials' next writes queue up and join these requests, for LINGER_S from
                # when the first was queued: a write that already waited that long behind slow
                # requests (a busy tracking server) goes at once. A flush cuts it short.
                self._hurry.wait(max(0.0, queued_at + LINGER_S - time.monotonic()))
            # Cleared before the queue is read: a flush queued after this is seen in this round
            # or ends the next round's wait.
            self._hurry.clear()
            while True:  # everything that queued up meanwhile
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            # Each trial's writes, in order; what was queued before a flush is done before it.
            pending: dict[str, _Batch] = {}
            writes: dict[str, list[Callable[[], None]]] = {}
            for trial_id, kind, payload, _ in items:
                if kind == _LOG:
                    pending.setdefault(trial_id, _Batch()).add(*payload)
                    continue
                if trial_id in pending:  # this trial's results first: its writes keep their order
                    writes.setdefault(trial_id, []).append(partial(self._write, trial_id, pending.pop(trial_id)))
                if kind in (_CREATE, _UPDATE):
                    writes.setdefault(trial_id, []).append(partial(self._change, trial_id, kind, payload))
                elif kind in (_FLUSH, _STOP):
                    self._do(writes, pending)
                    if kind == _STOP:
                        return
                    payload.set()
            self._do(writes, pending)

    def _do(self, writes: dict[str, list[Callable[[], None]]], pending: dict[str, _Batch]) -> None:
        """Every trial's writes in order, and then its waiting results; trials side by side on a
        tracking server (PARALLEL_WRITES at once), one after another on a SQL store."""
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

    def _change(self, trial_id: str, kind: str, payload: Any) -> None:
        if kind == _CREATE:
            self._attempt(self._create, trial_id, payload)
        elif trial_id in self.run_ids:  # else its run could not be made; that failure is counted already
            self._attempt(payload, self.client, self.run_ids[trial_id])
        self._done(trial_id, kind)

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = open_client(self.tracking_uri)
        return self._client

    @cached_property
    def _side_by_side(self) -> int:
        """Trials written at once: one on a SQL store (SQLite takes one writer), else several."""
        return 1 if _sql_store(self.client) is not None else PARALLEL_WRITES

    def _create(self, trial_id: str, make: Callable[[MlflowClient], str]) -> None:
        self.run_ids[trial_id] = make(self.client)

    def _write(self, trial_id: str, batch: _Batch) -> None:
        run_id = self.run_ids.get(trial_id)
        if run_id is not None:  # else its run could not be made; that failure is counted already
            for metrics, tags, params in batch.requests():
                self._attempt(self.client.log_batch, run_id, metrics=metrics, params=params, tags=tags)
        for kind, count in batch.counts.items():
            self._done(trial_id, kind, count)

    def _attempt(self, write: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """One write, retried with backoff while the store is unreachable (up to RETRY_FOR_S)."""
        started, thread = time.monotonic(), threading.get_ident()
        with self._lock:
            self._busy[thread] = started
        delay = 1.0
        try:
            while True:
                try:
                    write(*args, **kwargs)
                    return
                except Exception as err:  # noqa: BLE001 - the job goes on; `failures` names it at the end
                    permanent = isinstance(err, MlflowException) and err.error_code in _PERMANENT_ERRORS
                    if permanent or time.monotonic() - started > RETRY_FOR_S:
                        if not self.failures:
                            logger.warning("an MLflow write failed: %s: %s", type(err).__name__, err)
                        self.failures.append(f"{type(err).__name__}: {err}")
                        return
                    time.sleep(delay)
                    delay = min(delay * 2, 30.0)
        finally:
            with self._lock:
                del self._busy[thread]


_CREATE, _UPDATE, _LOG, _FLUSH, _STOP = "create", "update", "log", "flush", "stop"
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


def _counted_as(kind: str, payload: Any) -> str:
    """The kind a queued write counts as in `not_written`: a log without metrics (a run's
    params or end tags) is a run update, not a result."""
    return _UPDATE if kind == _LOG and not payload[0] else kind


class _Batch:
    """What waits to be written to one run, and how many queued writes of each counted kind it merges."""

    def __init__(self) -> None:
        self.metrics: list[Metric] = []
        self.tags: list[RunTag] = []
        self.params: list[Param] = []
        self.counts: Counter[str] = Counter()

    def add(self, metrics: list[Metric], tags: list[RunTag], params: list[Param]) -> None:
        self.metrics += metrics
        self.tags += tags
        self.params += params
        self.counts[_counted_as(_LOG, (metrics, tags, params))] += 1

    def requests(self) -> Iterator[tuple[list[Metric], list[RunTag], list[Param]]]:
        """The batch cut to MLflow's limits per `log_batch`: at most 100 params and tags
        together, 1000 entities in all (mlflow/utils/validation.py). Always one request, even
        an empty one, so a run's order of writes is the order they were queued in."""
        metrics, tags, params = self.metrics, self.tags, self.params
        while True:
            request_params = params[:MAX_PARAMS_TAGS_PER_BATCH]
            request_tags = tags[: MAX_PARAMS_TAGS_PER_BATCH - len(request_params)]
            room = MAX_ENTITIES_PER_BATCH - len(request_params) - len(request_tags)
            request_metrics = metrics[: min(room, MAX_METRICS_PER_BATCH)]
            params, tags = params[len(request_params) :], tags[len(request_tags) :]
            metrics = metrics[len(request_metrics) :]
            yield request_metrics, request_tags, request_params
            if not (metrics or tags or params):
                return


# Writers of this process, so the job can flush them before reading its runs back. The Tune
# callback that owns one is out of the job's reach after `--resume` (Tune unpickles it).
_OPEN_WRITERS: weakref.WeakSet[RunWriter] = weakref.WeakSet()


def flush_run_writers(timeout: float | None = FINAL_FLUSH_TIMEOUT_S) -> None:
    for writer in list(_OPEN_WRITERS):
        if not writer.flush(timeout):
            logger.warning("warning: not written to MLflow: %s", writer.not_written() or "a write in progress")


class TrialRunsCallback(Callback):
    """Writes each trial as a child run: params at start, its results, its end status.

    The writes go through a `RunWriter`, off Tune's event loop; `on_experiment_end` (the end of
    `fit`, also after Ctrl-C) waits for them. The callback is pickled into Tune's saved run
    config and comes back with `--resume`, so it keeps only the tracking URI and ids.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str,
        parent_run_id: str,
        metric: str,
        max_t: int | None,
        ray_run: str = "",
        shown_params: tuple[str, ...] = (),
        reseed: dict[str, str] | None = None,
    ):
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.metric = metric
        self.max_t = max_t
        # The Ray run the trials belong to (an extended job has several under one parent run).
        self.ray_run = ray_run
        # Searched parameters shown in a trial run's name, in the spec's order.
        self.shown_params = tuple(shown_params)
        # Reseeded runs of `selection` (trial_status=reseed): their config key -> source trial.
        self.reseed = dict(reseed or {})
        self._writer: RunWriter | None = None
        # Trial runs of this parent so far: the next one is numbered after them.
        self._numbered = 0
        # Trials that have a child run (made by this callback, or by the job it resumes).
        self._known: set[str] = set()
        # The last step already logged per trial, for child runs of a resumed job: a trial
        # resumed from an earlier checkpoint repeats epochs MLflow already has.
        self._logged_until: dict[str, int] = {}
        # And when MLflow has its last one (ms): epochs written later never go before it.
        self._logged_at: dict[str, int] = {}
        self._placed: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        return {
            **self.__dict__,
            "_writer": None,
            "_known": set(),
            "_logged_until": {},
            "_logged_at": {},
            "_placed": set(),
            "_numbered": 0,
        }

    @property
    def writer(self) -> RunWriter:
        if self._writer is None:
            self._writer = RunWriter(self.tracking_uri)
        return self._writer

    def setup(self, **info: Any) -> None:
        # Child runs already made for this parent (a resumed job) are reused, never duplicated.
        client = self.writer.client  # the thread has not started yet
        existing = child_runs(client, self.experiment_id, self.parent_run_id)
        self._numbered = len(existing)
        histories = metric_histories(client, [run.info.run_id for run in existing], self.metric)
        for run in existing:
            trial_id = run.data.tags.get("trial_id")
            if trial_id:
                self.writer.run_ids[trial_id] = run.info.run_id
                self._known.add(trial_id)
                # Finished runs too: after a kill, the state Ray saved last can be older than the
                # trial's end, and then the trial runs its last epochs again.
                history = histories[run.info.run_id]
                self._logged_until[trial_id] = max((m.step for m in history), default=0)
                self._logged_at[trial_id] = max((m.timestamp for m in history), default=0)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.trial_id in self._known:  # resumed or retried: the same child run goes on
            self.writer.update(trial.trial_id, _mark_running)
            return
        self._known.add(trial.trial_id)
        self._numbered += 1
        experiment_id, trial_id = self.experiment_id, trial.trial_id
        run_name = trial_run_name(self._numbered, trial.config, self.shown_params)
        tags = {PARENT_RUN_ID_TAG: self.parent_run_id, "trial_id": trial_id, "trial_status": "running"}
        if self.ray_run:
            tags[RAY_RUN_TAG] = self.ray_run
        if self.reseed:
            source = self.reseed.get(config_key(trial.config, self.shown_params), "")
            tags.update({"trial_status": RESEED, RESEED_OF_TAG: source})
            run_name = f"{run_name} seed={trial.config.get('seed')} (reseed of {source})"
        params = [Param(k, v) for k, v in trial_params(trial.config).items()]
        # The run's clock is the trial's, not the writer's, which sends it up to LINGER_S later
        # (or after a tracking server's outage).
        started_ms = int(time.time() * 1000)
        tries: list[int] = []
        this_run = f"tags.trial_id = '{trial_id}' and tags.`{PARENT_RUN_ID_TAG}` = '{self.parent_run_id}'"

        def make(client: MlflowClient) -> str:
            if tries:  # a retry: the store may have made the run before it stopped answering
                made = client.search_runs([experiment_id], filter_string=this_run)
                if made:
                    return made[0].info.run_id
            tries.append(1)
            return client.create_run(experiment_id, start_time=started_ms, run_name=run_name, tags=tags).info.run_id

        self.writer.create(trial_id, make)
        self.writer.log(trial_id, params=params)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if trial.trial_id not in self._known:
            return
        step = _step(result)
        if trial.trial_id in self._logged_until:  # a trial of the job this one resumes
            logged = self._logged_until[trial.trial_id]
            if step <= logged:
                return
            if step > logged + 1:
                self._log_missed(trial, logged, step)
            self._logged_until[trial.trial_id] = step
        # When the driver got it, in ms: Tune's own `timestamp` is whole seconds.
        self._log_result(trial, result, step, int(time.time() * 1000))

    def _log_missed(self, trial: Any, logged: int, step: int) -> None:
        """The epochs between the last one MLflow has and the first of a resumed trial: results
        the killed driver had from the trial but had not yet written (its writer lets writes
        gather for LINGER_S), while Ray had saved the checkpoint after them, so they never come
        again. Ray's own record of every result, the trial's `result.json` (flushed per result by
        Tune's JSON logger, restored from storage when the trial starts again), has them."""
        from ray.tune.result import EXPR_RESULT_FILE

        missed: dict[int, dict[str, Any]] = {}
        try:
            lines = (Path(trial.local_path) / EXPR_RESULT_FILE).read_text().splitlines()
        except (AttributeError, OSError):
            lines = []
        for line in lines:
            try:
                result = json.loads(line)
            except ValueError:  # a line the kill cut short
                continue
            epoch = _step(result) if isinstance(result, dict) else 0
            if logged < epoch < step:
                missed[epoch] = result  # the last report of an epoch is the one kept
        # Ray's `timestamp` is whole seconds, so an epoch read here can seem older than the one
        # before it, which the killed driver wrote with its millisecond clock; MLflow orders a
        # metric's history by time, so each is kept after the last one MLflow has.
        after = self._logged_at.get(trial.trial_id, 0)
        for epoch in sorted(missed):
            result = missed[epoch]
            after = max(int(float(result.get("timestamp", time.time())) * 1000), after + 1)
            self._log_result(trial, result, epoch, after)

    def _log_result(self, trial: Any, result: dict, step: int, timestamp: int) -> None:
        metrics = result_metrics(result)
        if is_diverged(result, self.metric):
            # The search was told the worst possible value; the run keeps what the trial said.
            metrics.pop(self.metric, None)
        tags = []
        if trial.trial_id not in self._placed and result.get("node_id"):
            # Where the trial ran (a data-parallel trial: its rank-0 worker), once per trial.
            self._placed.add(trial.trial_id)
            tags = [RunTag("node_id", str(result["node_id"])), RunTag("node_ip", str(result.get("node_ip", "")))]
        self.writer.log(trial.trial_id, [Metric(k, v, timestamp, step) for k, v in metrics.items()], tags)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        epochs = _step(last)
        status = finished_status(last, self.metric, self.max_t)
        # A reseeded run stays `reseed`, so it never counts as a trial of the search.
        tags = [RunTag("trial_status", RESEED if self.reseed else status), RunTag("epochs_run", str(epochs))]
        if self.reseed:
            tags.append(RunTag("outcome", status))
        if status == "failed":
            tags.append(RunTag("error", missing_metric_error(self.metric, last)))
        self._end(trial.trial_id, tags, RUN_STATUS[status])

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tags = [RunTag("trial_status", "failed"), RunTag("error", last_error_line(trial))]
        self._end(trial.trial_id, tags, "FAILED")

    def _end(self, trial_id: str, tags: list[RunTag], status: str) -> None:
        """A trial run's last record, as `end_run` writes it: the outcome tags (in the batch
        with its last results), then its MLflow status."""
        ended_ms = int(time.time() * 1000)
        self.writer.log(trial_id, tags=tags)
        self.writer.update(trial_id, lambda client, run_id: client.set_terminated(run_id, status, end_time=ended_ms))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        writer = self.writer
        if not writer.close(FINAL_FLUSH_TIMEOUT_S):
            logger.warning(
                "warning: the MLflow tracking store %s took no writes for %.0fs at the end of the job; not written: %s",
                self.tracking_uri,
                FINAL_FLUSH_TIMEOUT_S,
                writer.not_written() or "a write in progress",
            )
        if writer.failures:
            logger.warning(
                "warning: %d MLflow writes failed (first: %s); the trial runs may miss some records",
                len(writer.failures),
                writer.failures[0],
            )


# On a trial run: the Ray run (experiment folder) its trial belongs to.
RAY_RUN_TAG = "ray_run"
# A reseeded run of `selection`, and the search trial whose configuration it trains again.
RESEED, RESEED_OF_TAG = "reseed", "reseed_of"


def config_key(config: dict[str, Any], params: tuple[str, ...]) -> str:
    """The searched parameters of a configuration as one JSON string, to match it by."""
    return json.dumps({name: config.get(name) for name in params}, sort_keys=True, default=str)


def trial_run_name(number: int, config: dict[str, Any], shown: tuple[str, ...], limit: int = 3) -> str:
    """A trial run's name a person can scan in a list: `t07 lr=5.1e-3 adamw` (number, then the
    first searched parameters; a string choice shown bare)."""
    parts = [f"t{number:02d}"]
    for name in shown[:limit]:
        if name not in config:
            continue
        value = config[name]
        parts.append(value if isinstance(value, str) else f"{name}={compact_number(value)}")
    return " ".join(parts)[:120]


def compact_number(value: Any) -> str:
    """5.1e-3, 0.25, 128: short, and as precise as a list of runs needs."""
    if isinstance(value, float):
        if value != 0 and not 1e-2 <= abs(value) < 1e4:
            mantissa, _, exponent = f"{value:.1e}".partition("e")
            return f"{mantissa.removesuffix('.0')}e{int(exponent)}"
        return f"{value:.3g}"
    return str(value)


def _step(result: dict[str, Any]) -> int:
    """The epoch a result reports (Tune's iteration for a trainable that names none)."""
    return int(result.get("epoch", result.get("training_iteration", 0)) or 0)


def _mark_running(client: MlflowClient, run_id: str) -> None:
    client.log_batch(run_id, tags=[RunTag("trial_status", "running")])
    client.update_run(run_id, status="RUNNING")


def end_run(client: MlflowClient, run_id: str, tags: list[RunTag], status: str) -> None:
    """A trial run's last record: its outcome tags, then its MLflow status."""
    client.log_batch(run_id, tags=tags)
    client.set_terminated(run_id, status)


# MLflow run status of each trial_status.
RUN_STATUS = {
    "completed": "FINISHED",
    "early_stopped": "FINISHED",
    "diverged": "FINISHED",
    "failed": "FAILED",
    "interrupted": "KILLED",
}


def last_error_line(trial: Any) -> str:
    """The last line of a failed trial's error, as a user would quote it."""
    path = getattr(trial, "error_file", None)
    text = ""
    if path:
        try:
            with open(path) as handle:
                text = handle.read()
        except OSError:
            text = ""
    return last_error_text(text)


def last_error_text(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:500] if lines else "unknown error"
