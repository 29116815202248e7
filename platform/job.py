"""One tuning job: connect to Ray, run Optuna TPE + ASHA through a Tuner, record it in MLflow,
register the best model. The CLI in `platform.tune` is a thin layer over `run_job`.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from platform.cluster import (
    PROJECT_ROOT,
    Capacity,
    JobError,
    check_storage_shared,
    concurrent_groups,
    connect_ray,
    fit_resources,
)
from platform.resolve import ResolvedTrainable
from platform.resume import (
    RESUMED_TAG,
    RUN_NAME_TAG,
    SPEC_HASH_TAG,
    STORAGE_TAG,
    ResumeTarget,
    driver_tags,
    experiment_uri,
    spec_fingerprint,
)
from platform.spec import Spec, param_space

logger = logging.getLogger(__name__)

__all__ = ["JobError", "JobOutcome", "JobRequest", "TrialRow", "run_job", "tune_config"]


@dataclass
class JobRequest:
    spec: Spec
    spec_file: str
    spec_text: str
    trainable: ResolvedTrainable
    data: dict[str, Any]
    tracking_uri: str
    storage_path: str
    address: str | None = None
    smoke_test: bool = False
    # The command that resumes this job, printed at its start and on Ctrl-C.
    resume_command: str = ""
    # Set by `--resume`: the unfinished job to continue.
    resume: ResumeTarget | None = None


@dataclass
class TrialRow:
    trial_id: str
    status: str  # completed | early_stopped | diverged | failed | interrupted
    epochs: int
    value: float | None  # best finite value of the spec's metric over the trial's epochs
    params: dict[str, Any]
    error: str | None = None  # a failed trial's last error line


@dataclass
class JobOutcome:
    exit_code: int
    rows: list[TrialRow] = field(default_factory=list)
    best: TrialRow | None = None
    experiment_name: str = ""
    experiment_id: str = ""
    parent_run_id: str = ""
    model_name: str | None = None
    model_version: str | None = None
    champion_version: str | None = None
    wall_s: float = 0.0
    experiment_path: str = ""
    notes: list[str] = field(default_factory=list)
    # (name, metrics) of the trainable's simple reference model on the same split
    baseline: tuple[str, dict[str, float]] | None = None


def build_search(spec: Spec) -> Any:
    if spec.search.algorithm == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=spec.search.seed))
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=spec.search.seed)


def build_scheduler(spec: Spec) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if spec.scheduler.type == "asha":
        return ASHAScheduler(
            time_attr="epoch",
            max_t=spec.max_t,
            grace_period=spec.scheduler.grace_period,
            reduction_factor=spec.scheduler.reduction_factor,
        )
    return FIFOScheduler()


def run_job(request: JobRequest, tracker: Any) -> JobOutcome:
    """Run the job (or continue it, with `request.resume`); `tracker` is a
    `platform.tracking.JobTracker` for the tracking URI."""
    import ray

    from platform.interrupt import EXIT_INTERRUPTED, reclaim_sigterm, unfinished_trials

    # Snapshots are forced by checkpoint retention every epoch on short trials; the warning
    # about it is noise for jobs this size.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # A missing metric is found by `TrialGuard`, which fails that trial with a clear error
    # instead of ending the whole job with Tune's exception.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    spec = request.spec
    resume = request.resume
    started = time.time()
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
            notes += check_storage_shared(resume.storage_path if resume else request.storage_path, capacity.autoscaling)
        for note in notes:
            print(note, flush=True)
        task = request.trainable.task
        data = dict(request.data)
        dataset = task.load_data(data) if task is not None else None
        baseline = _baseline(task, dataset)
        if resume:
            run_name, storage_path = resume.run_name, resume.storage_path
        else:
            # The random part keeps two jobs of one spec started in the same second apart.
            run_name = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
            storage_path = request.storage_path
        trainable = _trainable(spec, request, resources, dataset, run_name, storage_path)
        _open_parent_run(request, tracker, run_name, storage_path, data, baseline)
        outcome = JobOutcome(
            exit_code=1,
            experiment_name=tracker.experiment_name,
            experiment_id=tracker.experiment_id,
            parent_run_id=tracker.parent_run_id,
            baseline=baseline,
        )
        try:
            fit_started = time.time()
            if resume:
                results = _restore(spec, resume, trainable, data)
            else:
                results = _fit(spec, trainable, data, run_name, storage_path, tracker, resources, capacity)
            # Tune's time budget stops the trials still running as a stop would, without telling
            # its callbacks (ray/tune/execution/tune_controller.py, `_stop_experiment_if_needed`):
            # they ended by the spec, so they count as stopped early, not interrupted.
            budget_spent = spec.budget.time_s is not None and time.time() - fit_started >= spec.budget.time_s
            # Ray's own `results.experiment_path` drops the scheme of an s3:// or gs:// path.
            outcome.experiment_path = experiment_uri(storage_path, run_name)
            _summarize(spec, results, outcome)
            unfinished = unfinished_trials(run_name)
            if budget_spent:
                unfinished = []
            for row in outcome.rows:
                if row.trial_id in unfinished:  # Ctrl-C or SIGTERM: Tune stopped them and saved its state
                    row.status = "interrupted"
            tracker.close_trial_runs(
                {row.trial_id: row.status for row in outcome.rows},
                {row.trial_id: row.error for row in outcome.rows if row.error},
            )
            if unfinished:
                tracker.finish("KILLED")
                outcome.exit_code = EXIT_INTERRUPTED
                outcome.wall_s = time.time() - started
                return outcome
            if outcome.best is not None:
                _register(spec, request, results, dataset, tracker, outcome)
            outcome.exit_code = 0 if outcome.best is not None else 1
            tracker.log_to_parent(
                metrics={f"best_{spec.metric}": outcome.best.value} if outcome.best else {},
                params={f"best.{k}": v for k, v in (outcome.best.params if outcome.best else {}).items()},
                tags={
                    f"trials_{status}": str(sum(r.status == status for r in outcome.rows))
                    for status in ("completed", "early_stopped", "diverged", "failed")
                },
            )
            tracker.finish("FINISHED" if outcome.exit_code == 0 else "FAILED")
        except KeyboardInterrupt:  # a second Ctrl-C: Tune stopped without saving its last state
            tracker.close_trial_runs({})
            tracker.finish("KILLED")
            raise
        except BaseException as err:
            tracker.close_trial_runs({})
            tracker.finish("FAILED", error=f"{type(err).__name__}: {err}")
            raise
        outcome.wall_s = time.time() - started
        return outcome
    finally:
        if owns_ray:
            ray.shutdown()


def _open_parent_run(
    request: JobRequest,
    tracker: Any,
    run_name: str,
    storage_path: str,
    data: dict[str, Any],
    baseline: tuple[str, dict[str, float]] | None,
) -> None:
    """A new job's parent run, or the parent run of the job `--resume` continues."""
    spec, resume = request.spec, request.resume
    if resume:
        tracker.reattach(resume.parent_run_id, {RESUMED_TAG: str(resume.times_resumed + 1), **driver_tags()})
        print(f"Resuming job {run_name} (MLflow parent run {tracker.parent_run_id})", flush=True)
    else:
        tracker.start(
            run_name=run_name,
            tags={
                "spec_file": request.spec_file,
                "trainable": spec.trainable,
                "smoke_test": str(request.smoke_test).lower(),
                RUN_NAME_TAG: run_name,
                STORAGE_TAG: storage_path,
                SPEC_HASH_TAG: spec_fingerprint(spec),
                **driver_tags(),
            },
            params=_parent_params(spec, data),
            artifacts={"spec.yaml": request.spec_text, "resolved_spec.yaml": _resolved_yaml(spec)},
        )
    if request.resume_command:
        print(f"Job {run_name}; if it stops, continue it with: {request.resume_command}", flush=True)
    if baseline is not None:
        name, metrics = baseline
        if not resume:  # the parent run has it already
            tracker.log_to_parent(metrics={f"baseline_{k}": v for k, v in metrics.items()}, tags={"baseline": name})
        shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
        print(f"Baseline ({name}) on the same validation split: {shown}", flush=True)


def _trainable(
    spec: Spec, request: JobRequest, resources: dict[str, float], dataset: Any, run_name: str, storage_path: str
) -> Any:
    """The Tune trainable with its data and resources: the trial process itself, or for
    `workers > 1` a small driver whose Ray Train workers hold the resources."""
    import ray
    from ray import tune

    if spec.resources.workers == 1:
        trainable: Any = request.trainable.function
        if dataset is not None:
            # Loaded once here; Ray ships it to each node once through the object store.
            trainable = tune.with_parameters(trainable, data=dataset)
        return tune.with_resources(trainable, resources)

    from trainables.distributed import DRIVER_RESOURCES, data_parallel

    trainable = data_parallel(
        request.trainable.task,
        workers=spec.resources.workers,
        cpu=resources["cpu"],
        gpu=resources["gpu"],
        storage_path=storage_path,
        run_name=run_name,
        max_failures=spec.failure.max_failures,
        metric=spec.metric,
        mode=spec.mode,
    )
    # A reference inside a list stays a reference: the workers fetch the one stored copy.
    trainable = tune.with_parameters(trainable, data=[ray.put(dataset)])
    return tune.with_resources(trainable, DRIVER_RESOURCES)


def _baseline(task: Any, dataset: Any) -> tuple[str, dict[str, float]] | None:
    """The trainable's reference model (popularity, logistic regression), once per job."""
    compute = getattr(task, "baseline", None)
    if compute is None or dataset is None:
        return None
    name, metrics = compute(dataset)
    return name, {k: float(v) for k, v in metrics.items()}


def _fit(
    spec: Spec,
    trainable: Any,
    data: dict[str, Any],
    run_name: str,
    storage_path: str,
    tracker: Any,
    resources: dict[str, float],
    capacity: Capacity,
) -> Any:
    from ray import tune

    from platform.checkpoints import SurvivingCheckpoints, checkpoint_config
    from platform.guard import TrialGuard
    from platform.interrupt import TrialOutcomes
    from platform.waiting import WaitingForNodes

    callbacks = [SurvivingCheckpoints(), TrialOutcomes(run_name), tracker.trial_callback(spec.metric, spec.max_t)]
    if capacity.autoscaling:
        callbacks.append(WaitingForNodes())

    tuner = tune.Tuner(
        trainable,
        param_space=_trial_config(spec, data),
        tune_config=tune_config(spec, resources, capacity),
        # Tune saves this run config with the job's state; `--resume` gets the same back.
        run_config=tune.RunConfig(
            name=run_name,
            storage_path=storage_path,
            stop=TrialGuard(spec.metric, spec.mode, spec.max_t if spec.max_t < spec.epochs else None),
            callbacks=callbacks,
            checkpoint_config=checkpoint_config(spec),
            failure_config=tune.FailureConfig(max_failures=spec.failure.max_failures),
        ),
    )
    with _tune_resume_hint_hidden():
        return tuner.fit()


def tune_config(spec: Spec, resources: dict[str, float], capacity: Capacity | None = None) -> Any:
    """How Tune runs the job's trials: metric, searcher, scheduler, samples, concurrency, actors.

    The benchmarks' plain Ray Tune run of the same trials uses it too, so both share every setting.
    """
    from ray import tune

    return tune.TuneConfig(
        metric=spec.metric,
        mode=spec.mode,
        search_alg=build_search(spec),
        scheduler=build_scheduler(spec),
        num_samples=spec.search.num_samples,
        max_concurrent_trials=concurrent_groups(spec, resources, capacity),
        # Ray 2.60 defaults to False, and each fresh actor costs seconds. A data-parallel
        # trial's driver is not reused: ending its actor is what ends its Train workers.
        reuse_actors=spec.resources.workers == 1,
        time_budget_s=spec.budget.time_s,
        # Short trial folders: the default repeats every parameter in the name.
        trial_dirname_creator=_trial_dirname,
    )


def _trial_config(spec: Spec, data: dict[str, Any]) -> dict[str, Any]:
    """Tune's param space: the search domains, the fixed values, the data block and the seed."""
    config = param_space(spec, data)
    config.setdefault("seed", spec.search.seed)
    return config


def _restore(spec: Spec, resume: ResumeTarget, trainable: Any, data: dict[str, Any]) -> Any:
    """Continue a job from Ray's saved state: its searcher, its finished trials as they were,
    unfinished and errored trials from their last checkpoints."""
    from ray import tune

    tuner = tune.Tuner.restore(
        resume.experiment_path,
        trainable=trainable,
        resume_unfinished=True,
        resume_errored=True,
        param_space=_trial_config(spec, data),
    )
    with _tune_resume_hint_hidden():
        return tuner.fit()


class _HideTuneResumeHint(logging.Filter):
    # After Ctrl-C Tune suggests `Tuner.restore(...)`; the CLI prints its own command.
    def filter(self, record: logging.LogRecord) -> bool:
        return "Resume experiment with" not in record.getMessage()


@contextmanager
def _tune_resume_hint_hidden() -> Iterator[None]:
    hint, tune_logger = _HideTuneResumeHint(), logging.getLogger("ray.tune.tune")
    tune_logger.addFilter(hint)
    try:
        yield
    finally:
        tune_logger.removeFilter(hint)


def _trial_dirname(trial: Any) -> str:
    return f"{trial.trainable_name}_{trial.trial_id}"


def _summarize(spec: Spec, results: Any, outcome: JobOutcome) -> None:
    # Imported here: platform.tracking loads MLflow and Ray, which input checks never need.
    from platform.guard import missing_metric_error
    from platform.tracking import finished_status, last_error_text

    for result in results:
        last = result.metrics or {}
        history = result.metrics_dataframe
        trial_id = str(last.get("trial_id") or Path(result.path).name.rsplit("_", 1)[-1])
        epochs = int(last.get("epoch", 0) or 0)
        value = None
        if history is not None and spec.metric in history:
            series = history[spec.metric].dropna()
            series = series[series.map(math.isfinite)]
            if len(series):
                value = float(series.max() if spec.mode == "max" else series.min())
        error = None
        if result.error is not None:
            status, error = "failed", last_error_text(str(result.error))
        else:
            status = finished_status(last, spec.metric, spec.max_t)
            if status == "failed":
                error = missing_metric_error(spec.metric, last)
        params = {k: v for k, v in (result.config or {}).items() if k in spec.search.space}
        outcome.rows.append(TrialRow(trial_id, status, epochs, value, params, error))
    # A trial that failed or diverged is never the champion: its configuration is unstable.
    scored = [row for row in outcome.rows if row.value is not None and row.status not in ("failed", "diverged")]
    if scored:
        pick = max if spec.mode == "max" else min
        outcome.best = pick(scored, key=lambda row: row.value)


def _register(spec: Spec, request: JobRequest, results: Any, dataset: Any, tracker: Any, outcome: JobOutcome) -> None:
    """Rebuild the best trial's best checkpoint into a model and register it."""
    from trainables.loop import rebuild_model

    name = spec.registered_model_name
    task = request.trainable.task
    if name is None:
        return
    if task is None or dataset is None:
        outcome.notes.append(f"note: {spec.trainable} exposes no TASK, so no model was registered")
        return
    best_result = next(r for r in results if str((r.metrics or {}).get("trial_id")) == outcome.best.trial_id)
    if best_result.best_checkpoints:
        checkpoint = best_result.get_best_checkpoint(spec.metric, spec.mode) or best_result.checkpoint
    else:  # a data-parallel trial: Ray Train kept its checkpoints
        checkpoint = _train_checkpoint(best_result, spec.metric, spec.mode)
    if checkpoint is None:
        outcome.notes.append("warning: the best trial left no checkpoint, so no model was registered")
        return
    with checkpoint.as_directory() as directory:
        model, state = rebuild_model(task, directory)
    served = task.serving_model(model, state["info"])
    value = outcome.best.value
    version, champion = tracker.register_model(
        served,
        task.input_example(dataset),
        name,
        spec.metric,
        spec.mode,
        value,
        tags={"trial_id": outcome.best.trial_id, "epoch": str(state["epoch"]), "parent_run_id": tracker.parent_run_id},
        code_paths=[str(PROJECT_ROOT / "trainables")],
    )
    outcome.model_name, outcome.model_version = name, version
    outcome.champion_version = version if champion else tracker.champion_version(name)


def _train_checkpoint(result: Any, metric: str, mode: str) -> Any | None:
    """The best checkpoint a data-parallel trial's Ray Train run still keeps.

    Train keeps those checkpoints itself; Tune only sees their paths in the reported metrics
    (`checkpoint_path`, from TuneReportCallback), best epoch first.
    """
    from ray.train import Checkpoint

    history = result.metrics_dataframe
    if history is None or "checkpoint_path" not in history or metric not in history:
        return None
    rows = history.dropna(subset=["checkpoint_path", metric]).sort_values(metric, ascending=(mode == "min"))
    for path in rows["checkpoint_path"]:
        if "://" in str(path) or Path(str(path)).is_dir():
            return Checkpoint(str(path))
    return None


def _parent_params(spec: Spec, data: dict[str, Any]) -> dict[str, str]:
    params = {
        "trainable": spec.trainable,
        "metric": spec.metric,
        "mode": spec.mode,
        "search.algorithm": spec.search.algorithm,
        "search.num_samples": str(spec.search.num_samples),
        "search.seed": str(spec.search.seed),
        "scheduler.type": spec.scheduler.type,
        "resources.cpu": str(spec.resources.cpu),
        "resources.gpu": str(spec.resources.gpu),
    }
    params.update({f"data.{k}": str(v) for k, v in data.items()})
    return params


def _resolved_yaml(spec: Spec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
