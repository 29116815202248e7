"""`search.warm_start`: the trials of earlier jobs (an experiment's, or named parent runs) that
a new job's searcher starts from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tuning_platform.errors import SpecError
from tuning_platform.records import PARENT_RUN_ID_TAG
from tuning_platform.search.study import RecordedTrial, recorded_trials
from tuning_platform.spec import Spec

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


@dataclass
class WarmStart:
    """The earlier trials a job's searcher starts from, and where they came from."""

    trials: list[RecordedTrial]
    parent_run_ids: list[str]
    used: int = 0  # trials that seed the searcher
    skipped: int = 0  # trials the searcher could learn from that do not fit the spec


def warm_start_trials(client: MlflowClient, spec: Spec, spec_file: str) -> WarmStart:
    """The trials of the jobs `search.warm_start` names (an experiment's parent runs, or the
    given parent runs); a source that does not exist is a SpecError."""
    from mlflow.exceptions import MlflowException

    source = spec.search.warm_start
    assert source is not None
    parents: list[tuple[str, str]] = []  # (experiment id, parent run id)
    if source.experiment:
        experiment = client.get_experiment_by_name(source.experiment)
        if experiment is None:
            raise SpecError(spec_file, "search.warm_start.experiment", "no such MLflow experiment", source.experiment)
        runs = client.search_runs([experiment.experiment_id], max_results=50000, order_by=["attributes.start_time"])
        parents = [(experiment.experiment_id, r.info.run_id) for r in runs if PARENT_RUN_ID_TAG not in r.data.tags]
    for run_id in source.parent_runs:
        try:
            run = client.get_run(run_id)
        except MlflowException:
            raise SpecError(spec_file, "search.warm_start.parent_runs", "no such MLflow run", run_id) from None
        if PARENT_RUN_ID_TAG in run.data.tags:
            raise SpecError(
                spec_file, "search.warm_start.parent_runs", "is a trial run; give its job's parent run", run_id
            )
        parents.append((run.info.experiment_id, run_id))
    trials = [
        trial
        for experiment, run_id in parents
        for trial in recorded_trials(client, experiment, run_id, spec.metric, spec.required_metrics)
    ]
    return WarmStart(trials=trials, parent_run_ids=[run_id for _, run_id in parents])
