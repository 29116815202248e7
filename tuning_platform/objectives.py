"""What a job optimizes: its objectives (one or several metrics, each with its mode) and its
constraints (`latency_ms <= 5`), read from a trial's reported results. Plain data and pure
functions: the spec, the searcher, the scheduler, the front and the registry share them.

A trial's point is the objectives' values in its last result: what Optuna is told, what the
multi-objective scheduler compared at the trial's last rung, and what its last checkpoint
holds. Constraints are judged on the same result.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tuning_platform.ranking import score

# `metric <= 5`, `params < 2e5`, `val_accuracy >= 0.9`: a metric name, an operator, a number.
_CONSTRAINT = re.compile(r"^\s*([A-Za-z0-9_.\-/]+)\s*(<=|>=|<|>)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")
_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
    ">": operator.gt,
}


@dataclass(frozen=True)
class Objective:
    metric: str
    mode: str  # "max" | "min"

    def signed(self, value: float) -> float:
        """The value with larger always better."""
        return score(value, self.mode)


@dataclass(frozen=True)
class Constraint:
    """A reported metric, an operator and a bound: `latency_ms <= 5`."""

    metric: str
    op: str
    bound: float

    @property
    def text(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"

    def holds(self, value: float) -> bool:
        return math.isfinite(value) and _OPERATORS[self.op](value, self.bound)

    def violation(self, value: float | None) -> float:
        """How far the value is on the wrong side of the bound (0 when it holds; infinite when
        the metric is missing or not finite): Optuna's constraint convention, <= 0 is feasible."""
        if value is None or not math.isfinite(value):
            return math.inf
        if self.holds(value):
            return 0.0
        gap = value - self.bound if self.op in ("<=", "<") else self.bound - value
        # A strict bound met exactly is violated by the smallest amount, never by 0.
        return max(gap, math.ulp(self.bound) or 5e-324)


def parse_constraint(text: str) -> Constraint:
    """`"latency_ms <= 5"` as a Constraint; ValueError naming the expected form otherwise."""
    match = _CONSTRAINT.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError("a constraint is 'METRIC OP NUMBER' with OP one of <=, <, >=, > (e.g. 'latency_ms <= 5')")
    metric, op, bound = match.groups()
    return Constraint(metric, op, float(bound))


def point(result: Mapping[str, Any], objectives: Sequence[Objective]) -> tuple[float, ...] | None:
    """The objectives' values in a result, in the objectives' order; None when one is missing
    or not a number."""
    values = []
    for objective in objectives:
        value = result.get(objective.metric)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        values.append(float(value))
    return tuple(values)


def signed_point(values: Sequence[float], objectives: Sequence[Objective]) -> tuple[float, ...]:
    """A point with every objective turned so that larger is better (what the ranking compares)."""
    return tuple(objective.signed(value) for objective, value in zip(objectives, values, strict=True))


def violations(result: Mapping[str, Any], constraints: Sequence[Constraint]) -> list[tuple[Constraint, float]]:
    """Each constraint with how far the result violates it (0: it holds)."""
    out = []
    for constraint in constraints:
        value = result.get(constraint.metric)
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        out.append((constraint, constraint.violation(number)))
    return out


def violated(result: Mapping[str, Any], constraints: Sequence[Constraint]) -> list[Constraint]:
    """The constraints the result breaks, in the spec's order."""
    return [constraint for constraint, amount in violations(result, constraints) if amount > 0]


def total_violation(result: Mapping[str, Any], constraints: Sequence[Constraint]) -> float:
    """The sum of the violations: 0 for a feasible result; what ranks infeasible ones."""
    return sum(amount for _, amount in violations(result, constraints))
