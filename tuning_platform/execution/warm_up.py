"""Work of the job's end done while its last trials run, on a slot that is idle by then.

Once Tune has started the run's last trial, a trial that ends frees a slot that nothing will
take. The driver then pays what the job's pictures would pay first after the last trial:
importing matplotlib and loading its fonts (`insight.warm_up`, 0.3-0.4 s of every CLI job's
end here). With one slot, or a run that stops before its last trial starts (a time budget), it
happens at the end as before.
"""

from __future__ import annotations

from typing import Any

from ray.tune import Callback

from tuning_platform import insight


class PicturesWarmedUp(Callback):
    """`insight.warm_up` once, when a trial ends after the run's `trials` have all started."""

    def __init__(self, trials: int) -> None:
        self.trials = trials
        self.done = False

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._after_a_trial(trials)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._after_a_trial(trials)

    def _after_a_trial(self, trials: list[Any]) -> None:
        if self.done or len(trials) < self.trials:
            return
        self.done = True
        insight.warm_up()
