"""Ray internals the platform uses (Ray 2.60): Tune's default loggers, its resume hint, a
trial's checkpoint manager. The cluster's reaches (token, GCS, autoscaler) are in
`tuning_platform/cluster/`, each named with its upstream file beside it.

Imports Ray lazily where it can: the CLI's checks import the package without starting Ray.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


class _HideTuneResumeHint(logging.Filter):
    # After Ctrl-C Tune suggests `Tuner.restore(...)`; the job says how to resume it instead.
    # The message of ray/tune/tune.py's logger (Ray 2.60); a changed text shows the hint again.
    def filter(self, record: logging.LogRecord) -> bool:
        return "Resume experiment with" not in record.getMessage()


@contextmanager
def tune_resume_hint_hidden() -> Iterator[None]:
    hint, tune_logger = _HideTuneResumeHint(), logging.getLogger("ray.tune.tune")
    tune_logger.addFilter(hint)
    try:
        yield
    finally:
        tune_logger.removeFilter(hint)


# Tune adds each default logger a run lacks unless this is "1": `_create_default_callbacks`,
# ray/tune/utils/callback.py line 123 in Ray 2.60.
_AUTO_LOGGERS_OFF = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"


@contextmanager
def auto_loggers_off() -> Iterator[None]:
    """Tune's default loggers off while a run is built: with CSV and JSON given, Tune leaves out
    only its TensorBoard logger. MLflow holds the same
    metrics, and tensorboardX cost the driver 1.8 s of imports (it imports torch), a file write
    per result and a writer per trial that `atexit` keeps to the end of the process.

    Set only while the run is built, so a notebook's own Tune runs keep Tune's defaults. A resumed
    run (`restore`) is left as Tune builds it: a job started before this change has no CSV and
    JSON loggers of its own, so there it adds all three again.
    """
    before = os.environ.get(_AUTO_LOGGERS_OFF)
    os.environ[_AUTO_LOGGERS_OFF] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(_AUTO_LOGGERS_OFF, None)
        else:
            os.environ[_AUTO_LOGGERS_OFF] = before


def repoint_checkpoints(trial: Any, exists: Callable[[Any], bool]) -> tuple[bool, Any]:
    """Make a trial restore from its newest kept checkpoint that `exists`, when its latest one
    is gone; (whether it changed anything, the checkpoint result it now restores from or None).

    Ray 2.60 offers no public way to change which checkpoint a trial restores from: this sets
    the `_checkpoint_results` and `_latest_checkpoint_result` of the trial's
    `_CheckpointManager` (ray/train/_internal/checkpoint_manager.py) and drops the trial's
    cached metadata. tests/test_resume.py (a deleted checkpoint) fails if they change.
    """
    manager = trial.run_metadata.checkpoint_manager
    latest = manager.latest_checkpoint_result if manager else None
    if latest is None or exists(latest.checkpoint):
        return False, None
    kept = [result for result in manager._checkpoint_results if exists(result.checkpoint)]
    newest = max(kept, key=lambda result: result.metrics.get("training_iteration", 0), default=None)
    manager._checkpoint_results = kept
    manager._latest_checkpoint_result = newest
    trial.run_metadata.invalidate_cache()
    return True, newest
