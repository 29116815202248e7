"""The typed schema of a spec: every key, its type, its default and the rules of one key."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
PARAM_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


def _high_above_low(high: float, info: ValidationInfo) -> float:
    low = info.data.get("low")
    if low is not None and high <= low:
        raise ValueError(f"high must be > low ({low})")
    return high


class _Bounded(StrictModel):
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


class IntDomain(StrictModel):
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


class ChoiceDomain(StrictModel):
    type: Literal["choice"]
    values: list[Any] = Field(min_length=1)


Domain = Annotated[UniformDomain | LogUniformDomain | IntDomain | ChoiceDomain, Field(discriminator="type")]
DOMAIN_TYPES = ("uniform", "loguniform", "int", "choice")


class SamplerSpec(StrictModel):
    """Optuna TPE's settings, stated rather than left to Optuna's defaults (Optuna 5 changed
    several), so a job proposes the same way on another Optuna version. Logged on the parent run."""

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
    algorithm: Literal["optuna", "random"] = "optuna"
    num_samples: int = Field(default=16, ge=1)
    max_concurrent: int | None = Field(default=None, ge=1)
    seed: int = 0
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    warm_start: WarmStartSpec | None = None
    space: dict[str, Domain] = Field(default_factory=dict)
    fixed: dict[str, Any] = Field(default_factory=dict)


class SchedulerSpec(StrictModel):
    type: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(default=1, ge=1)
    reduction_factor: float = Field(default=3, gt=1)
    max_t: int | None = Field(default=None, ge=1)


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


class SelectionSpec(StrictModel):
    """A robust champion: the `top_k` configurations of the search trained again with `seeds`
    new seeds each, to the full epoch budget; the best mean wins."""

    top_k: int = Field(default=3, ge=1)
    seeds: int = Field(default=3, ge=2)


class Spec(StrictModel):
    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    trainable: str = Field(min_length=1)
    metric: str = Field(min_length=1)
    mode: Literal["max", "min"]
    data: dict[str, Any] = Field(default_factory=dict)
    search: SearchSpec = Field(default_factory=SearchSpec)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    failure: FailureSpec = Field(default_factory=FailureSpec)
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    selection: SelectionSpec | None = None
    storage_path: str | None = None

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
    def registered_model_name(self) -> str | None:
        if self.tracking.register_model is False:
            return None
        return self.tracking.register_model or self.name
