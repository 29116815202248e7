"""One tuning job, as a few steps: load the data, connect to Ray, open the parent run
(`parent_run.py`), run the trials (`execution/`), read the outcome, write the insight, reseed
the best (`search/selection.py`), register the model (`registry/`). `api.run_request` calls it;
each step lives in the module named beside it.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from tuning_platform.cluster.capacity import Capacity, TrialResources, fit_resources
from tuning_platform.cluster.connect import connect_ray
from tuning_platform.cluster.storage import check_storage_shared
from tuning_platform.errors import JobError
from tuning_platform.execution.interrupt import reclaim_sigterm, unfinished_trials
from tuning_platform.execution.results import read_trials, result_of
from tuning_platform.execution.resume import ResumeTarget, experiment_uri
from tuning_platform.execution.tuner import RunSetup, build_trainable, fit, restore
from tuning_platform.insight import write_insight
from tuning_platform.outcome import TrialRow, TuneResult, best_trial
from tuning_platform.parent_run import log_outcome, log_selection, open_parent_run
from tuning_platform.records import PBT_SCHEDULE_TAG, TrialStatus
from tuning_platform.registry.champion import registered_name
from tuning_platform.registry.model import front_tags, register_best
from tuning_platform.registry.packaging import requirements_ahead
from tuning_platform.request import JobRequest
from tuning_platform.search.front import deployable, job_front, judged
from tuning_platform.search.selection import reseed_top
from tuning_platform.search.study import RecordedTrial, as_row, recorded_trials
from tuning_platform.spec import Spec
from tuning_platform.tracking.client import store_imported_ahead
from tuning_platform.tracking.parent import JobTracker

if TYPE_CHECKING:
    from ray.tune import ResultGrid

logger = logging.getLogger(__name__)


def run_job(request: JobRequest, tracker: JobTracker) -> TuneResult:
    """Run the job (or continue it, with `request.resume`)."""
    spec = request.spec
    started = time.time()
    _set_tune_variables()
    # First: a data file that cannot be used stops the job before Ray or MLflow start.
    dataset, baseline = _load_data(request)
    if dataset is not None and registered_name(spec.registered_model_name, request.smoke_test) is not None:
        requirements_ahead(request.trainable.module)  # found while Ray starts and the trials run
    store_imported_ahead(request.tracking_uri)  # while Ray starts; the store is opened after it
    with _connected(request) as (resources, capacity):
        run_name, storage_path = _run_name_and_storage(request)
        trainable = build_trainable(request, resources, dataset, run_name, storage_path)
        setup = RunSetup(trainable, request.data, storage_path, tracker, resources, capacity)
        open_parent_run(request, tracker, run_name, storage_path, baseline)
        result = TuneResult(
            metric=spec.metric,
            mode=spec.mode,
            tracking_uri=request.tracking_uri,
            experiment_name=tracker.experiment_name,
            experiment_id=tracker.experiment_id,
            parent_run_id=tracker.parent_run_id,
            run_name=run_name,
            # Ray's own `results.experiment_path` drops the scheme of an s3:// or gs:// path.
            experiment_path=experiment_uri(storage_path, run_name),
            baseline=baseline,
        )
        with tracker.closed_on_error():
            fit_started = time.time()
            resume = request.resume
            run_spec = _run_spec(spec, resume)
            if resume and not resume.extends:
                results = restore(spec, resume, trainable, request.data)
            else:
                history = _searcher_history(request, tracker)
                results = fit(run_spec, setup, run_name, history)
            _read_outcome(run_spec, results, run_name, fit_started, result)
            tracker.close_trial_runs(
                {row.trial_id: row.status for row in result.rows},
                {row.trial_id: row.error for row in result.rows if row.error},
            )
            ran_here = {row.trial_id for row in result.rows}
            recorded = _recorded(spec, tracker)
            _add_earlier_trials(spec, recorded, run_name, result)
            if judged(spec):  # several objectives or constraints: the front decides what is deployable
                result.front = job_front(spec, recorded)
                result.best, result.infeasible = deployable(spec, result.front, result.rows)
            _write_insight(spec, recorded, tracker, result)
            lineage_tags = _write_lineage(spec, results, recorded, tracker, result)
            registered = result.best
            reseeds = spec.selection is not None and spec.selection.reseeds
            if reseeds and result.best is not None and not result.interrupted:
                selection = reseed_top(request, result.rows, setup, run_name, result.front)
                result.selection, result.interrupted = selection, selection.interrupted
                results, registered = selection.results, selection.registered_row
                ran_here |= {run.trial_id for c in selection.candidates for run in c.runs}
            if result.interrupted:
                tracker.finish("KILLED")
            else:
                _register_and_finish(request, results, dataset, tracker, result, ran_here, registered, lineage_tags)
        result.wall_s = time.time() - started
        return result


def _run_spec(spec: Spec, resume: ResumeTarget | None) -> Spec:
    """The spec of this Ray run: an extension runs only the trials and time the budget adds."""
    if resume is None or not resume.extends:
        return spec
    run = spec.model_copy(deep=True)
    # A grid's num_samples counts repetitions of the grid: the added trials are whole ones.
    run.search.num_samples = resume.extend_samples * run.search.num_samples // spec.planned_trials
    run.budget.time_s = resume.extend_time_s
    return run


def _searcher_history(request: JobRequest, tracker: JobTracker) -> list[RecordedTrial]:
    """Earlier trials the searcher starts from: the warm start's, and an extended job's own."""
    history = list(request.warm_start.trials) if request.warm_start else []
    if request.resume and request.resume.extends:
        history += _recorded(request.spec, tracker)
    return history


def _recorded(spec: Spec, tracker: JobTracker) -> list[RecordedTrial]:
    return recorded_trials(
        tracker.client, tracker.experiment_id, tracker.parent_run_id, spec.metric, spec.required_metrics
    )


def _add_earlier_trials(spec: Spec, recorded: list[RecordedTrial], run_name: str, result: TuneResult) -> None:
    """An extended job's trials of its earlier Ray runs join the rows (and compete for best)."""
    earlier = [as_row(trial, spec) for trial in recorded if trial.ray_run and trial.ray_run != run_name]
    if earlier:
        result.rows = earlier + result.rows
        result.best = best_trial(result.rows, spec.mode)


def _write_insight(spec: Spec, recorded: list[RecordedTrial], tracker: JobTracker, result: TuneResult) -> None:
    """Importances and pictures on the parent run; a problem there never fails the job."""
    try:
        started_ms = tracker.client.get_run(tracker.parent_run_id).info.start_time
        result.insight = write_insight(spec, recorded, tracker, started_ms, front=result.front)
    except Exception as err:  # noqa: BLE001 - the trials and the model matter more than the pictures
        logger.warning("warning: search insight not written: %s: %s", type(err).__name__, err)


def _write_lineage(
    spec: Spec, results: ResultGrid, recorded: list[RecordedTrial], tracker: JobTracker, result: TuneResult
) -> dict[str, str]:
    """Population-based training: the best trial's schedule and the population's picture on the
    parent run, the schedule in the summary; the tag naming the schedule for the registered
    version. A problem there never fails the job."""
    if spec.scheduler.type != "pbt":
        return {}
    from tuning_platform.insight.pbt import write_lineage  # imports Ray Tune's PBT

    try:
        best = result.best
        found = result_of(results, best.trial_id) if best else None
        config = found.config if found is not None else None
        lineage = write_lineage(
            spec, result.experiment_path, recorded, tracker, best.trial_id if best else None, config
        )
    except Exception as err:  # noqa: BLE001 - the trials and the model matter more than the lineage
        logger.warning("warning: PBT schedule not written: %s: %s", type(err).__name__, err)
        return {}
    if lineage.text:
        result.notes.append(lineage.text)
    if not lineage.schedule_path:
        return {}
    return {PBT_SCHEDULE_TAG: f"runs:/{tracker.parent_run_id}/{lineage.schedule_path}"}


def _set_tune_variables() -> None:
    # Snapshots are forced by checkpoint retention every epoch on short trials; the warning
    # about it is noise for jobs this size.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # A missing metric is found by `TrialGuard`, which fails that trial with a clear error
    # instead of ending the whole job with Tune's exception.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"


@contextmanager
def _connected(request: JobRequest) -> Iterator[tuple[TrialResources, Capacity]]:
    """Ray for the job (joined, or embedded and shut down at the end) and the trials' resources."""
    import ray

    spec = request.spec
    owns_ray = connect_ray(
        request.address,
        spec.resources.cpu * spec.resources.workers,
        request.storage_path,
        spec.resources.workers > 1,
    )
    reclaim_sigterm()
    try:
        resources, notes, capacity = fit_resources(spec, embedded=not request.address)
        if request.address:
            storage = request.resume.storage_path if request.resume else request.storage_path
            notes += check_storage_shared(storage, capacity.autoscaling)
        for note in notes:
            (logger.warning if note.startswith("warning:") else logger.info)(note)
        yield resources, capacity
    finally:
        if owns_ray:
            ray.shutdown()


def _load_data(request: JobRequest) -> tuple[Any, tuple[str, dict[str, float]] | None]:
    """The trainable's data, loaded once by the driver, and its reference model's scores."""
    task = request.trainable.task
    if task is None:
        return None, None
    from trainables.files import DataError  # the trainables' package, which imports torch

    try:
        dataset = task.load_data(dict(request.data))
    except DataError as err:  # a user's file that cannot be used: one line, before any record
        raise JobError(f"data: {err}") from None
    for note in getattr(dataset, "info", {}).get("notes", []):  # columns left out, a class chosen
        logger.info(note)
    compute = getattr(task, "baseline", None)
    if compute is None:
        return dataset, None
    name, metrics = compute(dataset)
    return dataset, (name, {k: float(v) for k, v in metrics.items()})


def _run_name_and_storage(request: JobRequest) -> tuple[str, str]:
    if request.resume:
        return request.resume.run_name, request.resume.storage_path
    # The random part keeps two jobs of one spec started in the same second apart.
    run_name = f"{request.spec.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    return run_name, request.storage_path


def _read_outcome(spec: Spec, results: ResultGrid, run_name: str, fit_started: float, result: TuneResult) -> None:
    """Trial rows, the best trial, and whether a stop left trials unfinished."""
    result.rows = read_trials(spec, results)
    result.best = best_trial(result.rows, spec.mode)
    # Tune's time budget stops the trials still running as a stop would, without telling its
    # callbacks (ray/tune/execution/tune_controller.py, `_stop_experiment_if_needed`): they
    # ended by the spec, so they count as stopped early, not interrupted.
    budget_spent = spec.budget.time_s is not None and time.time() - fit_started >= spec.budget.time_s
    unfinished = [] if budget_spent else unfinished_trials(run_name)
    for row in result.rows:
        if row.trial_id in unfinished:  # Ctrl-C or SIGTERM: Tune stopped them and saved its state
            row.status = TrialStatus.INTERRUPTED
    result.interrupted = bool(unfinished)


def _register_and_finish(
    request: JobRequest,
    results: ResultGrid,
    dataset: Any,
    tracker: JobTracker,
    result: TuneResult,
    ran_here: set[str],
    registered: TrialRow | None,
    lineage_tags: dict[str, str] | None = None,
) -> None:
    """Register `registered` (the best trial, or with `selection` the chosen configuration's
    best reseeded run) and end the parent run with the job's figures."""
    spec, best = request.spec, result.best
    extra = log_selection(tracker, spec, result.selection)
    if registered is not None and registered.trial_id not in ran_here:
        result.notes.append(
            f"The best trial {registered.trial_id} ran before this extension; the registered model stays as that "
            "run left it."
        )
    elif registered is not None:
        source = result.selection.chosen.source.trial_id if result.selection and result.selection.chosen else None
        extra |= front_tags(spec, result.front, registered, source or registered.trial_id)
        extra |= lineage_tags or {}
        result.registration = register_best(request, results, dataset, tracker, registered, extra)
        if result.registration is not None:
            result.notes.extend(result.registration.notes)
    log_outcome(tracker, spec, result)
    tracker.finish("FINISHED" if best is not None or result.infeasible else "FAILED")
