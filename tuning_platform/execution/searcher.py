"""How Tune searches a job's space: Optuna TPE or NSGA-II (or random search) over the job's
objectives and constraints, ASHA (several objectives or constraints: the multi-objective ASHA of
`mo_asha.py`) or FIFO, and the `TuneConfig` that holds them with the samples, concurrency and
actor reuse."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tuning_platform.cluster.capacity import Capacity, TrialResources, concurrent_groups
from tuning_platform.search.conditional import ConditionalSpace
from tuning_platform.search.study import build_sampler, study_of
from tuning_platform.spec import Spec
from tuning_platform.spec.conditions import is_conditional
from tuning_platform.spec.domains import searcher_holds_space

if TYPE_CHECKING:
    from ray.tune import TuneConfig

    from tuning_platform.search.study import RecordedTrial


def build_search(
    spec: Spec,
    history: list[RecordedTrial] | None = None,
    points: list[dict[str, Any]] | None = None,
    max_concurrent: int | None = None,
) -> Any:
    """Optuna with the spec's sampler and settings, random search, or the grid. `history`:
    earlier trials the searcher starts from (an extended or warm-started job); those that fit
    the space are added to its study as finished trials, so the sampler weighs them as its own.
    `points`: configurations random search runs first (the reseeded ones of `selection`).
    `max_concurrent`: the trials at once, which Tune's own random search must be given itself.

    A conditional space (`when:`) is drawn by Optuna in both cases (`search/conditional.py`):
    Tune's own random search samples every parameter of `param_space` for every trial."""
    if spec.search.algorithm == "grid":
        from tuning_platform.search.grid import GridSearch  # imports Ray Tune

        return GridSearch(spec.search.space, repeats=spec.search.num_samples)
    if points and searcher_holds_space(spec):
        from tuning_platform.search.grid import PointsSearch  # imports Ray Tune

        return PointsSearch(points)
    random = spec.search.algorithm == "random"
    if not random or (is_conditional(spec.search.space) and not points):
        import optuna

        from tuning_platform.search.optuna_search import TrialSearch  # imports Ray Tune

        # OptunaSearch opens the study of that name in the storage it is given (load_if_exists).
        storage = optuna.storages.InMemoryStorage()
        study_of(spec, history or [], storage)
        sampler = optuna.samplers.RandomSampler(seed=spec.search.seed) if random else None
        return TrialSearch(
            objectives=spec.objective_list,
            constraints=spec.constraint_list,
            horizon=spec.max_t if spec.scheduler.type == "asha" else None,
            space=ConditionalSpace(spec.search.space) if is_conditional(spec.search.space) else None,
            sampler=sampler or build_sampler(spec, len(history or [])),
            storage=storage,
            study_name=spec.name,
        )
    # Random search, and the reseeded runs of `selection` (their points in full, nothing drawn).
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(
        points_to_evaluate=points, random_state=spec.search.seed, max_concurrent=max_concurrent or 0
    )


def build_scheduler(spec: Spec) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if spec.scheduler.type == "pbt":
        from tuning_platform.execution.pbt import build_pbt  # imports Ray Tune

        return build_pbt(spec)
    if spec.scheduler.type == "asha" and (spec.multi_objective or spec.constraints):
        from tuning_platform.execution.mo_asha import MultiObjectiveASHA  # imports Ray Tune

        assert spec.max_t is not None  # the spec's rules require a horizon for ASHA
        return MultiObjectiveASHA(
            time_attr="epoch",
            objectives=spec.objective_list,
            constraints=spec.constraint_list,
            max_t=spec.max_t,
            grace_period=spec.scheduler.grace_period,
            reduction_factor=spec.scheduler.reduction_factor,
        )
    if spec.scheduler.type == "asha":
        assert spec.max_t is not None  # the spec's rules require a horizon for ASHA
        return ASHAScheduler(
            time_attr="epoch",
            max_t=spec.max_t,
            grace_period=spec.scheduler.grace_period,
            reduction_factor=spec.scheduler.reduction_factor,
        )
    return FIFOScheduler()


def tune_config(
    spec: Spec,
    resources: TrialResources,
    capacity: Capacity | None = None,
    history: list[RecordedTrial] | None = None,
    points: list[dict[str, Any]] | None = None,
) -> TuneConfig:
    """How Tune runs the job's trials: metric, searcher, scheduler, samples, concurrency, actors.

    The benchmarks' plain Ray Tune run of the same trials uses it too, so both share every setting.
    """
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    at_once = concurrent_groups(spec, resources, capacity)
    search = build_search(spec, history, points, at_once)
    return tune.TuneConfig(
        metric=spec.metric,
        mode=spec.mode,
        search_alg=search,
        scheduler=build_scheduler(spec),
        num_samples=spec.planned_trials,  # a grid's configurations times its repetitions
        # Tune limits a Searcher (Optuna, the grid) itself, but ignores this for its own random
        # search given explicitly (ray/tune/tune.py, `run`: "max_concurrent_trials will be
        # ignored"), which was given it above instead.
        max_concurrent_trials=None if isinstance(search, BasicVariantGenerator) else at_once,
        # Ray 2.60 defaults to False, and each fresh actor costs seconds. A data-parallel
        # trial's driver is not reused: ending its actor is what ends its Train workers.
        reuse_actors=spec.resources.workers == 1,
        time_budget_s=spec.budget.time_s,
        # Short trial folders: the default repeats every parameter in the name.
        trial_dirname_creator=trial_dirname,
    )


def trial_dirname(trial: Any) -> str:
    return f"{trial.trainable_name}_{trial.trial_id}"
