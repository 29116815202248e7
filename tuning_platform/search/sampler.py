"""Optuna's TPE with a bounded view of a long study, so a proposal costs the same at trial
10,000 as at trial 500.

Optuna's TPE walks every trial of the study in Python on each proposal (splitting them into
good and bad, reading their parameters): 3 ms with 10 trials, about 100 ms with 10,000 on the
project's 2-core machine (36x), which alone would hold a 10,000-trial job under 600 trials a
minute. With the default window of 500, the last proposals of 10,000 cost 2.4x the first ones
after TPE's start-up (6.1 against 2.5 ms).
Past `window` trials, this sampler shows TPE the best BEST_KEPT completed trials and the last
`window` trials, and nothing older. TPE's good group never holds more than BEST_KEPT trials
(Optuna's `default_gamma`: min(ceil(0.1 n), 25)), so it is exactly the one TPE would build from
the whole study; the bad group is estimated from recent trials only, where Optuna's default
weights already give old trials little weight. A study no longer than the window sees
everything, and proposes exactly as Optuna's TPE does.

Reaches into Optuna: TPE reads a study's trials through `Study._get_trials`, which the view
answers (`tuning_platform/_compat/optuna.py`).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from typing import Any, cast

import optuna
from optuna.distributions import BaseDistribution
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tuning_platform._compat.optuna import StudyWindow, study_trials

# TPE's good group at most (optuna.samplers._tpe.sampler.default_gamma).
BEST_KEPT = 25


class WindowedTPESampler(optuna.samplers.TPESampler):
    """TPE over the best BEST_KEPT completed trials and the last `window` trials (None: all)."""

    def __init__(self, *, window: int | None, **settings: Any):
        super().__init__(**settings)
        self.window = window
        # The best completed trials as a min-heap of (value, number), value signed so that
        # larger is better; None until the first windowed proposal reads the study once.
        self._best: list[tuple[float, int]] | None = None

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return super().sample_relative(self._view(study), trial, search_space)

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return super().sample_independent(self._view(study), trial, param_name, param_distribution)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        super().after_trial(study, trial, state, values)
        if self._best is not None and state == TrialState.COMPLETE and values:
            self._keep(study, values[0], trial.number)

    def _view(self, study: Study) -> Study:
        if self.window is None or len(study.directions) > 1:
            return study
        trials = study_trials(study)  # ordered by number, from 0
        if len(trials) <= self.window + BEST_KEPT:
            return study
        if self._best is None:  # once: later completions arrive through after_trial
            self._best = []
            for trial in trials:
                if trial.state == TrialState.COMPLETE and trial.value is not None:
                    self._keep(study, trial.value, trial.number)
        recent = range(len(trials) - self.window, len(trials))
        older_best = sorted(number for _, number in self._best if number < recent.start)
        window = StudyWindow(study, [trials[number] for number in older_best] + trials[recent.start :])
        return cast(Study, window)  # TPE reads it as a study: everything but its trials is the study's

    def _keep(self, study: Study, value: float, number: int) -> None:
        assert self._best is not None
        if not math.isfinite(value):
            return
        signed = value if study.direction == StudyDirection.MAXIMIZE else -value  # larger is better
        if len(self._best) < BEST_KEPT:
            heapq.heappush(self._best, (signed, number))
        elif signed > self._best[0][0]:
            heapq.heapreplace(self._best, (signed, number))
