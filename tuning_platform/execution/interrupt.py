"""Stopping a job gracefully: SIGTERM as Ctrl-C, and which trials a stop left unfinished.

`ray job stop`, deleting a Kubernetes pod, a Slurm time limit and `kill` send SIGTERM; Ray Tune
stops gracefully only on SIGINT (and SIGUSR1: ray/tune/tune.py, `_setup_signal_catching`). So
while a job runs, SIGTERM raises SIGINT in this process: Tune stops the trials and saves its
state, the job marks its runs KILLED, and `--resume` goes on. A second SIGTERM, like a second
Ctrl-C, stops at once (Tune restores the previous SIGINT handler after the first).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ray.tune import Callback

# The SIGTERM handler of the innermost `sigterm_as_interrupt`, for `reclaim_sigterm`.
_HANDLERS: list[Callable[[int, Any], None]] = []


@contextmanager
def sigterm_as_interrupt() -> Iterator[Callable[[], bool]]:
    """While inside, SIGTERM does what Ctrl-C does; yields whether a SIGTERM came."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False  # signals reach the main thread only
        return

    def on_sigterm(signum: int, frame: Any) -> None:
        received.append(signum)
        signal.raise_signal(signal.SIGINT)  # handled by whatever SIGINT handler is in force

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    _HANDLERS.append(on_sigterm)
    try:
        yield lambda: bool(received)
    finally:
        _HANDLERS.remove(on_sigterm)
        signal.signal(signal.SIGTERM, previous)


def reclaim_sigterm() -> None:
    """Take SIGTERM back after `ray.init`, which sets its own handler, `sys.exit(15)`, in the
    driver (ray/_private/worker.py, `init`: "terminate any signal before connecting driver")."""
    if _HANDLERS and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _HANDLERS[-1])


# run name -> trials the last `fit` of that run left unfinished
_UNFINISHED: dict[str, list[str]] = {}


class TrialOutcomes(Callback):
    """Which trials Tune itself finished, so the job tells an interruption from an end on any
    storage (local, s3://, gs://) and without reading Tune's saved files.

    A trial is finished when Tune completed it (`on_trial_complete`: done, or stopped by ASHA or
    the guard) or gave up on it (`on_trial_error`: no retries left); a trial restored finished
    by `--resume` is finished from the first step. Tune's statuses alone cannot tell: when a
    stop ends the loop, Tune's cleanup marks the trials it stops TERMINATED
    (ray/tune/execution/tune_controller.py, `_cleanup_trials` -> `_schedule_trial_stop`) before
    `on_experiment_end`. Tune pickles this callback with the run config, so a resumed job has
    it too; the job reads the result through `unfinished_trials(run_name)`.
    """

    def __init__(self, run_name: str):
        self.run_name = run_name
        self._finished: set[str] = set()
        self._started = False

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_finished": set(), "_started": False}

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if not self._started:
            self._started = True
            self._finished.update(t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR"))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finished.add(trial.trial_id)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finished.add(trial.trial_id)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        _UNFINISHED[self.run_name] = [t.trial_id for t in trials if t.trial_id not in self._finished]


def unfinished_trials(run_name: str) -> list[str]:
    """The trials the run's last `fit` left unfinished (a stop), once; [] when it ended."""
    return _UNFINISHED.pop(run_name, [])
