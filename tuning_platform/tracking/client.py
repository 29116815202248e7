"""Opening a job's MLflow store: the client (a SQLite file gets its busy timeout and its
tables from a template) and the lock around its first use."""

from __future__ import annotations

import hashlib
import importlib
import logging
import tempfile
import threading

from filelock import FileLock
from mlflow.tracking import MlflowClient

from tuning_platform._compat.mlflow import SQL_STORE_MODULE, end_run_without_read_back, quiet_sql_outage_tracebacks
from tuning_platform.tracking.database import database_scheme, with_installed_driver
from tuning_platform.tracking.store_template import create_from_template, sqlite_file

logger = logging.getLogger(__name__)

# Seconds a SQLite writer waits for another job's write to finish (sqlite3's default is 5).
SQLITE_BUSY_TIMEOUT_S = 60


def store_uri(tracking_uri: str) -> str:
    """The URI MLflow opens: a SQLite store gets a busy timeout, so two jobs writing to one file
    wait for each other instead of failing with "database is locked"; a plain `postgresql://`
    names the PostgreSQL driver that is installed (`database.with_installed_driver`)."""
    if tracking_uri.startswith("sqlite:") and "?" not in tracking_uri:
        return f"{tracking_uri}?timeout={SQLITE_BUSY_TIMEOUT_S}"
    if database_scheme(tracking_uri) is not None:
        return with_installed_driver(tracking_uri)
    return tracking_uri


def open_client(tracking_uri: str) -> MlflowClient:
    create_from_template(tracking_uri)  # a new SQLite file: a copy, not MLflow's migrations
    if database_scheme(tracking_uri) is not None:
        quiet_sql_outage_tracebacks()  # the run writer reports a database server that does not answer
    return QuietEndClient(store_uri(tracking_uri))


def store_imported_ahead(tracking_uri: str) -> threading.Thread | None:
    """Import MLflow's SQL store (`SQL_STORE_MODULE`: 0.9-1.2 s of a new process here, on top of
    `import mlflow`) on a thread of its own, for a job that opens a database store only once
    Ray has started: Ray's start is seconds of the driver waiting for Ray's processes,
    and the import fits in them. Nothing is opened or written; `open_client` finds the module
    imported (or waits for the import under Python's lock of that module). The thread, or None
    when the store is not a database (a tracking server's client imports no SQL)."""
    if sqlite_file(tracking_uri) is None and database_scheme(tracking_uri) is None:
        return None

    def load() -> None:
        try:
            importlib.import_module(SQL_STORE_MODULE)
        except Exception as err:  # noqa: BLE001 - opening the store imports it again and reports it
            logger.debug("importing %s ahead failed: %s", SQL_STORE_MODULE, err)

    thread = threading.Thread(target=load, name="sql-store-import", daemon=True)
    thread.start()
    return thread


class QuietEndClient(MlflowClient):
    """MLflow's client, less what its `set_terminated` adds over HTTP to ending a run: a
    read-back of the run and two lines on stdout per run (20,000 lines for 10,000 trials;
    `_compat.mlflow.end_run_without_read_back` says where). The job's summary prints the links
    that matter."""

    def set_terminated(self, run_id: str, status: str | None = None, end_time: int | None = None) -> None:
        end_run_without_read_back(self, run_id, status, end_time)


# The folder beside a SQLite store where its experiments keep their artifacts: the name
# `mlflow server` gives its own (--artifacts-destination ./mlartifacts).
ARTIFACTS_FOLDER = "mlartifacts"


def artifacts_beside_store(tracking_uri: str) -> str | None:
    """Where a SQLite store's new experiments keep their artifacts: `mlartifacts/` in the
    store's folder, wherever the job runs from (MLflow's own default is ./mlruns of the working
    folder, so a job run from elsewhere left its models and pictures there). None for any other
    store: a database server's experiments keep MLflow's default, a tracking server its own."""
    store = sqlite_file(tracking_uri)
    return None if store is None else str(store.resolve().parent / ARTIFACTS_FOLDER)


def first_use_lock(tracking_uri: str) -> FileLock:
    """Held while a job opens the store and creates its experiment.

    MLflow creates the tables of a fresh SQLite file without a lock, and two jobs creating one
    experiment race on its unique name; the lock (in the temp folder, keyed by the URI) makes
    the second job wait and find what the first made.
    """
    digest = hashlib.md5(tracking_uri.encode(), usedforsecurity=False).hexdigest()
    return FileLock(f"{tempfile.gettempdir()}/tuning-platform-store-{digest}.lock")
