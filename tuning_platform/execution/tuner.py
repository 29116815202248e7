"""The Ray Tune run of a job: the trainable with its data and resources, Optuna TPE (or random
search), ASHA (or FIFO), the platform's callbacks, and `fit` or, for `resume`, `restore`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from tuning_platform._compat.ray import (
    auto_loggers_off,
    node_losses_not_counted,
    starting_actors_kept,
    tune_loop_per_trial_costs_cut,
    tune_resume_hint_hidden,
)
from tuning_platform.cluster.capacity import Capacity, TrialResources, as_tune_resources
from tuning_platform.cluster.waiting import WaitingForNodes
from tuning_platform.contract import SplitDataset
from tuning_platform.execution.checkpoints import SurvivingCheckpoints, checkpoint_config
from tuning_platform.execution.guard import TrialGuard
from tuning_platform.execution.interrupt import TrialOutcomes
from tuning_platform.execution.memory import FreedMemoryReturned
from tuning_platform.execution.searcher import trial_dirname, tune_config
from tuning_platform.execution.warm_up import PicturesWarmedUp
from tuning_platform.records import config_key
from tuning_platform.spec import Spec, param_space

if TYPE_CHECKING:
    from ray.tune import ResultGrid

    from tuning_platform.execution.resume import ResumeTarget
    from tuning_platform.request import JobRequest
    from tuning_platform.search.study import RecordedTrial
    from tuning_platform.tracking.parent import JobTracker


def build_trainable(
    request: JobRequest, resources: TrialResources, dataset: Any, run_name: str, storage_path: str
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
        return tune.with_resources(trainable, as_tune_resources(resources))

    from trainables.distributed import DRIVER_RESOURCES, data_parallel
    from trainables.loop import Task as LoopTask

    # A data-parallel trial runs the trainables' own loop on every worker, which needs the whole
    # `trainables.loop.Task` (model, optimizer, batches), not only what the driver calls.
    trainable = data_parallel(
        cast(LoopTask, request.trainable.task),
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
    return tune.with_resources(trainable, {key: float(value) for key, value in DRIVER_RESOURCES.items()})


def trial_data(dataset: Any) -> Any:
    """The data a trial gets: a built-in dataset without its test split, which only the final
    model is scored on (`registry.score_on_test`)."""
    return dataset.for_trials() if isinstance(dataset, SplitDataset) else dataset


@dataclass(frozen=True)
class RunSetup:
    """What every Tune run of a job shares (its trials, an extension's, `selection`'s reseeded
    runs): the trainable with its data and resources, where Ray keeps the runs, and where their
    trials are recorded."""

    trainable: Any
    data: dict[str, Any]
    storage_path: str
    tracker: JobTracker
    resources: TrialResources
    capacity: Capacity


def fit(
    spec: Spec,
    setup: RunSetup,
    run_name: str,
    history: list[RecordedTrial] | None = None,
    reseed: list[tuple[dict[str, Any], str]] | None = None,
) -> ResultGrid:
    """A new Tune run, to its end (or to Ctrl-C / SIGTERM, after which Tune saved its state):
    a new job's, an extension's, or the reseeded runs of `selection`. `history`: the earlier
    trials its searcher starts from. `reseed`: the configurations to run (searched params and
    a seed) with the trial each one comes from."""
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    shown = tuple(spec.search.space)
    sources = {config_key(point, shown): source for point, source in reseed or []}
    callbacks = [
        SurvivingCheckpoints(),
        TrialOutcomes(run_name),
        setup.tracker.trial_callback(
            spec.metric, spec.max_t, run_name, shown, sources, tuple(spec.required_metrics[1:])
        ),
        # Tune's own records of each trial, as it writes them by default: its result grid and
        # `--resume` read them. Its third default, TensorBoard files, is left out (below).
        CSVLoggerCallback(),
        JsonLoggerCallback(),
        FreedMemoryReturned(),  # a driver of thousands of trials keeps no freed memory (memory.py)
        PicturesWarmedUp(spec.planned_trials),  # the insight's imports on an idle slot (warm_up.py)
    ]
    if setup.capacity.autoscaling:
        callbacks.append(WaitingForNodes())
    cut_at = spec.max_t if spec.max_t is not None and spec.epochs is not None and spec.max_t < spec.epochs else None
    points = [point for point, _ in reseed or []] or None
    tuner = tune.Tuner(
        setup.trainable,
        param_space=trial_config(spec, setup.data),
        tune_config=tune_config(spec, setup.resources, setup.capacity, history, points),
        # Tune saves this run config with the job's state; `resume` gets the same back.
        run_config=tune.RunConfig(
            name=run_name,
            storage_path=setup.storage_path,
            stop=TrialGuard(spec.metric, spec.mode, cut_at, spec.objective_list, spec.required_metrics),
            callbacks=callbacks,
            checkpoint_config=checkpoint_config(spec),
            # The trial's own errors: a trial whose node was lost goes on without spending one
            # (`node_losses_not_counted`; Ray alone would count it, see _compat/ray.py).
            failure_config=tune.FailureConfig(max_failures=spec.failure.max_failures),
        ),
    )
    with (
        tune_resume_hint_hidden(),
        auto_loggers_off(),
        node_losses_not_counted(),
        tune_loop_per_trial_costs_cut(),
        starting_actors_kept(),
    ):
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
    with tune_resume_hint_hidden(), node_losses_not_counted(), tune_loop_per_trial_costs_cut(), starting_actors_kept():
        return tuner.fit()


def trial_config(spec: Spec, data: dict[str, Any]) -> dict[str, Any]:
    """Tune's param space: the search domains, the fixed values, the data block and the seed."""
    config = param_space(spec, data)
    config.setdefault("seed", spec.search.seed)
    return config


# A job saved before the move into packages pickled Tune's trial-folder namer by this name.
_trial_dirname = trial_dirname
