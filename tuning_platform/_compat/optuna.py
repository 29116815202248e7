"""Optuna internals the platform uses (Optuna 5.0): the trials TPE reads from a study.

TPE reads a study's trials through `Study._get_trials` (optuna/samplers/_tpe/sampler.py, lines
500, 515 and 584 in Optuna 5.0). `search/sampler.py` shows TPE a window of a long study by
answering that call; tests/test_sampler.py fails if TPE stops asking it.
"""

from __future__ import annotations

from collections.abc import Container
from typing import Any

from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState


def study_trials(study: Study) -> list[FrozenTrial]:
    """Every trial of the study, ordered by number, without copies (as TPE reads them)."""
    return study._get_trials(deepcopy=False, use_cache=False)


class StudyWindow:
    """A study as TPE sees it through the window: its own trials are the window's; everything
    else (directions, storage, system attributes) is the study's."""

    def __init__(self, study: Study, trials: list[FrozenTrial]):
        self._study = study
        self._trials = trials

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None, use_cache: bool = False
    ) -> list[FrozenTrial]:
        # TPE reads without copies and changes nothing it is given (deepcopy=False everywhere).
        return [trial for trial in self._trials if states is None or trial.state in states]
