"""A store's jobs as their parent runs record them: what `tuning-platform jobs` lists and what
`tuning-platform show` finds.

Only parent runs are read: a job of 10,000 trials is one run here, not 10,001. A parent run is
found by a tag only parent runs carry (`records.RUN_NAME_TAG`, set when the job opens it), which
a SQL store answers from its index of tags. What the listing shows is on the parent run: the
budget (`records.SAMPLES_TAG`), the trials counted by how they ended and the best value (written
at the job's end, `parent_run.log_outcome`), the registered version and the champion of that
moment (`REGISTERED_*_TAG`, same place) and who ran it (MLflow's `mlflow.user`). The registry
is asked only for each model's champion now, once per model; and, for a job recorded before the
registered version was kept on its parent run, once for every version.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tuning_platform.records import (
    ENDED,
    PARENT_RUN_ID_TAG,
    RUN_NAME_TAG,
    SAMPLES_TAG,
    TrialStatus,
)
from tuning_platform.registry.champion import champion_version
from tuning_platform.tracking.client import store_uri

# What a job registered, written on its parent run at its end (`parent_run.log_outcome`): the
# model's name and version (both empty when the job's last run registered nothing) and the
# version that held the `champion` alias then.
REGISTERED_MODEL_TAG = "registered_model"
REGISTERED_VERSION_TAG = "registered_version"
CHAMPION_AT_END_TAG = "champion_at_end"
# MLflow's own tag of who started a run (its UI's "User" column).
USER_TAG = "mlflow.user"
# How a trial's count is tagged on the parent run at the job's end (`parent_run.log_outcome`).
TRIALS_TAG_PREFIX = "trials_"
# A parent run, and no trial run, has this tag.
PARENT_FILTER = f"tags.`{RUN_NAME_TAG}` LIKE '%'"
# Runs per request of a search (MLflow's own limit is 50,000).
PAGE = 1000
RUN_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class JobRecord:
    """One job, as its parent run records it."""

    run_id: str
    experiment_id: str
    experiment: str
    name: str  # the parent run's name: the job's first Ray run name
    status: str  # MLflow's: RUNNING, FINISHED, FAILED, KILLED
    started_ms: int
    user: str
    metric: str
    best: float | None
    planned: int | None
    done: int | None  # trials that ended (known once the job ended)
    model: str | None
    version: str | None
    champion_at_end: str | None
    champion_now: str | None = None

    @property
    def is_champion(self) -> bool:
        return self.version is not None and self.version == self.champion_now


def open_store(tracking_uri: str) -> MlflowClient:
    """A client that reads the store as it is: never creates a SQLite file (`client.open_client`
    would), and waits for a job's write as a job does."""
    return MlflowClient(store_uri(tracking_uri))


def experiments(client: MlflowClient, name: str | None = None) -> dict[str, str]:
    """Id -> name of the store's experiments (only `name`'s; none when it does not exist)."""
    if name is not None:
        found = client.get_experiment_by_name(name)
        return {} if found is None or found.lifecycle_stage != "active" else {found.experiment_id: found.name}
    names: dict[str, str] = {}
    token = None
    while True:
        page = client.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=PAGE, page_token=token)
        names.update({e.experiment_id: e.name for e in page})
        token = page.token
        if not token:
            return names


def parent_runs(
    client: MlflowClient, experiment_ids: list[str], where: str = "", limit: int | None = None
) -> list[Any]:
    """The parent runs of these experiments (with `where`, those that match too), newest first."""
    if not experiment_ids:
        return []
    filter_string = PARENT_FILTER + (f" and {where}" if where else "")
    runs: list[Any] = []
    token = None
    while limit is None or len(runs) < limit:
        page = client.search_runs(
            experiment_ids,
            filter_string=filter_string,
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=PAGE if limit is None else min(PAGE, limit - len(runs)),
            order_by=["attributes.start_time DESC"],
            page_token=token,
        )
        runs.extend(run for run in page if PARENT_RUN_ID_TAG not in run.data.tags)
        token = page.token
        if not token:
            break
    return runs


def list_jobs(client: MlflowClient, experiment: str | None = None, limit: int | None = None) -> list[JobRecord]:
    """The jobs of the store (or of one experiment), newest first. Raises LookupError when the
    experiment does not exist."""
    names = experiments(client, experiment)
    if experiment is not None and not names:
        raise LookupError(f"no experiment {experiment!r}")
    runs = parent_runs(client, list(names), limit=limit)
    # Finished jobs recorded before their parent run kept what they registered.
    older = {run.info.run_id for run in runs if REGISTERED_VERSION_TAG not in run.data.tags and _finished(run)}
    registered = versions_by_run(client, older) if older else {}
    jobs = [_record(run, names[run.info.experiment_id], registered.get(run.info.run_id)) for run in runs]
    champions: dict[str, str | None] = {}
    for job in jobs:
        if job.model is not None and job.model not in champions:
            champions[job.model] = champion_version(client, job.model)
    return [job if job.model is None else replace(job, champion_now=champions[job.model]) for job in jobs]


def find_job(client: MlflowClient, job: str) -> Any | None:
    """The parent run of a job named `job` (the newest, should two have the name), or whose run
    id `job` is; None when there is none."""
    if RUN_ID.fullmatch(job):
        try:
            run = client.get_run(job)
        except MlflowException:
            run = None
        if run is not None and PARENT_RUN_ID_TAG not in run.data.tags and run.info.lifecycle_stage == "active":
            return run
    if "'" in job:  # no job is named so; and it would end the filter's string
        return None
    found = parent_runs(client, list(experiments(client)), where=f"attributes.run_name = '{job}'", limit=1)
    return found[0] if found else None


def versions_by_run(client: MlflowClient, run_ids: set[str]) -> dict[str, tuple[str, str]]:
    """Run id -> (model, its newest version) of the versions logged from these runs: the
    registry's own link, for jobs recorded before their parent run kept it. One read of every
    version."""
    found: dict[str, tuple[str, str]] = {}
    token = None
    while True:
        page = client.search_model_versions(max_results=PAGE, page_token=token)
        for version in page:
            if version.run_id in run_ids:
                held = found.get(version.run_id)
                if held is None or int(held[1]) < int(version.version):
                    found[version.run_id] = (version.name, str(version.version))
        token = page.token
        if not token:
            return found


def registered_by(client: MlflowClient, run: Any) -> tuple[str, str, str | None] | None:
    """(model, version, champion then) of what the job last registered; None when nothing. A
    job recorded before its parent run kept these: the newest version logged from the run, and
    the champion now."""
    tags = run.data.tags
    if REGISTERED_VERSION_TAG in tags:
        if not tags[REGISTERED_VERSION_TAG]:
            return None
        return tags[REGISTERED_MODEL_TAG], tags[REGISTERED_VERSION_TAG], tags.get(CHAMPION_AT_END_TAG) or None
    found = versions_by_run(client, {run.info.run_id}).get(run.info.run_id)
    if found is None:
        return None
    return found[0], found[1], champion_version(client, found[0])


def _finished(run: Any) -> bool:
    return run.info.status == "FINISHED"


def _record(run: Any, experiment: str, older: tuple[str, str] | None) -> JobRecord:
    info, tags, params, metrics = run.info, run.data.tags, run.data.params, run.data.metrics
    metric = params.get("metric", "")
    counts = [tags.get(f"{TRIALS_TAG_PREFIX}{status}") for status in ENDED if status != TrialStatus.INTERRUPTED]
    done = sum(int(count) for count in counts if count) if any(counts) else None
    model, version, champion = None, None, None
    if tags.get(REGISTERED_VERSION_TAG):
        model, version = tags[REGISTERED_MODEL_TAG], tags[REGISTERED_VERSION_TAG]
        champion = tags.get(CHAMPION_AT_END_TAG) or None
    elif older is not None:
        model, version = older
    planned = tags.get(SAMPLES_TAG, params.get("search.num_samples", ""))
    return JobRecord(
        run_id=info.run_id,
        experiment_id=info.experiment_id,
        experiment=experiment,
        name=info.run_name or tags.get(RUN_NAME_TAG, ""),
        status=info.status,
        started_ms=info.start_time or 0,
        user=tags.get(USER_TAG) or info.user_id or "",
        metric=metric,
        best=metrics.get(f"best_{metric}"),
        planned=int(planned) if planned.isdigit() else None,
        done=done,
        model=model,
        version=version,
        champion_at_end=champion,
    )
