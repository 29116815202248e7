"""The typed schema of a spec: every key, its type, its default and the rules of one key."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from tuning_platform.objectives import Constraint, Objective, parse_constraint

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
PARAM_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class _Conditional(StrictModel):
    """A parameter of the space, searched only in the trials whose `when` holds: each key a
    `choice` (or `grid`) parameter of the same space, each value one of its values or a list of
    them (`spec/conditions.py` reads it; `spec/rules.py` checks it against the space)."""

    when: dict[str, Any] | None = Field(default=None, min_length=1)


def _high_above_low(high: float, info: ValidationInfo) -> float:
    low = info.data.get("low")
    if low is not None and high <= low:
        raise ValueError(f"high must be > low ({low})")
    return high


class _Bounded(_Conditional):
    low: float
    high: float

    _check_high = field_validator("high")(_high_above_low)


class UniformDomain(_Bounded):
    type: Literal["uniform"]


class LogUniformDomain(_Bounded):
    type: Literal["loguniform"]

    @field_validator("low")
    @classmethod
    def _positive(cls, low: float) -> float:
        if low <= 0:
            raise ValueError("low must be > 0 for loguniform")
        return low


class IntDomain(_Conditional):
    """Integers from low to high, both inclusive."""

    type: Literal["int"]
    low: int
    high: int
    log: bool = False

    _check_high = field_validator("high")(_high_above_low)

    @field_validator("log")
    @classmethod
    def _log_needs_positive(cls, log: bool, info: ValidationInfo) -> bool:
        low = info.data.get("low")
        if log and low is not None and low < 1:
            raise ValueError(f"log: true needs low >= 1 (low is {low})")
        return log


class ChoiceDomain(_Conditional):
    type: Literal["choice"]
    values: list[Any] = Field(min_length=1)


class GridDomain(_Conditional):
    """Every value, in every combination with the other grid parameters (`algorithm: grid`)."""

    type: Literal["grid"]
    values: list[Any] = Field(min_length=1)


Domain = Annotated[
    UniformDomain | LogUniformDomain | IntDomain | ChoiceDomain | GridDomain, Field(discriminator="type")
]
DOMAIN_TYPES = ("uniform", "loguniform", "int", "choice", "grid")
# What PBT's mutations may be: a distribution to resample from or a list to step through.
MutationDomain = Annotated[UniformDomain | LogUniformDomain | IntDomain | ChoiceDomain, Field(discriminator="type")]


class SamplerSpec(StrictModel):
    """Optuna's sampler and its settings, stated rather than left to Optuna's defaults (Optuna 5
    changed several), so a job proposes the same way on another Optuna version. Logged on the
    parent run. `tpe` (the default, for one objective or several) or `nsga2` (Optuna's NSGA-II,
    a genetic search over several objectives); the TPE settings below are TPE's only."""

    type: Literal["tpe", "nsga2"] = "tpe"
    # NSGA-II's generation: its first `population_size` trials are random.
    population_size: int = Field(default=50, ge=2)
    n_startup_trials: int = Field(default=10, ge=0)
    n_ei_candidates: int = Field(default=24, ge=1)
    # One joint density over all parameters instead of one per parameter.
    multivariate: bool = True
    # Trials still running count as bad results, so parallel trials do not all propose alike.
    constant_liar: bool = True
    # Past this many trials TPE looks at the best 25 and the last `window` only, so a proposal
    # costs the same at trial 10,000 as at 500 (tuning_platform/search/sampler.py); null: all trials.
    window: int | None = Field(default=500, ge=1)


class WarmStartSpec(StrictModel):
    """Earlier jobs whose trials seed the searcher: every job of an experiment, or parent runs."""

    experiment: str | None = None
    parent_runs: list[str] = Field(default_factory=list)

    @field_validator("parent_runs")
    @classmethod
    def _one_source(cls, parent_runs: list[str], info: ValidationInfo) -> list[str]:
        if bool(parent_runs) == bool(info.data.get("experiment")):
            raise ValueError("give either experiment: NAME or parent_runs: [RUN_ID, ...]")
        return parent_runs


class SearchSpec(StrictModel):
    # grid: the product of the space's grid and choice values, run `num_samples` times over.
    algorithm: Literal["optuna", "random", "grid"] = "optuna"
    num_samples: int = Field(default=16, ge=1)
    max_concurrent: int | None = Field(default=None, ge=1)
    seed: int = 0
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    warm_start: WarmStartSpec | None = None
    space: dict[str, Domain] = Field(default_factory=dict)
    fixed: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _grid_runs_once(cls, raw: Any) -> Any:
        """With a grid, `num_samples` counts repetitions of the whole grid (as in Ray): once
        unless given."""
        if isinstance(raw, dict) and raw.get("algorithm") == "grid" and "num_samples" not in raw:
            return {**raw, "num_samples": 1}
        return raw


class SchedulerSpec(StrictModel):
    """ASHA (stops weak trials at rungs), FIFO (stops none), or PBT: a population of
    `search.num_samples` trials trains together; every `perturbation_interval` epochs a trial in
    the bottom `quantile_fraction` copies the checkpoint of one in the top and perturbs the
    `mutations` (resampled with `resample_probability`, else multiplied by 0.8 or 1.2, or moved
    to a neighbouring choice), as Ray's PopulationBasedTraining does."""

    type: Literal["asha", "fifo", "pbt"] = "asha"
    grace_period: int = Field(default=1, ge=1)
    reduction_factor: float = Field(default=3, gt=1)
    max_t: int | None = Field(default=None, ge=1)
    # PBT's settings; the rules refuse them with another scheduler. None: a quarter of the epochs.
    perturbation_interval: int | None = Field(default=None, ge=1)
    quantile_fraction: float = Field(default=0.25, gt=0, le=0.5)
    resample_probability: float = Field(default=0.25, ge=0, le=1)
    mutations: dict[str, MutationDomain] = Field(default_factory=dict)


class ResourcesSpec(StrictModel):
    cpu: float = Field(default=1, gt=0)
    gpu: float = Field(default=0, ge=0)
    workers: int = Field(default=1, ge=1)

    @field_validator("gpu")
    @classmethod
    def _whole_above_one(cls, gpu: float) -> float:
        if gpu > 1 and gpu != int(gpu):
            raise ValueError("gpu above 1 must be a whole number (Ray packs only fractions of one GPU)")
        return gpu


class TrackingSpec(StrictModel):
    uri: str | None = None
    # None: register under the spec's name; false: do not register.
    register_model: str | Literal[False] | None = None


class FailureSpec(StrictModel):
    max_failures: int = Field(default=1, ge=0)


class BudgetSpec(StrictModel):
    time_s: float | None = Field(default=None, gt=0)


class PreferRule(StrictModel):
    """The best feasible trial on one objective."""

    prefer: str = Field(min_length=1)


# `knee`: the front's point nearest the ideal point, each objective scaled to [0, 1].
SelectionRule = Literal["knee"] | PreferRule


class SelectionSpec(StrictModel):
    """Which model is registered. `rule` picks one trial from the feasible Pareto front of a
    several-objective job (default: the best on the first objective). `top_k`/`seeds`: a robust
    champion, the `top_k` configurations of the search trained again with `seeds` new seeds each,
    to the full epoch budget; the best mean (by the rule) wins. Given alone, `rule` reseeds
    nothing; `top_k` and `seeds` default to 3 each when either is given, or when `rule` is not."""

    top_k: int | None = Field(default=None, ge=1)
    seeds: int | None = Field(default=None, ge=2)
    rule: SelectionRule | None = None

    @model_validator(mode="after")
    def _reseed_defaults(self) -> SelectionSpec:
        if self.rule is None or self.top_k is not None or self.seeds is not None:
            self.top_k = 3 if self.top_k is None else self.top_k
            self.seeds = 3 if self.seeds is None else self.seeds
        return self

    @property
    def reseeds(self) -> bool:
        """Whether the top configurations are trained again with new seeds."""
        return self.top_k is not None


class ObjectiveSpec(StrictModel):
    metric: str = Field(min_length=1)
    mode: Literal["max", "min"]


class Spec(StrictModel):
    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    trainable: str = Field(min_length=1)
    # One objective (`metric` and `mode`), or several (`objectives`): exactly one of the two forms
    # (`load.validate_spec` says so). With `objectives`, `metric`/`mode` are the primary objective
    # (`_primary_objective`): what Tune, checkpoint retention and a one-number summary read.
    metric: str = Field(min_length=1)
    mode: Literal["max", "min"]
    objectives: list[ObjectiveSpec] | None = Field(default=None, min_length=1, max_length=3)
    # `"latency_ms <= 5"`: a reported metric, an operator, a number. Judged on a trial's last result.
    constraints: list[str] = Field(default_factory=list)
    data: dict[str, Any] = Field(default_factory=dict)
    search: SearchSpec = Field(default_factory=SearchSpec)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    failure: FailureSpec = Field(default_factory=FailureSpec)
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    selection: SelectionSpec | None = None
    storage_path: str | None = None

    @field_validator("constraints")
    @classmethod
    def _constraints_parse(cls, constraints: list[str]) -> list[str]:
        for text in constraints:
            parse_constraint(text)
        return constraints

    @model_validator(mode="before")
    @classmethod
    def _primary_objective(cls, raw: Any) -> Any:
        """With `objectives`, metric and mode are its primary objective: the one
        `selection.rule.prefer` names, else the first."""
        if not isinstance(raw, dict) or not isinstance(raw.get("objectives"), list):
            return raw
        listed = [o for o in raw["objectives"] if isinstance(o, dict) and isinstance(o.get("metric"), str)]
        if not listed:
            return raw
        selection = raw.get("selection")
        rule = selection.get("rule") if isinstance(selection, dict) else None
        prefer = rule.get("prefer") if isinstance(rule, dict) else None
        primary = next((o for o in listed if o["metric"] == prefer), listed[0])
        return {**raw, "metric": primary["metric"], "mode": primary.get("mode")}

    @field_validator("objectives")
    @classmethod
    def _objectives_named_once(cls, objectives: list[ObjectiveSpec] | None) -> list[ObjectiveSpec] | None:
        names = [objective.metric for objective in objectives or []]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"{twice[0]!r} is listed twice")
        return objectives

    @property
    def objective_list(self) -> list[Objective]:
        """The objectives in the spec's order (one: the metric and its mode)."""
        if self.objectives is None:
            return [Objective(self.metric, self.mode)]
        return [Objective(objective.metric, objective.mode) for objective in self.objectives]

    @property
    def multi_objective(self) -> bool:
        return self.objectives is not None and len(self.objectives) > 1

    @property
    def constraint_list(self) -> list[Constraint]:
        return [parse_constraint(text) for text in self.constraints]

    @property
    def required_metrics(self) -> list[str]:
        """What every trial must report: the primary objective first, the other objectives,
        the constraints' metrics."""
        names = [self.metric, *(o.metric for o in self.objective_list), *(c.metric for c in self.constraint_list)]
        return list(dict.fromkeys(names))

    @property
    def planned_trials(self) -> int:
        """The trials the search runs: `num_samples`, or with a grid each of its configurations
        `num_samples` times."""
        if self.search.algorithm == "grid":
            from tuning_platform.spec.conditions import grid_points  # it imports this module

            return len(grid_points(self.search.space)) * self.search.num_samples
        return self.search.num_samples

    @property
    def epochs(self) -> int | None:
        """The epochs a trial may train (`search.fixed.epochs`); None when the spec leaves it to
        the trainable, which only a scheduler without a horizon (FIFO) allows."""
        epochs = self.search.fixed.get("epochs")
        return None if epochs is None else int(epochs)

    @property
    def max_t(self) -> int | None:
        """The horizon in epochs: ASHA's `max_t`; None when there is none (FIFO without epochs)."""
        return self.scheduler.max_t or self.epochs

    @property
    def selection_rule(self) -> Literal["knee"] | PreferRule | None:
        return self.selection.rule if self.selection is not None else None

    @property
    def registered_model_name(self) -> str | None:
        if self.tracking.register_model is False:
            return None
        return self.tracking.register_model or self.name


# Keys added after jobs were recorded, left out of a spec's settings while at their defaults so
# that the fingerprints `--resume` compares stay those of the jobs that exist.
_LATER_DEFAULTS: dict[tuple[str, ...], Any] = {
    ("objectives",): None,
    ("constraints",): [],
    ("search", "sampler", "type"): "tpe",
    ("search", "sampler", "population_size"): 50,
    ("selection", "rule"): None,
    ("scheduler", "perturbation_interval"): None,
    ("scheduler", "quantile_fraction"): 0.25,
    ("scheduler", "resample_probability"): 0.25,
    ("scheduler", "mutations"): {},
}


def spec_settings(spec: Spec) -> dict[str, Any]:
    """The spec as plain data, in the form its user wrote: with `objectives`, no metric/mode
    (they are derived); keys added later left out while at their defaults."""
    settings = spec.model_dump(mode="json")
    if spec.objectives is not None:
        settings.pop("metric")
        settings.pop("mode")
    for path, default in _LATER_DEFAULTS.items():
        node: Any = settings
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get(path[-1], default) == default:
            node.pop(path[-1], None)
    for domain in settings["search"]["space"].values():  # `when` came later too
        if domain.get("when") is None:
            domain.pop("when", None)
    return settings
