"""Reading a job's runs back from MLflow: its trial runs (lean on a SQL store) and their metric
histories in bulk, the way a job of 10,000 trials can afford."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from tuning_platform._compat import mlflow as mlflow_compat
from tuning_platform._compat.mlflow import server_history_request, sql_child_run_rows, sql_history_bulk, sql_store
from tuning_platform.records import PARENT_RUN_ID_TAG, is_search_trial

# Run ids per bulk query of metric histories; far below SQLite's limit of bound parameters.
HISTORY_CHUNK = 500
# Metric histories read at once from a tracking server without the bulk read.
HISTORY_READERS = 8


def child_runs(client: MlflowClient, experiment_id: str, parent_run_id: str, status: str | None = None) -> list[Any]:
    """The trial runs of one job; with `status`, only those in it (the store filters, so a job
    of 10,000 finished trials does not read them all to find the few still RUNNING)."""
    where = f"tags.`{PARENT_RUN_ID_TAG}` = '{parent_run_id}'"
    if status is not None:
        where += f" and attributes.status = '{status}'"
    return client.search_runs([experiment_id], filter_string=where, max_results=50000)


def search_trial_runs(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list[Any]:
    """The runs of one job's search trials: its trial runs, less the reseeded runs of `selection`."""
    return [run for run in child_runs(client, experiment_id, parent_run_id) if is_search_trial(run.data.tags)]


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
    runs of a large job here. On a SQL store this reads the same rows as plain tuples
    (`_compat.mlflow.sql_child_run_rows`). Any other store (a tracking server) is read through
    `search_runs`.
    """
    store = sql_store(client)
    if store is None:
        return [
            TrialRunRecord(
                run.info.run_id, run.info.start_time or 0, run.info.end_time, dict(run.data.tags), dict(run.data.params)
            )
            for run in search_trial_runs(client, experiment_id, parent_run_id)
        ]
    runs, tags, params = sql_child_run_rows(store, experiment_id, parent_run_id)
    return [
        TrialRunRecord(run_id, start or 0, end, tags[run_id], params[run_id])
        for run_id, start, end in runs
        if is_search_trial(tags[run_id])
    ]


def metric_histories(client: MlflowClient, run_ids: list[str], metric: str) -> dict[str, list[Any]]:
    """Every logged value of `metric` for each run: in one query per HISTORY_CHUNK runs on a SQL
    store, one request per `_compat.mlflow.BULK_HISTORY_RUNS` runs from a tracking server (a job of 10,000 trials
    reads its study in seconds, not one round trip per trial), one call per run otherwise."""
    bulk = sql_history_bulk(client)
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
    with ThreadPoolExecutor(HISTORY_READERS, thread_name_prefix="mlflow-history") as readers:
        found = readers.map(lambda run_id: list(client.get_metric_history(run_id, metric)), run_ids)
        return dict(zip(run_ids, found, strict=True))


def _server_histories(client: MlflowClient, run_ids: list[str], metric: str) -> dict[str, list[Any]] | None:
    """The histories from a tracking server's bulk read (`_compat.mlflow.BULK_HISTORY_PATH`);
    None when the store is not a tracking server. Runs the route does not answer (a server
    without it, or one that refuses it) are read one per call, which reports a real problem (no
    access, no such run) as MLflow's client does; so are the runs of a request that may have
    been cut at BULK_HISTORY_VALUES values."""
    request = server_history_request(client)
    if request is None:
        return None
    histories: dict[str, list[Any]] = {}
    per_request, most_values = mlflow_compat.BULK_HISTORY_RUNS, mlflow_compat.BULK_HISTORY_VALUES
    for start in range(0, len(run_ids), per_request):
        chunk = run_ids[start : start + per_request]
        response = request(chunk, metric)
        try:
            values = response.json().get("metrics", []) if response.status_code == 200 else None
        except ValueError:  # a 200 that is not MLflow's JSON: a proxy's page, say
            values = None
        if values is None:
            histories.update(_histories_per_run(client, run_ids[start:], metric))
            break
        if len(values) >= most_values:  # maybe cut: these runs have long histories
            histories.update(_histories_per_run(client, chunk, metric))
            continue
        histories.update({run_id: [] for run_id in chunk})
        for value in values:
            histories[value["run_id"]].append(Metric(metric, value["value"], value["timestamp"], value["step"]))
    return histories
