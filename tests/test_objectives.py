"""Several objectives and constraints, fast: the spec's two forms, the searcher's hand-over to
Optuna (a trial the scheduler stopped is PRUNED, a finished one COMPLETE, constraints set), the
study rebuilt from records, the guard, the scheduler chosen, and the champion rule of versions."""

from __future__ import annotations

import math
from types import SimpleNamespace

import optuna
import pytest
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from tests.helpers import SPECS
from tuning_platform.execution.guard import TrialGuard
from tuning_platform.execution.mo_asha import MultiObjectiveASHA
from tuning_platform.execution.searcher import build_scheduler
from tuning_platform.objectives import Objective, parse_constraint
from tuning_platform.registry.champion import best_comparable
from tuning_platform.search.optuna_search import TrialSearch
from tuning_platform.search.study import RecordedTrial, study_of
from tuning_platform.spec import load_spec, spec_settings, validate_spec
from tuning_platform.spec.load import parse_yaml

TWO = {
    "name": "two",
    "trainable": "mlp",
    "objectives": [{"metric": "val_accuracy", "mode": "max"}, {"metric": "latency_ms", "mode": "min"}],
    "constraints": ["params <= 1000"],
    "search": {"space": {"x": {"type": "uniform", "low": 0, "high": 1}}, "fixed": {"epochs": 4}},
}


def _spec(raw=TWO, **top):
    return validate_spec({**raw, **top}, "two.yaml")


# --- The spec's two forms --------------------------------------------------------------------


def test_objectives_make_the_first_the_primary_unless_the_rule_prefers_another():
    spec = _spec()
    assert (spec.metric, spec.mode, spec.multi_objective) == ("val_accuracy", "max", True)
    assert spec.required_metrics == ["val_accuracy", "latency_ms", "params"]
    preferring = _spec(selection={"rule": {"prefer": "latency_ms"}})
    assert (preferring.metric, preferring.mode) == ("latency_ms", "min")
    assert not preferring.selection.reseeds, "a rule alone reseeds nothing"
    one = validate_spec(
        {**parse_yaml((SPECS / "mlp.yaml").read_text()), "selection": {"rule": "knee", "seeds": 2}}, "f"
    )
    assert (one.selection.top_k, one.selection.seeds) == (3, 2), "top_k's default applies once seeds is given"


def test_the_recorded_spec_reads_back_in_the_form_its_user_wrote():
    spec = _spec(selection={"rule": "knee"})
    settings = spec_settings(spec)
    assert "metric" not in settings and "mode" not in settings
    assert validate_spec(settings, "resolved.yaml") == spec


def test_a_one_metric_spec_records_exactly_what_it_did_before_objectives_existed():
    # The fingerprints `--resume` compares are of these settings: a job recorded before must
    # still match its spec.
    settings = spec_settings(load_spec(SPECS / "mlp.yaml")[0])
    assert {"objectives", "constraints"}.isdisjoint(settings)
    assert {"type", "population_size"}.isdisjoint(settings["search"]["sampler"])
    reseeding = spec_settings(validate_spec({**parse_yaml((SPECS / "mlp.yaml").read_text()), "selection": {}}, "f"))
    assert reseeding["selection"] == {"top_k": 3, "seeds": 3}


def test_a_constraint_reads_as_metric_operator_number():
    constraint = parse_constraint(" latency_ms<=5 ")
    assert (constraint.metric, constraint.op, constraint.bound, constraint.text) == (
        "latency_ms",
        "<=",
        5.0,
        "latency_ms <= 5",
    )
    assert constraint.violation(4.0) == 0 and constraint.violation(7.5) == 2.5
    assert constraint.violation(None) == math.inf
    assert parse_constraint("val_accuracy > 0.9").violation(0.9) > 0, "a strict bound met exactly is violated"
    with pytest.raises(ValueError, match="METRIC OP NUMBER"):
        parse_constraint("latency_ms == 5")


# --- The searcher's hand-over to Optuna ----------------------------------------------------------


def _searcher(objectives, constraints=(), horizon=4):
    searcher = TrialSearch(
        objectives=objectives,
        constraints=[parse_constraint(c) for c in constraints],
        horizon=horizon,
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    # As Tune does: its one metric (the primary objective), which the searcher must not take.
    searcher.set_search_properties(objectives[0].metric, objectives[0].mode, {"x": tune.uniform(0, 1)})
    return searcher


def _run(searcher, trial_id, results):
    searcher.suggest(trial_id)
    for epoch, result in enumerate(results, start=1):
        searcher.on_trial_result(trial_id, {**result, "epoch": epoch, "training_iteration": epoch})
    searcher.on_trial_complete(trial_id, {**results[-1], "epoch": len(results), "training_iteration": len(results)})


def test_a_trial_the_scheduler_stopped_is_pruned_with_its_epochs_a_finished_one_is_complete():
    searcher = _searcher([Objective("score", "max")])
    _run(searcher, "stopped", [{"score": 0.2}, {"score": 0.3}])
    _run(searcher, "finished", [{"score": 0.1}, {"score": 0.2}, {"score": 0.4}, {"score": 0.5}])
    _run(searcher, "diverged", [{"score": -math.inf, "diverged": True}])
    stopped, finished, diverged = searcher._ot_study.trials
    assert stopped.state == optuna.trial.TrialState.PRUNED
    assert stopped.intermediate_values == {1: 0.2, 2: 0.3} and stopped.value == 0.3
    assert (finished.state, finished.value) == (optuna.trial.TrialState.COMPLETE, 0.5)
    # Ended by the guard, not by the scheduler: a bad configuration, told as finished and worst.
    assert (diverged.state, diverged.value) == (optuna.trial.TrialState.COMPLETE, -math.inf)


def test_with_several_objectives_a_stopped_trial_is_pruned_without_values_and_constraints_are_set():
    searcher = _searcher(
        [Objective("val_accuracy", "max"), Objective("latency_ms", "min")], constraints=["params <= 1000"]
    )
    _run(searcher, "stopped", [{"val_accuracy": 0.7, "latency_ms": 2.0, "params": 500}])
    full = [{"val_accuracy": 0.8 + e / 100, "latency_ms": 3.0, "params": 5000} for e in range(4)]
    _run(searcher, "finished", full)
    stopped, finished = searcher._ot_study.trials
    assert stopped.state == optuna.trial.TrialState.PRUNED and stopped.values is None
    assert stopped.constraints == {"params <= 1000": 0.0}
    assert finished.state == optuna.trial.TrialState.COMPLETE
    assert finished.values == [pytest.approx(0.83), 3.0]
    assert finished.constraints == {"params <= 1000": 4000.0}, "infeasible: by how much it misses"
    assert len(searcher._ot_study.directions) == 2


def test_the_study_rebuilt_from_records_holds_every_objective_and_constraint():
    spec = _spec()

    def recorded(n, status, accuracy, latency, params):
        return RecordedTrial(
            trial_id=f"t{n}",
            run_id=f"r{n}",
            parent_run_id="p",
            status=status,
            params={"x": "0.5", "epochs": "4"},
            history=[(1, accuracy)],
            finals={"val_accuracy": accuracy, "latency_ms": latency, "params": params},
        )

    study, skipped = study_of(
        spec, [recorded(1, "completed", 0.9, 2.0, 800), recorded(2, "early_stopped", 0.7, 1.0, 2000)]
    )
    assert skipped == 0
    complete, pruned = study.trials
    assert complete.values == [0.9, 2.0] and complete.constraints == {"params <= 1000": 0.0}
    assert pruned.state == optuna.trial.TrialState.PRUNED and pruned.values is None
    assert pruned.constraints == {"params <= 1000": 1000.0}


# --- The guard and the scheduler -------------------------------------------------------------


def test_the_guard_stops_a_trial_that_never_reports_a_constraint_metric_and_worsens_every_objective():
    spec = _spec()
    guard = TrialGuard(spec.metric, spec.mode, None, spec.objective_list, spec.required_metrics)
    assert guard("t", {"val_accuracy": 0.9, "latency_ms": 1.0, "epoch": 1}) is True, "params is missing"
    assert guard("t", {"val_accuracy": 0.9, "latency_ms": 1.0, "params": 10, "epoch": 1}) is False
    diverged = {"val_accuracy": 0.9, "latency_ms": 1.0, "params": 10, "train_loss": math.nan, "epoch": 1}
    assert guard("t", diverged) is True
    assert (diverged["val_accuracy"], diverged["latency_ms"]) == (-math.inf, math.inf)


def test_asha_on_several_objectives_or_with_constraints_is_the_multi_objective_one():
    assert isinstance(build_scheduler(_spec()), MultiObjectiveASHA)
    one_constrained = validate_spec(
        {**{k: v for k, v in TWO.items() if k != "objectives"}, "metric": "val_accuracy", "mode": "max"}, "f"
    )
    assert isinstance(build_scheduler(one_constrained), MultiObjectiveASHA)
    assert isinstance(build_scheduler(load_spec(SPECS / "mlp.yaml")[0]), ASHAScheduler), "one metric: Ray's own"


# --- The champion among versions -------------------------------------------------------------


def _version(number, accuracy, latency, rule, data="d"):
    tags = {
        "metric": "val_accuracy",
        "metric_value": repr(accuracy),
        "mode": "max",
        "data_fingerprint": data,
        "objectives": "val_accuracy:max,latency_ms:min",
        "constraints": "params <= 1000",
        "selection_rule": rule,
        "objective.val_accuracy": repr(accuracy),
        "objective.latency_ms": repr(latency),
    }
    return SimpleNamespace(version=str(number), tags=tags)


def test_the_champion_compares_versions_of_the_same_objectives_constraints_rule_and_data():
    knee = [_version(1, 0.99, 9.0, "knee"), _version(2, 0.95, 1.0, "knee"), _version(3, 0.50, 0.5, "knee")]
    # Scaled over the three: (1, 0), (0.92, 0.94), (0, 1): the second is nearest the ideal point.
    assert best_comparable(knee, None) == "2"
    preferring = [_version(4, 0.99, 9.0, "prefer:val_accuracy"), _version(5, 0.95, 1.0, "prefer:val_accuracy")]
    assert best_comparable(preferring, None) == "4"
    # A version chosen by another rule, or on other data, is never compared with the champion.
    assert best_comparable([*knee, *preferring], knee[0]) == "2"
    assert best_comparable([*knee, _version(6, 0.999, 0.1, "knee", data="other")], knee[1]) == "2"


# --- Reseeding a front: the rule applied to the means --------------------------------------


def test_reseeded_front_candidates_are_chosen_by_the_rule_on_their_means_and_must_meet_the_constraints():
    from tuning_platform.outcome import TrialRow
    from tuning_platform.search.selection import Candidate, _chosen

    def candidate(name, *runs):
        rows = [
            TrialRow(
                f"{name}{i}", "completed", 4, acc, {}, finals={"val_accuracy": acc, "latency_ms": lat, "params": p}
            )
            for i, (acc, lat, p) in enumerate(runs)
        ]
        return Candidate(TrialRow(name, "completed", 4, runs[0][0], {}), rows, by_last="val_accuracy")

    accurate = candidate("a", (0.99, 9.0, 500), (0.97, 9.0, 500))  # means 0.98, 9.0
    balanced = candidate("b", (0.95, 1.0, 500), (0.93, 1.2, 500))  # means 0.94, 1.1
    small = candidate("c", (0.60, 0.4, 500), (0.40, 0.6, 500))  # means 0.50, 0.5
    too_big = candidate("d", (0.999, 0.1, 5000), (0.999, 0.1, 5000))  # dominates all, misses params <= 1000
    everyone = [accurate, balanced, small, too_big]
    assert _chosen(_spec(selection={"rule": "knee"}), everyone) is balanced
    assert _chosen(_spec(), everyone) is accurate, "the default rule: the best mean of the first objective"
    assert _chosen(_spec(selection={"rule": {"prefer": "latency_ms"}}), everyone) is small
    assert _chosen(_spec(), [too_big]) is None, "a configuration whose means miss a constraint is never chosen"
