"""The Pareto front of a job, from what MLflow recorded of its trials: each trial's point (its
last value of every objective), whether it meets the constraints, its rank, the hypervolume
and how it grew, and the one trial a selection rule picks to deploy.

Trials that completed or were stopped early count (their models are real models with real
figures); failed, diverged and unfinished ones do not. Ranks follow Deb's constraint
domination (`pareto.constrained_ranks`): the feasible trials by non-dominated sorting, rank 1
being the front; the infeasible ones after every feasible rank, by how far they miss.

The hypervolume is that of the feasible points, against one reference point for the whole job
(`pareto.reference_point` over every counted trial's point: the worst value of each objective
minus 10% of its range), stated beside it wherever it is written.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace

from tuning_platform import pareto
from tuning_platform.objectives import Constraint, Objective, signed_point
from tuning_platform.outcome import TrialRow, best_trial
from tuning_platform.records import LEARNED_FROM
from tuning_platform.search.study import RecordedTrial, final_value
from tuning_platform.spec import Spec
from tuning_platform.spec.schema import PreferRule, SelectionRule

logger = logging.getLogger(__name__)


@dataclass
class FrontPoint:
    trial: RecordedTrial
    values: tuple[float, ...]  # each objective's last value, in the spec's order, in its own sign
    violated: list[Constraint]  # the constraints its last result breaks
    violation: float  # their total: how far it is from feasible
    rank: int = 0  # 1: on the front

    @property
    def feasible(self) -> bool:
        return not self.violated

    @property
    def trial_id(self) -> str:
        return self.trial.trial_id


@dataclass
class Front:
    objectives: list[Objective]
    constraints: list[Constraint]
    points: list[FrontPoint]  # the counted trials, in the order they started
    reference: tuple[float, ...]  # the hypervolume's reference point, in the objectives' own signs
    hypervolume: float
    # (trials ended so far, hypervolume of the feasible ones among them), in the order they ended.
    growth: list[tuple[int, float]] = field(default_factory=list)

    @property
    def members(self) -> list[FrontPoint]:
        """The feasible Pareto-optimal trials, best on the first objective first."""
        on_front = [p for p in self.points if p.feasible and p.rank == 1]
        first = self.objectives[0]
        return sorted(on_front, key=lambda p: -first.signed(p.values[0]))

    @property
    def feasible(self) -> list[FrontPoint]:
        return [p for p in self.points if p.feasible]

    def closest_infeasible(self) -> FrontPoint | None:
        """The infeasible trial that misses its constraints by least (the first on a tie)."""
        infeasible = [p for p in self.points if not p.feasible]
        return min(infeasible, key=lambda p: p.violation) if infeasible else None

    def ordered_by(self, rule: SelectionRule | None) -> list[FrontPoint]:
        """The front's members, the one the rule picks first, then the others as the rule ranks
        them (`selection` reseeds the first `top_k`)."""
        members = self.members
        if not members:
            return []
        if rule == "knee":
            scaled = [signed_point(p.values, self.objectives) for p in members]
            order: list[FrontPoint] = []
            left = list(range(len(members)))
            while left:  # the knee, then the knee of the rest: nearest the ideal point first
                pick = left[pareto.knee([scaled[i] for i in left])]
                order.append(members[pick])
                left.remove(pick)
            return order
        index = self._preferred(rule)
        objective = self.objectives[index]
        # Best on the preferred objective; among equals, the order of the front (first objective).
        return sorted(members, key=lambda p: -objective.signed(p.values[index]))

    def chosen(self, rule: SelectionRule | None) -> FrontPoint | None:
        """The trial to deploy: `prefer: METRIC` (default: the first objective) or `knee`."""
        ordered = self.ordered_by(rule)
        return ordered[0] if ordered else None

    def _preferred(self, rule: SelectionRule | None) -> int:
        if isinstance(rule, PreferRule):
            return next(i for i, o in enumerate(self.objectives) if o.metric == rule.prefer)
        return 0


def judged(spec: Spec) -> bool:
    """Whether a job has a front to write: several objectives, or constraints to judge."""
    return spec.multi_objective or bool(spec.constraints)


def job_front(spec: Spec, trials: list[RecordedTrial]) -> Front:
    """The front of the trials a job recorded (see the module's docstring)."""
    objectives, constraints = spec.objective_list, spec.constraint_list
    points = []
    for trial in trials:
        if trial.status not in LEARNED_FROM:
            continue
        values = [final_value(trial, o.metric, spec) for o in objectives]
        if any(value is None for value in values):
            continue
        amounts = [(c, c.violation(final_value(trial, c.metric, spec))) for c in constraints]
        points.append(
            FrontPoint(
                trial,
                tuple(float(v) for v in values if v is not None),
                [c for c, amount in amounts if amount > 0],
                sum(amount for _, amount in amounts),
            )
        )
    signed = [signed_point(p.values, objectives) for p in points]
    for point, rank in zip(points, pareto.constrained_ranks(signed, [p.violation for p in points]), strict=True):
        point.rank = rank
    if not points:
        return Front(objectives, constraints, [], tuple(0.0 for _ in objectives), 0.0)
    # Over the feasible points, whose volume it measures (all points when none is feasible).
    feasible_signed = [s for s, p in zip(signed, points, strict=True) if p.feasible] or signed
    reference_signed = pareto.reference_point(feasible_signed)
    reference = tuple(o.signed(v) for o, v in zip(objectives, reference_signed, strict=True))  # back to own signs
    growth = []
    ended = sorted(range(len(points)), key=lambda i: (points[i].trial.end_ms or 0, i))
    # The non-dominated feasible points so far: the volume is theirs alone, and keeping only them
    # makes a job of thousands of trials cost milliseconds here, not the cube of its length.
    kept: list[tuple[float, ...]] = []
    for count, i in enumerate(ended, start=1):
        new = signed[i]
        if points[i].feasible and not any(_covers(old, new) for old in kept):
            kept = [old for old in kept if not _covers(new, old)] + [new]
        growth.append((count, pareto.hypervolume(kept, reference_signed) if kept else 0.0))
    return Front(objectives, constraints, points, reference, growth[-1][1], growth)


def _covers(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """a is at least as good as b on every objective (larger is better)."""
    return all(x >= y for x, y in zip(a, b, strict=True))


def deployable(spec: Spec, front: Front, rows: list[TrialRow]) -> tuple[TrialRow | None, bool]:
    """The trial to register, and whether none was because no trial meets the constraints.

    With several objectives: the one the selection rule picks from the feasible front, its row
    valued at its point (its last value of the primary objective). With constraints alone: the
    best feasible trial. When trials ended well but none is feasible, nothing is registered,
    the job still ends well, and a warning names the trial that came closest."""
    by_id = {row.trial_id: row for row in rows}
    best: TrialRow | None = None
    if spec.multi_objective:
        chosen = front.chosen(spec.selection_rule)
        row = by_id.get(chosen.trial_id) if chosen is not None else None
        if row is not None and chosen is not None:
            primary = [o.metric for o in front.objectives].index(spec.metric)
            best = replace(row, value=chosen.values[primary])
    else:
        feasible = {point.trial_id for point in front.feasible}
        best = best_trial([row for row in rows if row.trial_id in feasible], spec.mode)
    closest = front.closest_infeasible()
    if best is not None or front.feasible or closest is None:
        return best, False
    missed = ", ".join(f"{c.text} (got {closest.trial.finals.get(c.metric, math.nan):.4g})" for c in closest.violated)
    logger.warning(
        "warning: no trial meets the constraints, so nothing was registered; the closest is trial %s, which misses %s",
        closest.trial_id,
        missed,
    )
    return None, True
