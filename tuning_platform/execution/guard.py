"""What the driver does with a trial's result before the search sees it: divergence and a
metric the trainable never reports.

Tune calls a run's `Stopper` on every result before the scheduler, the searcher and the
callbacks, and they all read the same dict afterwards. So a diverged result rewritten here
reaches ASHA, Optuna and MLflow as one consistent story: the trial stops, its metric is the
worst possible value for the search, and it ends as a normal (not crashed) trial.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ray.tune.result import AUTO_RESULT_KEYS, DEBUG_METRICS
from ray.tune.stopper import Stopper

from tuning_platform.objectives import Objective
from tuning_platform.ranking import worst_value
from tuning_platform.records import DIVERGED_KEY, missing_metric

# Tune fills these in itself; a result with nothing else is a trial that returned, not a report.
TUNE_RESULT_KEYS = set(AUTO_RESULT_KEYS) | set(DEBUG_METRICS) | {"done", "experiment_tag", "should_checkpoint"}


def _non_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isfinite(value)


def is_diverged(result: dict[str, Any], metric: str) -> bool:
    """A loss (any key ending in `loss`) or the metric itself became NaN or infinite."""
    if result.get(DIVERGED_KEY):
        return True
    return _non_finite(result.get(metric)) or any(key.endswith("loss") and _non_finite(v) for key, v in result.items())


def reported_names(result: dict[str, Any]) -> list[str]:
    """What a trainable reported itself, without the keys Tune adds."""
    return sorted(key for key in result if key not in TUNE_RESULT_KEYS and not key.startswith("config/"))


def missing_metric_error(metric: str, result: dict[str, Any]) -> str:
    names = ", ".join(reported_names(result)) or "nothing"
    return f"the trainable never reported the metric {metric!r}; it reported: {names}"


class TrialGuard(Stopper):
    """Stops a trial whose loss diverged (its metric becomes the worst possible value) or whose
    first result lacks the spec's metric; also stops trials at `max_t` epochs when ASHA's
    `max_t` is below the epochs they were given.

    Kept free of state so it pickles into Tune's saved run config and works the same after
    `--resume`.
    """

    def __init__(
        self,
        metric: str,
        mode: str,
        max_t: int | None = None,
        objectives: Sequence[Objective] = (),
        required: Sequence[str] = (),
    ):
        self.metric = metric
        self.mode = mode
        self.max_t = max_t
        # Every objective (a diverged trial gets the worst of each) and every metric a trial
        # must report (objectives and constraints); saved before they existed: the metric alone.
        self.objectives = list(objectives) or [Objective(metric, mode)]
        self.required = list(required) or [metric]

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        if not reported_names(result):
            return False
        objectives = getattr(self, "objectives", None) or [Objective(self.metric, self.mode)]
        if missing_metric(result, getattr(self, "required", None) or self.metric) is not None:
            # Searchers and ASHA skip a result without the metric; the MLflow callback and the
            # summary call the trial failed and name what it did report.
            return True
        if is_diverged(result, self.metric):
            result[DIVERGED_KEY] = True
            for objective in objectives:
                result[objective.metric] = worst_value(objective.mode)
            return True
        return self.max_t is not None and int(result.get("epoch", 0) or 0) >= self.max_t

    def stop_all(self) -> bool:
        return False
