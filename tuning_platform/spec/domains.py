"""A spec's search space as Ray Tune domains, and the Tune `param_space` of a job."""

from __future__ import annotations

from typing import Any

from tuning_platform.spec.conditions import is_conditional
from tuning_platform.spec.schema import ChoiceDomain, IntDomain, LogUniformDomain, Spec, UniformDomain


def to_tune_domain(domain: UniformDomain | LogUniformDomain | IntDomain | ChoiceDomain) -> Any:
    """One spec domain as a Ray Tune search domain (which OptunaSearch converts in turn)."""
    from ray import tune

    if isinstance(domain, UniformDomain):
        return tune.uniform(domain.low, domain.high)
    if isinstance(domain, LogUniformDomain):
        return tune.loguniform(domain.low, domain.high)
    if isinstance(domain, IntDomain):
        # Tune's integer upper bound is exclusive; the spec's is inclusive.
        sampler = tune.lograndint if domain.log else tune.randint
        return sampler(domain.low, domain.high + 1)
    return tune.choice(list(domain.values))


def searcher_holds_space(spec: Spec) -> bool:
    """Whether the searcher draws the searched parameters itself (a grid, or a conditional
    space: a trial's config then holds only its active ones, which Tune's own domains, always
    sampled, cannot express), so Tune's `param_space` has no domains."""
    return spec.search.algorithm == "grid" or is_conditional(spec.search.space)


def param_space(spec: Spec, data: dict[str, Any]) -> dict[str, Any]:
    """The Tune `param_space`: sampled domains (unless the searcher holds them), fixed
    constants and the data block."""
    space: dict[str, Any] = {}
    if not searcher_holds_space(spec):
        space = {name: to_tune_domain(d) for name, d in spec.search.space.items()}  # type: ignore[arg-type]
    space.update(spec.search.fixed)
    space["data"] = data
    return space
