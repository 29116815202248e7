"""TPE over a bounded window of a long study: the same proposals as Optuna's TPE while the study
fits the window, only the best and the recent trials past it."""

from __future__ import annotations

import random

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.study import StudyDirection
from optuna.trial import TrialState, create_trial

from tuning_platform.search.sampler import BEST_KEPT, WindowedTPESampler

SPACE = {"x": FloatDistribution(0.0, 1.0), "y": FloatDistribution(0.0, 1.0)}
SETTINGS = {"n_startup_trials": 10, "n_ei_candidates": 24, "multivariate": True, "constant_liar": True}


def score(x: float, y: float) -> float:
    return -((x - 0.3) ** 2) - (y - 0.7) ** 2


def signed_score(study: optuna.Study, x: float, y: float) -> float:
    """The score as a study of either direction ranks it: best at the same point."""
    return score(x, y) if study.direction == StudyDirection.MAXIMIZE else -score(x, y)


def study_with(
    sampler: optuna.samplers.BaseSampler, points: list[tuple[float, float]], direction: str = "maximize"
) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=sampler, direction=direction)
    for x, y in points:
        study.add_trial(create_trial(params={"x": x, "y": y}, distributions=SPACE, value=signed_score(study, x, y)))
    return study


def proposals(study: optuna.Study, count: int = 5) -> list[dict[str, float]]:
    """What the sampler proposes next, trial after trial, each told its score (asked and told:
    completions reach the sampler through after_trial)."""
    made = []
    for _ in range(count):
        trial = study.ask(fixed_distributions=SPACE)
        made.append(trial.params)
        study.tell(trial, signed_score(study, **trial.params))
    return made


def points(count: int, seed: int) -> list[tuple[float, float]]:
    rng = random.Random(seed)
    return [(rng.random(), rng.random()) for _ in range(count)]


def test_a_study_within_the_window_gets_optunas_own_proposals():
    history = points(60, seed=1)
    windowed = proposals(study_with(WindowedTPESampler(window=1000, seed=3, **SETTINGS), history))
    plain = proposals(study_with(optuna.samplers.TPESampler(seed=3, **SETTINGS), history))
    assert windowed == plain


def test_past_the_window_tpe_sees_only_the_best_and_the_recent_trials():
    # Two studies alike in their best trials and their last 50, different in every other old
    # trial: Optuna's TPE proposes differently for them, the windowed one alike, so it never
    # read the old trials (and this fails if TPE stops reading through Study._get_trials).
    best = [(0.3 + 0.001 * i, 0.7) for i in range(BEST_KEPT)]
    recent = points(50, seed=2)
    # Old trials crowding the good region (where TPE then expects bad results) or far from it.
    first = best + [(0.32 + 0.03 * x, 0.72 + 0.03 * y) for x, y in points(300, seed=4)] + recent
    second = best + [(0.8 + 0.2 * x, 0.2 * y) for x, y in points(300, seed=5)] + recent
    assert all(score(*p) < min(score(*b) for b in best) for p in first[BEST_KEPT:] + second[BEST_KEPT:])

    def windowed(history):
        return proposals(study_with(WindowedTPESampler(window=50, seed=3, **SETTINGS), history))

    def plain(history):
        return proposals(study_with(optuna.samplers.TPESampler(seed=3, **SETTINGS), history))

    assert windowed(first) == windowed(second)
    assert plain(first) != plain(second)


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_the_window_keeps_the_best_trials_found_since_the_study_was_read(direction):
    sampler = WindowedTPESampler(window=30, seed=0, **SETTINGS)
    study = study_with(sampler, points(100, seed=6), direction)
    proposals(study, count=120)
    trials = study.get_trials(deepcopy=False)
    completed = [t for t in trials if t.state == TrialState.COMPLETE]
    ranked = sorted(completed, key=lambda t: t.value, reverse=direction == "maximize")
    seen = {t.number for t in sampler._view(study)._get_trials()}
    assert {t.number for t in ranked[:BEST_KEPT]} <= seen
    assert {t.number for t in trials[-30:]} <= seen
    assert len(seen) <= 30 + BEST_KEPT < len(trials)
