"""Ray Tune's `OptunaSearch`, told how each trial really ended: one objective or several,
constraints, and a trial the scheduler stopped early as PRUNED.

Ray 2.60's `OptunaSearch.on_trial_complete` (ray/tune/search/optuna/optuna_search.py, line 543)
tells Optuna every trial that ended without an error as COMPLETE with its last result, so a
trial ASHA stopped after 2 epochs competes with 12-epoch trials as if 2 epochs were its final
value. Here such a trial is PRUNED: with one objective Optuna keeps its per-epoch values (Ray
reported them as the trial ran) and TPE ranks pruned trials after the complete ones by how far
they got, Optuna's own rule. With several objectives Optuna refuses intermediate values
(`Trial.report` raises NotImplementedError, and TPE's pruned-trial score reads
`study.direction`, which a study of several objectives refuses), so a pruned trial carries no
values and TPE ranks it after every complete trial.

A diverged trial stays COMPLETE with the worst value of each objective (the driver's guard wrote
them into its last result), as before: its configuration is bad, not unfinished.

Constraints are Optuna 5's trial constraints (`Trial.set_constraint`, a value <= 0 is feasible),
set from the trial's last result before it is told, which both TPE and NSGA-II read.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from tuning_platform.objectives import Constraint, Objective, violations
from tuning_platform.records import TrialStatus, finished_status

logger = logging.getLogger(__name__)


class TrialSearch(OptunaSearch):
    """OptunaSearch over the spec's objectives and constraints; `horizon`: the epochs a trial
    may train (None: no scheduler stops trials early, every trial that ends is complete)."""

    # False: a stopped trial is told as Ray tells it (COMPLETE with its last value). Only
    # `benchmarks/search.py` sets it, to measure the two side by side.
    PRUNE_STOPPED = True

    def __init__(
        self,
        *,
        objectives: Sequence[Objective],
        constraints: Sequence[Constraint] = (),
        horizon: int | None = None,
        **settings: Any,
    ):
        several = len(objectives) > 1
        metric: Any = [o.metric for o in objectives] if several else objectives[0].metric
        mode: Any = [o.mode for o in objectives] if several else objectives[0].mode
        super().__init__(metric=metric, mode=mode, **settings)
        self.objectives = list(objectives)
        self.constraints = list(constraints)
        self.horizon = horizon

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        # Tune passes its one metric (the primary objective); the searcher keeps every objective.
        return super().set_search_properties(None, None, config, **spec)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or trial_id in self._completed_trials or error or not result:
            super().on_trial_complete(trial_id, result, error)
            return
        for constraint, amount in violations(result, self.constraints):
            # Optuna refuses NaN, takes infinity: a metric the trial never reported is infeasible.
            ot_trial.set_constraint(constraint.text, amount)
        metrics = [o.metric for o in self.objectives] + [c.metric for c in self.constraints]
        stopped = finished_status(result, metrics, self.horizon) == TrialStatus.EARLY_STOPPED
        if not (stopped and self.PRUNE_STOPPED):
            super().on_trial_complete(trial_id, result, error)
            return
        assert self._ot_study is not None  # set up before the first trial was suggested
        try:
            self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
        except Exception as exc:  # noqa: BLE001 - as Ray's own tell: a searcher never ends the job
            logger.warning(exc)
        self._completed_trials.add(trial_id)
