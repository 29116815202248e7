"""Trial checkpoints: how many Tune keeps, and which one a resumed trial goes on from.

Tune keeps each trial's best checkpoints by the metric plus its latest, and deletes the others
as soon as a newer one arrives. Its saved experiment state, which `--resume` restores, names
each trial's latest checkpoint but is written only every few seconds (and after a trial's second
checkpoint since the last write). A driver killed in between leaves a state that names a
checkpoint retention has already deleted, and Ray then fails that trial on every restore
("Could not recover from checkpoint as it does not exist on storage anymore").
`SurvivingCheckpoints` sends such a trial back to its newest checkpoint that still exists.
"""

from __future__ import annotations

import logging
from typing import Any

import pyarrow.fs
from ray import tune
from ray.tune import Callback

from tuning_platform._compat.ray import repoint_checkpoints
from tuning_platform.spec import Spec

logger = logging.getLogger(__name__)


def checkpoint_config(spec: Spec) -> Any:
    """The best 2 checkpoints per trial by the metric (registration rebuilds the best), plus
    the latest while it is not among them (a retried or resumed trial goes on from it)."""
    return tune.CheckpointConfig(
        num_to_keep=2, checkpoint_score_attribute=spec.metric, checkpoint_score_order=spec.mode
    )


def _exists(checkpoint: Any) -> bool:
    info = checkpoint.filesystem.get_file_info(checkpoint.path)
    return info.type != pyarrow.fs.FileType.NotFound


class SurvivingCheckpoints(Callback):
    """Before the first trial of a run starts, a trial whose latest checkpoint no longer exists
    goes on from its newest kept checkpoint that does, or from scratch if none is left.

    It looks once, at the first step: in a new job no trial has a checkpoint yet, and while the
    driver lives Tune never deletes a trial's latest checkpoint. Tune saves this callback with
    the run config, so a resumed job has it too.
    """

    def __init__(self) -> None:
        self._looked = False

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if self._looked:
            return
        self._looked = True
        for trial in trials:
            if trial.status != "TERMINATED":  # every other trial will be started or restored
                self._repoint(trial)

    @staticmethod
    def _repoint(trial: Any) -> None:
        changed, newest = repoint_checkpoints(trial, _exists)
        if not changed:
            return
        if newest is None:
            start = "scratch"
        else:
            metrics = newest.metrics
            start = f"its checkpoint of epoch {metrics.get('epoch', metrics.get('training_iteration'))}"
        logger.warning(
            "note: trial %s: its last checkpoint was deleted before the driver stopped; it goes on from %s",
            trial.trial_id,
            start,
        )
