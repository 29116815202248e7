"""The search as an Optuna study, rebuilt from what MLflow recorded of each trial.

The trial runs of a job hold everything a study needs: the parameters (run params), the metric
per epoch (intermediate values), how the trial ended (`trial_status`), and when. Built from
there rather than from Ray's searcher state, one study covers a resumed job, an extended job
(several Ray runs under one parent run) and the jobs a warm start learns from alike. It feeds
the search insight (`insight/`) and seeds the searcher of an extended or warm-started job.

Values are what Ray's `OptunaSearch` tells its study for a live trial: the metric of the
trial's last result, so seeded and live trials are ranked alike. A trial ASHA stopped early is
PRUNED with its per-epoch values, which TPE ranks by how far it got (Optuna's own rule for
pruned trials), never as a finished result.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tuning_platform.outcome import TrialRow
from tuning_platform.ranking import best, direction
from tuning_platform.records import (
    LEARNED_FROM,
    PBT_CONFIG_TAG,
    RAY_RUN_TAG,
    TRIAL_ID_TAG,
    TRIAL_STATUS_TAG,
    UNSTABLE,
    TrialStatus,
)
from tuning_platform.search.conditional import distribution
from tuning_platform.search.sampler import WindowedTPESampler
from tuning_platform.spec import ChoiceDomain, GridDomain, IntDomain, Spec
from tuning_platform.spec.conditions import holds, in_order, is_conditional
from tuning_platform.tracking.queries import metric_histories, trial_run_records

if TYPE_CHECKING:
    import optuna
    from mlflow.tracking import MlflowClient


@dataclass
class RecordedTrial:
    """One trial run of a job, as MLflow holds it."""

    trial_id: str
    run_id: str
    parent_run_id: str
    status: TrialStatus  # as its run's trial_status tag says (`running`: it never ended)
    params: dict[str, str]  # as logged: strings
    history: list[tuple[int, float]] = field(default_factory=list)  # (epoch, metric), in epoch order
    start_ms: int = 0
    end_ms: int | None = None
    ray_run: str = ""  # the Ray run it belongs to; empty on runs recorded before that was kept
    # The last value of each metric the job judges a trial by (the metric, every objective, the
    # constraints' metrics): its point on the front and whether it is feasible.
    finals: dict[str, float] = field(default_factory=dict)
    # A PBT trial that copied another: the searched parameters it ended with (its params are
    # those it started with). None otherwise.
    end_params: dict[str, Any] | None = None

    @property
    def last_value(self) -> float | None:
        return self.history[-1][1] if self.history else None


def recorded_trials(
    client: MlflowClient, experiment_id: str, parent_run_id: str, metric: str, also: Sequence[str] = ()
) -> list[RecordedTrial]:
    """The trial runs of one job, oldest first, with the metric's history of each and the last
    value of the metrics `also` names (a job of several objectives or with constraints)."""
    runs = trial_run_records(client, experiment_id, parent_run_id)
    run_ids = [run.run_id for run in runs]
    histories = metric_histories(client, run_ids, metric)
    others = {name: metric_histories(client, run_ids, name) for name in dict.fromkeys(also) if name != metric}
    trials = []
    for run in runs:
        tags = run.tags
        per_epoch = _per_epoch(histories[run.run_id])
        finals = {metric: per_epoch[max(per_epoch)]} if per_epoch else {}
        for name, other in others.items():
            values = _per_epoch(other[run.run_id])
            if values:
                finals[name] = values[max(values)]
        trials.append(
            RecordedTrial(
                trial_id=tags[TRIAL_ID_TAG],
                run_id=run.run_id,
                parent_run_id=parent_run_id,
                status=TrialStatus(tags.get(TRIAL_STATUS_TAG, TrialStatus.RUNNING)),
                params=run.params,
                history=sorted(per_epoch.items()),
                start_ms=run.start_ms,
                end_ms=run.end_ms,
                ray_run=tags.get(RAY_RUN_TAG, ""),
                finals=finals,
                end_params=json.loads(tags[PBT_CONFIG_TAG]) if PBT_CONFIG_TAG in tags else None,
            )
        )
    trials.sort(key=lambda t: (t.start_ms, t.trial_id))
    return trials


def _per_epoch(logged: list[Any]) -> dict[int, float]:
    """Finite values by epoch. A trial resumed from an older checkpoint may have logged an
    epoch twice: the last counts."""
    ordered = sorted(logged, key=lambda m: (m.step, m.timestamp))
    return {m.step: m.value for m in ordered if math.isfinite(m.value)}


def best_value(trial: RecordedTrial, mode: str) -> float | None:
    """The trial's best value over its epochs, as the job ranks trials; none when it failed or
    diverged (its configuration is unstable, see `results.best_trial`)."""
    values = [v for _, v in trial.history]
    if not values or trial.status in UNSTABLE:
        return None
    return best(values, mode)


def as_row(trial: RecordedTrial, spec: Spec) -> TrialRow:
    """A recorded trial as a row of the job's outcome (an extended job's earlier trials)."""
    status = TrialStatus.INTERRUPTED if trial.status == TrialStatus.RUNNING else trial.status
    epochs = trial.history[-1][0] if trial.history else 0
    params = fitting_params(trial, spec) or {}
    return TrialRow(trial.trial_id, status, epochs, best_value(trial, spec.mode), params, finals=dict(trial.finals))


def distributions(spec: Spec) -> dict[str, Any]:
    """The Optuna distribution of each searched parameter, as Ray's `OptunaSearch` converts
    the job's Tune domains (and `conditional.ConditionalSpace` suggests them), so seeded trials
    and live ones share one search space. A trial holds those of its active parameters only."""
    return {name: distribution(domain) for name, domain in spec.search.space.items()}


def fitting_params(trial: RecordedTrial, spec: Spec) -> dict[str, Any] | None:
    """The trial's active parameters in the spec's space, or None when the trial does not fit
    it: an active parameter's value outside the space (or missing), or a value the spec now
    fixes that the trial ran with another value (or without). A parameter the spec's `when`
    makes inactive for this trial is left out, whatever the trial logged for it (an earlier job
    without conditions logged every one)."""
    params: dict[str, Any] = {}
    for name in in_order(spec.search.space):  # each parameter after those its `when` names
        domain = spec.search.space[name]
        if not holds(domain, params):
            continue
        value = _parse(trial.params.get(name), domain)
        if value is None:
            return None
        params[name] = value
    params = {name: params[name] for name in spec.search.space if name in params}  # the spec's order
    for name, fixed in spec.search.fixed.items():
        if name == "seed":
            continue  # a trial's seed changes nothing about what its parameters are worth
        if trial.params.get(name) != str(fixed):
            return None
    return params


def _parse(text: str | None, domain: Any) -> Any:
    if text is None:
        return None
    if isinstance(domain, (ChoiceDomain, GridDomain)):
        # Logged as str(value): find the choice that prints the same.
        return next((value for value in domain.values if str(value) == text), None)
    try:
        value: Any = float(text)
    except ValueError:
        return None
    if isinstance(domain, IntDomain):
        if value != int(value):
            return None
        value = int(value)
    return value if domain.low <= value <= domain.high else None


def frozen_trial(
    trial: RecordedTrial, params: dict[str, Any], dists: dict[str, Any], spec: Spec
) -> optuna.trial.FrozenTrial | None:
    """The trial as Optuna keeps it: COMPLETE with the last value of each objective, or PRUNED
    (stopped early: with one objective with its per-epoch values, with several without, as
    `optuna_search.TrialSearch` tells a live one), with its constraints; None when a complete
    trial lacks an objective's value."""
    import optuna

    pruned = trial.status == TrialStatus.EARLY_STOPPED
    several = spec.multi_objective
    values = [final_value(trial, o.metric, spec) for o in spec.objective_list]
    if not pruned and any(value is None for value in values):
        return None
    return optuna.trial.create_trial(
        state=optuna.trial.TrialState.PRUNED if pruned else optuna.trial.TrialState.COMPLETE,
        value=trial.last_value if pruned and not several else None,
        values=None if pruned else values,  # type: ignore[arg-type]  # none is None (checked above)
        params=params,
        distributions={name: dists[name] for name in params},
        intermediate_values=None if several else dict(trial.history),
        user_attrs={TRIAL_ID_TAG: trial.trial_id, "parent_run_id": trial.parent_run_id},
        constraints={c.text: c.violation(final_value(trial, c.metric, spec)) for c in spec.constraint_list} or None,
    )


def final_value(trial: RecordedTrial, metric: str, spec: Spec) -> float | None:
    """The trial's last value of a metric (the spec's metric: the last of its history)."""
    return trial.last_value if metric == spec.metric else trial.finals.get(metric)


def study_of(
    spec: Spec, trials: list[RecordedTrial], storage: optuna.storages.BaseStorage | None = None
) -> tuple[optuna.Study, int]:
    """A study (named as the spec, in `storage` or in memory) of the trials a searcher may learn
    from (completed, early-stopped, with a value) that fit the spec's space; also the count of
    trials that did not fit."""
    import optuna

    quiet_optuna()
    dists = distributions(spec)
    study = optuna.create_study(
        storage=storage or optuna.storages.InMemoryStorage(),
        study_name=spec.name,
        directions=[direction(o.mode) for o in spec.objective_list],
    )
    skipped = 0
    for trial in trials:
        if trial.status not in LEARNED_FROM or trial.last_value is None:
            continue
        params = fitting_params(trial, spec)
        if params is None:
            skipped += 1
            continue
        frozen = frozen_trial(trial, params, dists, spec)
        if frozen is not None:
            study.add_trial(frozen)
    return study, skipped


def quiet_optuna() -> None:
    """Optuna's INFO lines ("A new study created in memory ...") say nothing to a user here."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def build_sampler(spec: Spec, history_size: int = 0) -> optuna.samplers.BaseSampler:
    """TPE with the spec's stated settings (`search.sampler`), seeded by `search.seed`, over a
    bounded window of a long study (`sampler.py`); or NSGA-II with its population size.

    A searcher that starts from earlier trials has its seed moved on by their count: with the
    job's own seed an extension would first propose again what the job began with.
    """
    settings = spec.search.sampler
    if settings.type == "nsga2":
        import optuna

        return optuna.samplers.NSGAIISampler(
            population_size=settings.population_size, seed=spec.search.seed + history_size
        )
    # A conditional space: without `group`, multivariate TPE falls back to independent
    # sampling over parameters that are not in every trial (optuna #6746).
    group = settings.multivariate and is_conditional(spec.search.space)
    from optuna.exceptions import ExperimentalWarning  # optuna is optional: imported when searched with

    with warnings.catch_warnings():
        # Optuna marks `group` experimental; the warning would reach every user of a `when:`.
        warnings.simplefilter("ignore", category=ExperimentalWarning)
        return WindowedTPESampler(
            window=settings.window,
            seed=spec.search.seed + history_size,
            n_startup_trials=settings.n_startup_trials,
            n_ei_candidates=settings.n_ei_candidates,
            multivariate=settings.multivariate,
            group=group,
            constant_liar=settings.constant_liar,
        )
