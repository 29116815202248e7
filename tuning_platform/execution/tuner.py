"""The Ray Tune run of a job: the trainable with its data and resources, Optuna TPE (or random
search), ASHA (or FIFO), the platform's callbacks, and `fit` or, for `resume`, `restore`."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from tuning_platform.spec import Spec, param_space

if TYPE_CHECKING:
    from ray.tune import ResultGrid, TuneConfig

    from tuning_platform.cluster import Capacity
    from tuning_platform.request import JobRequest
    from tuning_platform.resume import ResumeTarget
    from tuning_platform.study import RecordedTrial
    from tuning_platform.tracking import JobTracker


def build_search(
    spec: Spec, history: list[RecordedTrial] | None = None, points: list[dict[str, Any]] | None = None
) -> Any:
    """Optuna TPE with the spec's sampler settings (or random search). `history`: earlier
    trials the searcher starts from (an extended or warm-started job); those that fit the
    space are added to its study as finished trials, so TPE weighs them as its own.
    `points`: configurations random search runs first (the reseeded ones of `selection`)."""
    if spec.search.algorithm == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        from tuning_platform.study import build_sampler, study_of

        # OptunaSearch opens the study of that name in the storage it is given (load_if_exists).
        storage = optuna.storages.InMemoryStorage()
        study_of(spec, history or [], storage)
        return OptunaSearch(sampler=build_sampler(spec, len(history or [])), storage=storage, study_name=spec.name)
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(points_to_evaluate=points, random_state=spec.search.seed)


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


def tune_config(
    spec: Spec,
    resources: dict[str, float],
    capacity: Capacity | None = None,
    history: list[RecordedTrial] | None = None,
    points: list[dict[str, Any]] | None = None,
) -> TuneConfig:
    """How Tune runs the job's trials: metric, searcher, scheduler, samples, concurrency, actors.

    The benchmarks' plain Ray Tune run of the same trials uses it too, so both share every setting.
    """
    from ray import tune

    from tuning_platform.cluster import concurrent_groups

    return tune.TuneConfig(
        metric=spec.metric,
        mode=spec.mode,
        search_alg=build_search(spec, history, points),
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


def build_trainable(
    request: JobRequest, resources: dict[str, float], dataset: Any, run_name: str, storage_path: str
) -> Any:
    """The Tune trainable with its data and resources: the trial process itself, or for
    `workers > 1` a small driver whose Ray Train workers hold the resources."""
    import ray
    from ray import tune

    spec = request.spec
    if spec.resources.workers == 1:
        trainable: Any = request.trainable.function
        if dataset is not None:
            # Loaded once here; Ray ships it to each node once through the object store.
            trainable = tune.with_parameters(trainable, data=trial_data(dataset))
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
    trainable = tune.with_parameters(trainable, data=[ray.put(trial_data(dataset))])
    return tune.with_resources(trainable, DRIVER_RESOURCES)


def trial_data(dataset: Any) -> Any:
    """The data a trial gets: a built-in dataset without its test split, which only the final
    model is scored on (`registry.score_on_test`)."""
    return dataset.for_trials() if hasattr(dataset, "for_trials") else dataset


def fit(
    spec: Spec,
    trainable: Any,
    data: dict[str, Any],
    run_name: str,
    storage_path: str,
    tracker: JobTracker,
    resources: dict[str, float],
    capacity: Capacity,
    history: list[RecordedTrial] | None = None,
    reseed: list[tuple[dict[str, Any], str]] | None = None,
) -> ResultGrid:
    """A new Tune run, to its end (or to Ctrl-C / SIGTERM, after which Tune saved its state):
    a new job's, an extension's, or the reseeded runs of `selection`. `history`: the earlier
    trials its searcher starts from. `reseed`: the configurations to run (searched params and
    a seed) with the trial each one comes from."""
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from tuning_platform.checkpoints import SurvivingCheckpoints, checkpoint_config
    from tuning_platform.guard import TrialGuard
    from tuning_platform.interrupt import TrialOutcomes
    from tuning_platform.memory import FreedMemoryReturned
    from tuning_platform.tracking import config_key
    from tuning_platform.waiting import WaitingForNodes
    from tuning_platform.warm_up import PicturesWarmedUp

    shown = tuple(spec.search.space)
    sources = {config_key(point, shown): source for point, source in reseed or []}
    callbacks = [
        SurvivingCheckpoints(),
        TrialOutcomes(run_name),
        tracker.trial_callback(spec.metric, spec.max_t, run_name, shown, sources),
        # Tune's own records of each trial, as it writes them by default: its result grid and
        # `--resume` read them. Its third default, TensorBoard files, is left out (below).
        CSVLoggerCallback(),
        JsonLoggerCallback(),
        FreedMemoryReturned(),  # a driver of thousands of trials keeps no freed memory (memory.py)
        PicturesWarmedUp(spec.search.num_samples),  # the insight's imports on an idle slot (warm_up.py)
    ]
    if capacity.autoscaling:
        callbacks.append(WaitingForNodes())
    cut_at = spec.max_t if spec.max_t is not None and spec.epochs is not None and spec.max_t < spec.epochs else None
    tuner = tune.Tuner(
        trainable,
        param_space=trial_config(spec, data),
        tune_config=tune_config(spec, resources, capacity, history, [point for point, _ in reseed or []] or None),
        # Tune saves this run config with the job's state; `resume` gets the same back.
        run_config=tune.RunConfig(
            name=run_name,
            storage_path=storage_path,
            stop=TrialGuard(spec.metric, spec.mode, cut_at),
            callbacks=callbacks,
            checkpoint_config=checkpoint_config(spec),
            failure_config=tune.FailureConfig(max_failures=spec.failure.max_failures),
        ),
    )
    with _tune_resume_hint_hidden(), _no_tensorboard_files():
        return tuner.fit()


def restore(spec: Spec, resume: ResumeTarget, trainable: Any, data: dict[str, Any]) -> ResultGrid:
    """Continue a job from Ray's saved state: its searcher, its finished trials as they were,
    unfinished and errored trials from their last checkpoints."""
    from ray import tune

    tuner = tune.Tuner.restore(
        resume.experiment_path,
        trainable=trainable,
        resume_unfinished=True,
        resume_errored=True,
        param_space=trial_config(spec, data),
    )
    with _tune_resume_hint_hidden():
        return tuner.fit()


def trial_config(spec: Spec, data: dict[str, Any]) -> dict[str, Any]:
    """Tune's param space: the search domains, the fixed values, the data block and the seed."""
    config = param_space(spec, data)
    config.setdefault("seed", spec.search.seed)
    return config


class _HideTuneResumeHint(logging.Filter):
    # After Ctrl-C Tune suggests `Tuner.restore(...)`; the job says how to resume it instead.
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


# Tune adds each default logger a run lacks unless this is "1": `_create_default_callbacks`,
# ray/tune/utils/callback.py line 123 in Ray 2.60.
_AUTO_LOGGERS_OFF = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"


@contextmanager
def _no_tensorboard_files() -> Iterator[None]:
    """With CSV and JSON given, Tune leaves out only its TensorBoard logger. MLflow holds the same
    metrics, and tensorboardX cost the driver 1.8 s of imports (it imports torch), a file write
    per result and a writer per trial that `atexit` keeps to the end of the process.

    Set only while the run is built, so a notebook's own Tune runs keep Tune's defaults. A resumed
    run (`restore`) is left as Tune builds it: a job started before this change has no CSV and
    JSON loggers of its own, so there it adds all three again.
    """
    before = os.environ.get(_AUTO_LOGGERS_OFF)
    os.environ[_AUTO_LOGGERS_OFF] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(_AUTO_LOGGERS_OFF, None)
        else:
            os.environ[_AUTO_LOGGERS_OFF] = before


def _trial_dirname(trial: Any) -> str:
    return f"{trial.trainable_name}_{trial.trial_id}"
