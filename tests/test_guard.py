"""What the driver does with a diverged result or one without the metric, before the search
sees it; and that a real TPE search keeps working after being told the worst value."""

from __future__ import annotations

import math

import pytest

from tuning_platform.execution.guard import DIVERGED_KEY, TrialGuard, is_diverged, missing_metric_error, reported_names


@pytest.mark.parametrize(
    "result, diverged",
    [
        ({"epoch": 1, "train_loss": 0.5, "val_accuracy": 0.9}, False),
        ({"epoch": 1, "train_loss": math.nan, "val_accuracy": 0.9}, True),
        ({"epoch": 1, "val_loss": math.inf, "val_accuracy": 0.9}, True),
        ({"epoch": 1, "loss": -math.inf}, True),
        ({"epoch": 1, "val_accuracy": math.nan}, True),
        ({"epoch": 1, "val_accuracy": 0.9, "lossy_name": "text"}, False),
    ],
)
def test_is_diverged(result, diverged):
    assert is_diverged(result, "val_accuracy") is diverged


@pytest.mark.parametrize("mode, worst", [("max", -math.inf), ("min", math.inf)])
def test_a_diverged_result_stops_the_trial_with_the_worst_value(mode, worst):
    result = {"epoch": 3, "train_loss": math.nan, "val_accuracy": 0.31}
    assert TrialGuard("val_accuracy", mode)("t1", result) is True
    assert result["val_accuracy"] == worst and result[DIVERGED_KEY] is True


def test_a_result_without_the_metric_stops_the_trial_and_names_what_it_reported():
    result = {"epoch": 1, "loss": 0.3, "training_iteration": 1, "time_this_iter_s": 0.1, "trial_id": "t1"}
    assert TrialGuard("score", "max")("t1", result) is True
    assert "score" not in result
    assert reported_names(result) == ["epoch", "loss"]
    assert missing_metric_error("score", result) == (
        "the trainable never reported the metric 'score'; it reported: epoch, loss"
    )


def test_a_healthy_result_goes_on_until_max_t():
    guard = TrialGuard("score", "max", max_t=4)
    assert guard("t1", {"epoch": 3, "score": 0.5, "loss": 0.1}) is False
    assert guard("t1", {"epoch": 4, "score": 0.5, "loss": 0.1}) is True
    assert TrialGuard("score", "max")("t1", {"epoch": 40, "score": 0.5}) is False
    # A trial that returned without reporting: only Tune's own keys.
    assert guard("t1", {"done": True, "training_iteration": 4, "trial_id": "t1"}) is False


def test_tpe_told_the_worst_value_for_diverged_trials_steers_away_from_them():
    """Trials with x < 0.5 diverge. Through the guard, TPE records them as the worst complete
    trials (not failures it would ignore) and then proposes x >= 0.5 at least half the time."""
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    search = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=10))
    search.set_search_properties("score", "max", {"x": tune.uniform(0.0, 1.0)})
    guard = TrialGuard("score", "max")
    proposed = []
    for index in range(30):
        x = search.suggest(f"t{index}")["x"]
        proposed.append(x)
        # Unguarded, the diverged trials would look best (the score falls with x).
        result = {"epoch": 1, "score": 0.5 - 0.3 * x, "loss": math.nan if x < 0.5 else 0.1}
        guard(f"t{index}", result)
        search.on_trial_complete(f"t{index}", result=result)
    states = {trial.state for trial in search._ot_study.trials}
    assert states == {optuna.trial.TrialState.COMPLETE}
    assert min(t.value for t in search._ot_study.trials) == -math.inf
    # Over seeds 0-4 the 20 TPE proposals land in x >= 0.5: 10-14 times with the guard, 3-8
    # times when diverged trials are reported as failures (TPE ignores those), 0-3 unguarded.
    assert sum(x >= 0.5 for x in proposed[10:]) >= 9, proposed[10:]
