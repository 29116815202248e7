"""MLflow internals the platform uses (MLflow 3.17): the store behind the client, a run's end
without the client's read-back, SQL reads of a large job's runs, bulk metric histories, and the
process's global tracking URI.

Imports MLflow lazily: the CLI's checks import this module without loading MLflow's store code.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from tuning_platform.records import PARENT_RUN_ID_TAG

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

# A tracking server's bulk read of metric histories: the MLflow UI's own route for its charts,
# served by `mlflow server` (mlflow/server/__init__.py line 129, `get_metric_history_bulk_handler`
# in mlflow/server/handlers.py line 2384, in 3.17): up to 100 runs and 25,000 values a request,
# one SQL query on the server. 60 runs read in 0.02-0.04 s here, against 0.5-0.8 s one run per
# call. The REST API documents only `get-history-bulk-interval`, which samples long histories
# and reads run by run on the server (0.3 s for the same 60). A server without the route is read
# one run per call; tests/test_mlflow_server.py fails if the route changes.
BULK_HISTORY_PATH = "/ajax-api/2.0/mlflow/metrics/get-history-bulk"
BULK_HISTORY_RUNS, BULK_HISTORY_VALUES = 100, 25_000


def initialize_store_tables(engine: Any) -> None:
    """What `SqlAlchemyStore.__init__` runs on a database without MLflow's tables
    (mlflow/store/tracking/sqlalchemy_store.py line 409 in MLflow 3.17): the initial tables and
    every migration, `mlflow.store.db.utils._initialize_tables`. tests/test_store_template.py
    compares a store made this way with one MLflow made."""
    from mlflow.store.db.utils import _initialize_tables

    _initialize_tables(engine)


def tracking_store(client: MlflowClient) -> Any:
    """The store behind MLflow's client (`MlflowClient._tracking_client.store`), which the
    public client does not expose: a SQL store, or a tracking server's `RestStore`."""
    return getattr(getattr(client, "_tracking_client", None), "store", None)


# The module of MLflow's SQL store (`SqlAlchemyStore`: SQLAlchemy, alembic and MLflow's table
# models), which MLflow imports when a client first opens a SQLite file or a database
# (mlflow/tracking/_tracking_service/utils.py, `_get_sqlalchemy_store`).
SQL_STORE_MODULE = "mlflow.store.tracking.sqlalchemy_store"


def sql_store(client: MlflowClient) -> Any:
    """The client's store when it is MLflow's SQL store (SQLite or a database), else None."""
    store = tracking_store(client)
    # Not imported unless some client uses a SQL store, and then never needed here.
    module = sys.modules.get(SQL_STORE_MODULE)
    return store if module is not None and isinstance(store, module.SqlAlchemyStore) else None


def end_run_without_read_back(client: MlflowClient, run_id: str, status: str | None, end_time: int | None) -> None:
    """A run's end as `MlflowClient.set_terminated` writes it, less its read-back: over HTTP
    `set_terminated` fetches the run again (`get_run`) to print "View run NAME at: URL" and
    "View experiment at: URL" to stdout (mlflow/tracking/_tracking_service/client.py,
    `set_terminated` line 788 and `_log_url` line 755, in 3.17): a fourth request and two lines
    of output per trial. The end is written as `set_terminated` then writes it, with the store's
    `update_run_info`; tests/test_tracking.py fails if that changes."""
    from mlflow.entities import RunStatus

    tracking_store(client).update_run_info(
        run_id,
        run_status=RunStatus.from_string(status or "FINISHED"),
        end_time=end_time or int(time.time() * 1000),
        run_name=None,
    )


def sql_child_run_rows(
    store: Any, experiment_id: str, parent_run_id: str
) -> tuple[list[tuple[str, int | None, int | None]], dict[str, dict[str, str]], dict[str, dict[str, str]]]:
    """The active child runs of a parent run on a SQL store as plain rows: (run id, start ms,
    end ms), and each run's tags and params, in three queries through the store's own sessions.

    The tables are MLflow's (mlflow/store/tracking/dbmodels/models.py: `SqlRun` line 250,
    `SqlTag` 420, `SqlParam` 576 in 3.17) and the session maker is
    `SqlAlchemyStore.ManagedSessionMaker` (sqlalchemy_store.py, line 416);
    tests/test_tracking.py fails if they change.
    """
    from mlflow.entities import LifecycleStage
    from mlflow.store.tracking.dbmodels.models import SqlParam, SqlRun, SqlTag
    from sqlalchemy import select

    children: Any = select(SqlTag.run_uuid).where(SqlTag.key == PARENT_RUN_ID_TAG, SqlTag.value == parent_run_id)
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
    return [(run_id, start, end) for run_id, start, end in runs], tags, params


def sql_history_bulk(client: MlflowClient) -> Callable[..., Any] | None:
    """The SQL store's bulk read of metric histories, `get_metric_history_bulk(run_ids, key,
    max_results)` (mlflow/store/tracking/sqlalchemy_store.py, line 1747 in 3.17), which the
    public client does not expose; None on any other store. tests/test_tracking.py fails if it
    disappears."""
    return getattr(tracking_store(client), "get_metric_history_bulk", None)


def server_history_request(client: MlflowClient) -> Callable[[list[str], str], Any] | None:
    """A request to a tracking server's BULK_HISTORY_PATH for some runs' histories of one metric,
    with the user's credentials (the `RestStore`'s `get_host_creds`); None when the store is not
    a tracking server."""
    host_creds = getattr(tracking_store(client), "get_host_creds", None)
    if host_creds is None:
        return None
    from mlflow.utils.rest_utils import http_request

    def request(run_ids: list[str], metric: str) -> Any:
        # Read at call time, so a test can point them elsewhere.
        params = {"run_id": run_ids, "metric_key": metric, "max_results": BULK_HISTORY_VALUES}
        return http_request(host_creds(), BULK_HISTORY_PATH, "GET", params=params)

    return request


def requirement_checks_warmed() -> None:
    """MLflow's map of modules to installed distributions, built now. `log_model` builds it to
    check a model's requirements against this environment (`warn_dependency_requirement_mismatches`,
    mlflow/utils/requirements_utils.py line 661, through `_init_modules_to_packages_map`, line
    445), 0.7 s here, and keeps it for the process in `_MODULES_TO_PACKAGES`; built ahead, the
    job's end does not wait for it. tests/test_registry.py fails if the names change."""
    from mlflow.utils.requirements_utils import _init_modules_to_packages_map

    _init_modules_to_packages_map()


def global_tracking_uri() -> str | None:
    """The URI `mlflow.set_tracking_uri` set in this process, None when unset: the module
    global `_tracking_uri` of mlflow/tracking/_tracking_service/utils.py (3.17).
    tests/test_api.py fails if putting it back stops working."""
    from mlflow.tracking._tracking_service import utils

    return utils._tracking_uri


def set_global_tracking_uri(uri: str | None) -> None:
    from mlflow.tracking._tracking_service import utils

    if utils._tracking_uri != uri:
        utils.set_tracking_uri(uri)


def tracking_uri_for_the_call(uri: str) -> AbstractContextManager[Any]:
    """MLflow's global tracking URI set for a `with` block and put back after
    (`_use_tracking_uri`, mlflow/tracking/_tracking_service/utils.py); `log_model` works on the
    global URI. tests/test_api.py fails if it stops restoring the URI."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    return _use_tracking_uri(uri)


def set_new_experiments_artifact_root(client: MlflowClient, root: str) -> bool:
    """New experiments of the client's SQL store keep their artifacts under `root`/<experiment
    id>. MLflow's `SqlAlchemyStore` takes that root only when it is built (`artifact_root_uri`,
    mlflow/store/tracking/sqlalchemy_store.py line 403; read by `_get_artifact_location`, line
    609 in 3.17), and the client builds it with ./mlruns of the working folder
    (tracking/_tracking_service/utils.py, `_get_sqlalchemy_store`, line 192). False when the
    store is not one that has it. tests/test_tracking.py fails if the attribute goes."""
    store = sql_store(client)
    if store is None or not hasattr(store, "artifact_root_uri"):
        return False
    store.artifact_root_uri = root
    return True


# What MLflow's SQL store logs, with the traceback, before it raises a database's
# OperationalError as TEMPORARILY_UNAVAILABLE (mlflow/store/db/utils.py, `make_managed_session`,
# line 181 in 3.17).
SQL_OUTAGE_LOGGER = "mlflow.store.db.utils"
SQL_OUTAGE_MESSAGE = "SQLAlchemy database error"


def _not_an_outage(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(SQL_OUTAGE_MESSAGE)


def quiet_sql_outage_tracebacks() -> None:
    """Drops MLflow's traceback for each write to a database that does not answer (a restart): a
    job's run writer retries those writes and says once, in a `warning:` line, that the store is
    away; 20 s of a restarted PostgreSQL printed a traceback per retry. Only these records are
    dropped. tests/test_postgres_store.py fails if they come back."""
    log = logging.getLogger(SQL_OUTAGE_LOGGER)
    if _not_an_outage not in log.filters:
        log.addFilter(_not_an_outage)


__all__ = [
    "BULK_HISTORY_PATH",
    "BULK_HISTORY_RUNS",
    "BULK_HISTORY_VALUES",
    "end_run_without_read_back",
    "global_tracking_uri",
    "quiet_sql_outage_tracebacks",
    "set_new_experiments_artifact_root",
    "server_history_request",
    "set_global_tracking_uri",
    "sql_child_run_rows",
    "sql_history_bulk",
    "sql_store",
    "tracking_store",
    "tracking_uri_for_the_call",
]
