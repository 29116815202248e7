"""Asynchronous successive halving on several objectives (and constraints): MO-ASHA as a Ray
Tune scheduler (Schmucker et al. 2021).

It is Ray 2.60's `AsyncHyperBandScheduler` (ray/tune/schedulers/async_hyperband.py) with one
bracket, ranking a rung's objective vectors instead of cutting one number:

- rungs at grace_period * reduction_factor^k up to max_t, the same count as Ray's `_Bracket`
  (line 234); a trial is judged once per rung, at the highest rung it has reached and not been
  judged at (`_Bracket.on_result`, lines 245-272);
- the judgement happens the moment the trial reaches the rung, against what the rung has
  recorded so far, and the trial's own result is then recorded (asynchronous: no trial waits
  for a rung to fill; line 258-271);
- a rung that has recorded nothing lets the trial go on (`_Bracket.cutoff` is None, line 241);
- a trial is stopped at max_t (line 154) and a result without `time_attr` or an objective is
  skipped: it goes on and nothing is recorded (line 152);
- a completed trial's last result is recorded at its rung too (`on_trial_complete`, line 165).

At a rung each result is the trial's objectives, each turned so larger is better
(`objectives.signed_point`), and its total constraint violation. The rung's entries, the judged
trial's own included, are ranked as `pareto.order_in_rung` ranks them (constrained
non-dominated rank, then crowding distance, widest first), and the trial goes on when fewer than
`kept(n)` entries stand strictly ahead of it. An entry tied with it (same rank, same crowding
distance) does not count against it: Ray lets a value equal to the cutoff go on (line 262 stops
only on `cur_rew < cutoff`), and so does Syne Tune's MO-ASHA; the earlier-first order of
`order_in_rung` places such ties but never stops a trial.

`kept` is Ray's cutoff counted in trials: Ray lets a trial go on when its value reaches the
(1 - 1/rf) quantile of the m results the rung already holds, that is when at most
(m - 1)/rf of them are better. Where that quantile falls between two recorded values Ray
interpolates the values, which a ranking cannot do; the ranking takes the stricter neighbour.

One objective on a rung whose results are all feasible and finite is judged by Ray's
interpolated quantile itself, so a one-objective job makes ASHA's decisions exactly. A diverged
result (an objective not finite: the driver's guard writes the worst value) is worst on every
objective and infinitely infeasible: it ranks last.

Tune pickles the scheduler into a job's saved state by this module's path: the class never
moves without an entry in `_compat/moved.py`.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from tuning_platform.objectives import Constraint, Objective, point, signed_point, total_violation
from tuning_platform.pareto import nondominated_ranks, standings

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.experiment import Trial

# A trial's result at a rung: its signed objective vector and its total constraint violation.
Entry = tuple[tuple[float, ...], float]


def kept(count: int, reduction_factor: float) -> int:
    """How far down a rung of `count` entries (the judged trial's own included) a trial may
    stand and go on: it goes on when fewer than this many entries stand strictly ahead of it."""
    if count <= 1:
        return 1
    return 1 + math.floor((count - 2) / reduction_factor)


class MultiObjectiveASHA(FIFOScheduler):
    """ASHA over `objectives` (each in its mode) and `constraints`: at each rung a trial goes on
    only in the top 1/reduction_factor of the rung's non-dominated ranking."""

    def __init__(
        self,
        time_attr: str = "epoch",
        *,
        objectives: Sequence[Objective],
        constraints: Sequence[Constraint] = (),
        max_t: int = 100,
        grace_period: int = 1,
        reduction_factor: float = 4,
    ):
        if not objectives:
            raise ValueError("MultiObjectiveASHA needs at least one objective")
        if max_t <= 0 or grace_period <= 0 or grace_period > max_t:
            raise ValueError(f"need 0 < grace_period <= max_t, got grace_period={grace_period}, max_t={max_t}")
        if reduction_factor <= 1:
            raise ValueError(f"reduction_factor must be > 1, got {reduction_factor}")
        super().__init__()
        self._objectives = list(objectives)
        self._constraints = list(constraints)
        self._time_attr = time_attr
        self._max_t = max_t
        self._reduction_factor = reduction_factor
        # Tune's `metric` (what it names in its own checks): the first objective.
        self._metric = self._objectives[0].metric
        # Ray's rung count, float rounding included (async_hyperband.py line 234), highest
        # milestone first as Ray keeps them; each rung: trial id -> entry, in arrival order.
        count = int(np.log(max_t / grace_period) / np.log(reduction_factor) + 1)
        self._rungs: list[tuple[float, dict[str, Entry]]] = [
            (grace_period * reduction_factor**k, {}) for k in reversed(range(count))
        ]
        self._num_stopped = 0

    @property
    def objectives(self) -> list[Objective]:
        return list(self._objectives)

    @property
    def milestones(self) -> list[float]:
        """The rungs' milestones, lowest first."""
        return [milestone for milestone, _ in reversed(self._rungs)]

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        # Tune passes TuneConfig's one metric and mode (the first objective); the scheduler
        # keeps all of its objectives.
        return True

    def on_trial_result(self, tune_controller: TuneController, trial: Trial, result: dict) -> str:
        entry = self._entry(result)
        if entry is None:
            return TrialScheduler.CONTINUE
        if result[self._time_attr] >= self._max_t:
            action = TrialScheduler.STOP
        else:
            action = self._judge(trial.trial_id, result[self._time_attr], entry)
        if action == TrialScheduler.STOP:
            self._num_stopped += 1
        return action

    def on_trial_complete(self, tune_controller: TuneController, trial: Trial, result: dict) -> None:
        entry = self._entry(result)
        if entry is not None:
            self._judge(trial.trial_id, result[self._time_attr], entry)

    def debug_string(self) -> str:
        rungs = " | ".join(
            f"Iter {milestone:.3f}: {len(recorded)} recorded, {self._front_size(recorded)} on the front"
            for milestone, recorded in self._rungs
        )
        return f"Using MultiObjectiveASHA: num_stopped={self._num_stopped}\nBracket: {rungs}"

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.__dict__, file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self.__dict__.update(pickle.load(file))

    def _entry(self, result: dict) -> Entry | None:
        """The result at a rung; None when it lacks `time_attr` or an objective (Ray skips it)."""
        if self._time_attr not in result:
            return None
        values = point(result, self._objectives)
        if values is None:
            return None
        if not all(math.isfinite(value) for value in values):
            return (-math.inf,) * len(values), math.inf
        return signed_point(values, self._objectives), total_violation(result, self._constraints)

    def _judge(self, trial_id: str, time: float, entry: Entry) -> str:
        """ASHA's step (`_Bracket.on_result`): at the highest rung the trial has reached and not
        been judged at, judge it against what that rung holds now, then record it there."""
        for milestone, recorded in self._rungs:
            if time < milestone or trial_id in recorded:
                continue
            goes_on = self._goes_on(list(recorded.values()), entry)
            recorded[trial_id] = entry
            return TrialScheduler.CONTINUE if goes_on else TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def _goes_on(self, others: list[Entry], entry: Entry) -> bool:
        if not others:
            return True
        entries = [*others, entry]
        if len(self._objectives) == 1 and all(_feasible_and_finite(e) for e in entries):
            # Ray's cutoff (async_hyperband.py lines 243 and 262): the (1 - 1/rf) quantile of
            # the recorded values, interpolated.
            cutoff = np.nanpercentile([e[0][0] for e in others], (1 - 1 / self._reduction_factor) * 100)
            return not entry[0][0] < cutoff
        keys = [(rank, -crowding) for rank, crowding in standings([e[0] for e in entries], [e[1] for e in entries])]
        ahead = sum(1 for key in keys[:-1] if key < keys[-1])
        return ahead < kept(len(entries), self._reduction_factor)

    def _front_size(self, recorded: dict[str, Entry]) -> int:
        feasible = [values for values, violation in recorded.values() if violation <= 0]
        return nondominated_ranks(feasible).count(1)


def _feasible_and_finite(entry: Entry) -> bool:
    values, violation = entry
    return violation <= 0 and all(math.isfinite(value) for value in values)
