"""A conditional space (`when:`) as Optuna searches it: one define-by-run function, which
Ray's `OptunaSearch` takes as its `space` (it has no declarative form for conditions), drawing
each parameter only when its condition holds on the values drawn before it.

Optuna then records each trial with the distributions of its active parameters only, which TPE
reads per trial; with `multivariate` TPE the sampler is made with `group=True` (`study.py`
`build_sampler`), or Optuna 5 falls back to independent sampling for a space whose parameters
are not in every trial (optuna #6746). Random search over a conditional space is the same
function under Optuna's RandomSampler, so both honour one rule (`spec/conditions.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tuning_platform.spec.conditions import holds, in_order
from tuning_platform.spec.schema import ChoiceDomain, GridDomain, IntDomain, LogUniformDomain, UniformDomain


def distribution(domain: Any) -> Any:
    """The Optuna distribution of one spec domain; the same as Ray's `OptunaSearch` converts
    the Tune domain of `spec.domains.to_tune_domain` to (a test holds the two together)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(domain, (UniformDomain, LogUniformDomain)):
        return FloatDistribution(domain.low, domain.high, log=isinstance(domain, LogUniformDomain))
    if isinstance(domain, IntDomain):
        return IntDistribution(domain.low, domain.high, log=domain.log)
    if isinstance(domain, (ChoiceDomain, GridDomain)):
        return CategoricalDistribution(list(domain.values))
    raise TypeError(f"no Optuna distribution for {domain!r}")


class ConditionalSpace:
    """The define-by-run function of a spec's space: `space(trial)` suggests each active
    parameter on the Optuna trial and returns nothing more (Ray reads what was suggested).

    Tune pickles the searcher, and this with it, into a job's saved state by this import path:
    it never moves without an alias (see `_compat/moved.py`)."""

    def __init__(self, space: Mapping[str, Any]):
        self.space = dict(space)
        self.order = in_order(self.space)

    def __call__(self, trial: Any) -> None:
        drawn: dict[str, Any] = {}
        for name in self.order:
            domain = self.space[name]
            if holds(domain, drawn):
                drawn[name] = _suggest(trial, name, domain)
        return None


def _suggest(trial: Any, name: str, domain: Any) -> Any:
    if isinstance(domain, (UniformDomain, LogUniformDomain)):
        return trial.suggest_float(name, domain.low, domain.high, log=isinstance(domain, LogUniformDomain))
    if isinstance(domain, IntDomain):
        return trial.suggest_int(name, domain.low, domain.high, log=domain.log)
    return trial.suggest_categorical(name, list(domain.values))
