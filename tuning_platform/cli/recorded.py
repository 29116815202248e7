"""A job's outcome rebuilt from what its store holds, for `tuning-platform show`: the spec it ran
(its `resolved_spec.yaml` artifact), its trial runs and their histories, the figures of its
parent run, the reseeded runs of `selection` and the version it registered.

Rebuilt as the job built them at its end, so the summary reads as the job printed it. Trials
of the job's last Ray run are valued as Ray reported them (their best value, whatever their
end), those of an extended job's earlier runs as the job read them back (`search.study.as_row`).
What the store does not keep is the job's own clock: the time shown is the parent run's, from
its start to its end (the job also counted loading the data and starting Ray).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tuning_platform.insight import (
    FOLDER,
    FRONT_FOLDER,
    Insight,
    branch_labels,
    read_branch_importances,
    read_importances,
)
from tuning_platform.outcome import Registration, TrialRow, TuneResult, best_trial, ranked
from tuning_platform.ranking import best
from tuning_platform.records import (
    EPOCHS_RUN_TAG,
    EXTENDED_TAG,
    OUTCOME_TAG,
    PARENT_RUN_ID_TAG,
    RESEED_OF_TAG,
    RUN_NAME_TAG,
    TRIAL_ID_TAG,
    TRIAL_STATUS_TAG,
    TrialStatus,
)
from tuning_platform.registry.champion import comparable_key
from tuning_platform.search.front import deployable, job_front, judged
from tuning_platform.search.study import RecordedTrial, as_row, best_value, fitting_params, recorded_trials
from tuning_platform.spec import Spec, SpecError, validate_spec
from tuning_platform.tracking.jobs import registered_by
from tuning_platform.tracking.queries import metric_histories

SPEC_ARTIFACT = "resolved_spec.yaml"
BASELINE_TAG, BASELINE_PREFIX = "baseline", "baseline_"
CHOSEN_TAG = "selection_chosen_trial"


class RecordError(Exception):
    """What the job's records lack to rebuild its summary."""


def recorded_outcome(client: MlflowClient, run: Any, tracking_uri: str) -> tuple[TuneResult, Spec]:
    """The outcome of the job whose parent run is `run`, and the spec it ran."""
    spec = recorded_spec(client, run.info.run_id)
    info, tags, metrics = run.info, run.data.tags, run.data.metrics
    last_run = tags.get(RUN_NAME_TAG, "")
    trials = recorded_trials(client, info.experiment_id, info.run_id, spec.metric, spec.required_metrics)
    rows = [_row(trial, spec, trial.ray_run in ("", last_run)) for trial in trials]
    ended = info.end_time if info.end_time and info.status != "RUNNING" else int(time.time() * 1000)
    result = TuneResult(
        metric=spec.metric,
        mode=spec.mode,
        tracking_uri=tracking_uri,
        experiment_name=client.get_experiment(info.experiment_id).name,
        experiment_id=info.experiment_id,
        parent_run_id=info.run_id,
        run_name=last_run,
        rows=rows,
        best=best_trial(rows, spec.mode),
        wall_s=max(0, ended - (info.start_time or ended)) / 1000,
        interrupted=info.status == "KILLED",
    )
    if tags.get(BASELINE_TAG):
        baseline = {k.removeprefix(BASELINE_PREFIX): v for k, v in metrics.items() if k.startswith(BASELINE_PREFIX)}
        result.baseline = (tags[BASELINE_TAG], baseline)
    if judged(spec):  # as the job chose: from the front
        result.front = job_front(spec, trials)
        result.best, result.infeasible = deployable(spec, result.front, rows)
    result.insight = _insight(client, run, spec, trials)
    result.insight.front = result.front
    if spec.selection is not None and spec.selection.reseeds and result.best is not None:
        result.selection = _selection(client, run, spec, rows)
    if info.status == "FINISHED":  # a job registers only at its end
        _registration(client, run, spec, trials, result)
    return result, spec


def recorded_spec(client: MlflowClient, run_id: str) -> Spec:
    """The spec the job ran, as it resolved it (overrides, smoke test and defaults applied)."""
    with tempfile.TemporaryDirectory() as folder, _no_progress_bar():
        try:
            path = client.download_artifacts(run_id, SPEC_ARTIFACT, folder)
            raw = yaml.safe_load(Path(path).read_text())
        except Exception as err:  # noqa: BLE001 - any store's failure to hand the file over says the same
            raise RecordError(f"its spec (artifact {SPEC_ARTIFACT} of the parent run) cannot be read: {err}") from None
    try:
        return validate_spec(raw, SPEC_ARTIFACT)
    except SpecError as err:  # a spec this version of the platform no longer reads
        raise RecordError(f"its spec is not one this version reads: {err}") from None


@contextmanager
def _no_progress_bar() -> Iterator[None]:
    """MLflow draws a progress bar on stderr for every download, one small file included."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def _row(trial: RecordedTrial, spec: Spec, last_run: bool) -> TrialRow:
    """A trial as the job's summary counted it: one of its last Ray run as Ray reported it (the
    best value over its epochs, whatever its end), one of an earlier run as read back."""
    if not last_run:
        return as_row(trial, spec)
    values = [value for _, value in trial.history]
    params = fitting_params(trial, spec) or {k: trial.params[k] for k in spec.search.space if k in trial.params}
    if trial.end_params is not None:  # a PBT trial's configuration at its end, as the job printed it
        params = {k: trial.end_params[k] for k in spec.search.space if k in trial.end_params}
    return TrialRow(
        trial.trial_id,
        TrialStatus.INTERRUPTED if trial.status == TrialStatus.RUNNING else trial.status,
        trial.history[-1][0] if trial.history else 0,
        best(values, spec.mode) if values else None,
        params,
    )


def _insight(client: MlflowClient, run: Any, spec: Spec, trials: list[RecordedTrial]) -> Insight:
    """The importances and pictures on the parent run, as `insight.write_insight` left them."""
    importances, per_objective = read_importances(run.data.metrics, spec)
    within, within_per_objective = read_branch_importances(run.data.metrics, spec)
    insight = Insight(
        importances=importances,
        per_objective=per_objective,
        within_branch=within,
        within_branch_per_objective={metric: found for metric, found in within_per_objective.items() if found},
        branches=branch_labels(spec),
    )
    scored = sum(best_value(trial, spec.mode) is not None for trial in trials)
    if not insight.importances and not (scored >= 2 and spec.search.space):
        insight.note = f"importances need 2 or more trials that reported {spec.metric}"
    insight.pictures = [item.path for item in client.list_artifacts(run.info.run_id, FOLDER) if not item.is_dir]
    if judged(spec):
        listed = client.list_artifacts(run.info.run_id, FRONT_FOLDER)
        insight.front_files = [item.path for item in listed if not item.is_dir]
    return insight


def _selection(client: MlflowClient, run: Any, spec: Spec, rows: list[TrialRow]) -> Any:
    """`selection`'s candidates: the top configurations and their reseeded runs."""
    # Imported here: `selection` runs trials, so its module imports Ray (seconds); only a job
    # with `selection` needs its figures.
    from tuning_platform.search.selection import Candidate, Selection, top_configurations

    info = run.info
    where = f"tags.`{PARENT_RUN_ID_TAG}` = '{info.run_id}' and tags.{TRIAL_STATUS_TAG} = '{TrialStatus.RESEED.value}'"
    reseeded = client.search_runs([info.experiment_id], filter_string=where, max_results=50000)
    if not reseeded:
        return None
    histories = metric_histories(client, [r.info.run_id for r in reseeded], spec.metric)
    runs: dict[str, list[TrialRow]] = {}
    for reseed in reseeded:
        tags = reseed.data.tags
        values = [m.value for m in histories[reseed.info.run_id] if math.isfinite(m.value)]
        row = TrialRow(
            tags.get(TRIAL_ID_TAG, ""),
            TrialStatus(tags.get(OUTCOME_TAG, TrialStatus.INTERRUPTED)),
            int(tags.get(EPOCHS_RUN_TAG, "0") or 0),
            best(values, spec.mode) if values else None,
            {},
        )
        runs.setdefault(tags.get(RESEED_OF_TAG, ""), []).append(row)
    assert spec.selection is not None and spec.selection.top_k is not None
    candidates = [
        Candidate(source, ranked(runs.get(source.trial_id, []), spec.mode))
        for source in top_configurations(spec, rows, spec.selection.top_k)
    ]
    chosen_id = run.data.tags.get(CHOSEN_TAG)
    chosen = next((c for c in candidates if c.source.trial_id == chosen_id), None)
    # Ray's results of the reseeded runs are no record of the store; the summary reads none.
    return Selection(candidates, chosen, results=cast(Any, None), run_name=f"{info.run_id}-reseed")


def _registration(client: MlflowClient, run: Any, spec: Spec, trials: list[RecordedTrial], result: TuneResult) -> None:
    """What the job registered, with the notes it printed about it."""
    tags = run.data.tags
    best_row = result.best
    ray_runs = {trial.trial_id: trial.ray_run for trial in trials}
    if (
        EXTENDED_TAG in tags
        and result.selection is None
        and best_row is not None
        and ray_runs.get(best_row.trial_id, "") not in ("", tags.get(RUN_NAME_TAG, ""))
    ):
        result.notes.append(
            f"The best trial {best_row.trial_id} ran before this extension; the registered model stays as that "
            "run left it."
        )
        return
    registered = registered_by(client, run) if best_row is not None else None
    if registered is None:
        return
    name, version, champion = registered
    test = {k: v for k, v in run.data.metrics.items() if k.startswith("test_")}
    registration = Registration(name, version, champion, test_metrics=test)
    if tags.get("smoke_test") == "true":
        registration.notes.append(
            f"note: --smoke-test: registered as {name} (smoke data differs), never as {spec.registered_model_name}"
        )
    if champion and not registration.took_champion:
        try:
            held, mine = client.get_model_version(name, champion), client.get_model_version(name, version)
            other_data = comparable_key(held) != comparable_key(mine)
        except MlflowException:  # a version deleted since: nothing left to compare
            other_data = False
        if other_data:
            registration.notes.append(
                f"note: version {version} was trained on other data (or another metric) than champion "
                f"version {champion}, so they were not compared and the champion stays; register other data "
                "under its own name (tracking.register_model)"
            )
    result.registration = registration
    result.notes.extend(registration.notes)
