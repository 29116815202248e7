"""Distributed hyperparameter tuning: Ray Tune trials with Optuna TPE and ASHA, every trial in
MLflow, the best model registered.

    from tuning_platform import tune
    result = tune("search_spaces/cnn.yaml", overrides={"search.num_samples": 8})
    result.best_config, result.best_metric, result.model_uri, result.trials

The command line is `tuning-platform SPEC [options]` (also `python -m tuning_platform`).
Importing this package is cheap: Ray, MLflow and torch load when a job runs.
"""

import logging

from tuning_platform._compat import moved
from tuning_platform.errors import JobError, SpecError, TrialsFailedError, TuneInterrupted

__all__ = ["JobError", "SpecError", "TrialsFailedError", "TuneInterrupted", "TuneResult", "tune"]

# A library logs; the application (the CLI, a notebook) decides where it goes.
logging.getLogger(__name__).addHandler(logging.NullHandler())

# What a job saved by an older layout of this package pickled still loads (`--resume`).
moved.install()


def __getattr__(name: str):  # tune imports MLflow: only when asked for
    if name == "tune":
        from tuning_platform.api import tune

        return tune
    if name == "TuneResult":
        from tuning_platform.outcome import TuneResult

        return TuneResult
    raise AttributeError(name)
