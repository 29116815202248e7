"""The multi-objective ASHA scheduler on hand-made rungs (a dominated trial stops, a front member
goes on, ties follow crowding distance, decisions are made on arrival), and against Ray's own
ASHA on random streams of one objective. Driven like Ray's scheduler tests: trial stand-ins and
no Tune controller, no Ray cluster."""

from __future__ import annotations

import copy
import math
import pickle
import random
import re
from dataclasses import dataclass

import pytest
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from tuning_platform.execution.mo_asha import MultiObjectiveASHA, kept
from tuning_platform.objectives import Objective, parse_constraint

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP
ACCURACY_AND_LATENCY = [Objective("accuracy", "max"), Objective("latency_ms", "min")]


@dataclass(frozen=True)
class Trial:
    """What a scheduler reads of a trial: its id."""

    trial_id: str


def scheduler(**settings) -> MultiObjectiveASHA:
    settings = {"objectives": ACCURACY_AND_LATENCY, "grace_period": 1, "max_t": 8, "reduction_factor": 2} | settings
    return MultiObjectiveASHA(time_attr="epoch", **settings)


def report(s: MultiObjectiveASHA, trial_id: str, epoch: int, accuracy: float, latency: float, **more) -> str:
    return s.on_trial_result(
        None, Trial(trial_id), {"epoch": epoch, "accuracy": accuracy, "latency_ms": latency} | more
    )


def milestones(debug: str) -> list[float]:
    return sorted(float(m) for m in re.findall(r"Iter ([0-9.]+):", debug))


@pytest.mark.parametrize(
    "grace, max_t, rf", [(1, 8, 2), (1, 9, 3), (1, 100, 4), (2, 50, 2), (1, 12, 3), (3, 3, 2), (1, 10, 2.5)]
)
def test_the_rungs_are_ashas(grace, max_t, rf):
    ray_asha = AsyncHyperBandScheduler(
        time_attr="epoch", metric="accuracy", mode="max", max_t=max_t, grace_period=grace, reduction_factor=rf
    )
    ours = scheduler(grace_period=grace, max_t=max_t, reduction_factor=rf)
    assert ours.milestones == milestones(ray_asha.debug_string()) == milestones(ours.debug_string())
    assert ours.debug_string().startswith("Using MultiObjectiveASHA: num_stopped=0\nBracket: Iter ")


@pytest.mark.parametrize(
    ("count", "rf", "expected"), [(1, 2, 1), (2, 2, 1), (3, 2, 1), (4, 2, 2), (6, 4, 2), (7, 3, 2)]
)
def test_a_rung_keeps_about_one_in_reduction_factor(count, rf, expected):
    assert kept(count, rf) == expected


def test_a_dominated_trial_stops_and_a_front_member_goes_on():
    s = scheduler()
    assert report(s, "a", 1, 0.90, 5.0) == CONTINUE  # the rung was empty
    assert report(s, "b", 1, 0.80, 10.0) == STOP  # worse on both: dominated by a
    assert report(s, "c", 1, 0.95, 20.0) == CONTINUE  # more accurate, slower: on the front with a
    assert report(s, "d", 1, 0.70, 30.0) == STOP
    # Faster than every trial: the front's other end; stands level with c, the accurate end.
    assert report(s, "e", 1, 0.60, 1.0) == CONTINUE
    assert s.debug_string().startswith("Using MultiObjectiveASHA: num_stopped=2\n")
    assert "Iter 1.000: 5 recorded, 3 on the front" in s.debug_string()


def _front_with_a_tight_pair() -> MultiObjectiveASHA:
    s = scheduler()
    # A front: the ends a and z, m and n close together near a; p behind the front.
    for trial_id, accuracy, latency in [
        ("a", 0.90, 10.0),
        ("z", 0.60, 1.0),
        ("m", 0.86, 8.5),
        ("n", 0.855, 8.3),
        ("p", 0.50, 50.0),
    ]:
        report(s, trial_id, 1, accuracy, latency)
    return s


def test_inside_a_front_crowding_distance_decides():
    # Six entries with the newcomer: it goes on when fewer than kept(6, 2) = 3 stand ahead of it.
    # Both newcomers below are on the front, behind its two ends a and z.
    squeezed = _front_with_a_tight_pair()
    assert report(squeezed, "x", 1, 0.858, 8.4) == STOP  # between m and n: a small cuboid
    in_a_gap = _front_with_a_tight_pair()
    assert report(in_a_gap, "y", 1, 0.73, 4.6) == CONTINUE  # alone between n and z: a wide one


def test_an_exact_tie_does_not_stop_the_newcomer():
    # Ray stops a trial only below the cutoff, never at it; likewise a newcomer equal to what the
    # rung holds (same front, same crowding distance) goes on.
    s = scheduler()
    assert report(s, "a", 1, 0.9, 5.0) == CONTINUE
    assert report(s, "b", 1, 0.9, 5.0) == CONTINUE
    assert report(s, "c", 1, 0.9, 5.0) == CONTINUE
    assert report(s, "d", 1, 0.9, 5.5) == STOP


def test_a_trial_is_judged_on_arrival_with_what_the_rung_holds_then():
    s = scheduler(grace_period=2, max_t=16)
    assert report(s, "slow", 1, 0.50, 50.0) == CONTINUE  # below the first rung
    assert report(s, "slow", 2, 0.50, 50.0) == CONTINUE  # first at rung 2: nothing to compare with
    assert report(s, "good", 2, 0.90, 5.0) == CONTINUE
    assert report(s, "fair", 2, 0.80, 6.0) == STOP  # good is already there
    # The better trials that came after do not stop "slow" afterwards: ASHA never looks back.
    assert report(s, "slow", 3, 0.55, 45.0) == CONTINUE
    # Rung 4 holds nothing yet: "slow" goes on there too, and "good" then meets it, not rung 2.
    assert report(s, "slow", 4, 0.55, 45.0) == CONTINUE
    assert report(s, "good", 4, 0.52, 47.0) == STOP
    # A trial whose results skip a rung is judged at the highest rung it reached.
    assert report(s, "jump", 7, 0.40, 60.0) == STOP
    assert "Iter 4.000: 3 recorded" in s.debug_string()
    assert "Iter 2.000: 3 recorded" in s.debug_string()


def test_a_diverged_result_ranks_last():
    s = scheduler()
    # Alone at the rung it goes on (Ray's ASHA too: no cutoff yet).
    assert report(s, "nan", 1, math.nan, 5.0) == CONTINUE
    assert report(s, "poor", 1, 0.10, 90.0) == CONTINUE  # ahead of the diverged one
    assert report(s, "inf", 1, 0.95, math.inf) == STOP  # its best accuracy does not count
    one = scheduler(objectives=[Objective("accuracy", "max")])
    assert report(one, "a", 1, -math.inf, 5.0) == CONTINUE
    assert report(one, "b", 1, 0.3, 5.0) == CONTINUE
    assert report(one, "c", 1, -math.inf, 5.0) == STOP


@pytest.mark.parametrize(
    "result",
    [
        {"epoch": 1, "accuracy": 0.99},  # no latency
        {"epoch": 1, "accuracy": None, "latency_ms": 1.0},
        {"epoch": 1, "accuracy": "high", "latency_ms": 1.0},
        {"accuracy": 0.99, "latency_ms": 1.0},  # no time attribute
    ],
)
def test_a_result_without_the_objectives_is_skipped_as_ray_skips_it(result):
    s = scheduler()
    assert s.on_trial_result(None, Trial("odd"), result) == CONTINUE
    s.on_trial_complete(None, Trial("odd"), result)
    assert "Iter 1.000: 0 recorded" in s.debug_string()
    assert report(s, "next", 1, 0.1, 99.0) == CONTINUE  # the rung is still empty


def test_an_infeasible_trial_never_goes_on_ahead_of_a_feasible_one():
    s = scheduler(constraints=[parse_constraint("params <= 1000")])
    assert report(s, "small", 1, 0.50, 50.0, params=800) == CONTINUE
    assert report(s, "big", 1, 0.99, 1.0, params=5000) == STOP  # better on both, infeasible
    assert report(s, "unknown", 1, 0.99, 1.0) == STOP  # a constraint's metric missing: infeasible
    # Dominated by small, yet ahead of both infeasible trials: second of four, and kept(4, 2) = 2.
    assert report(s, "tiny", 1, 0.40, 60.0, params=10) == CONTINUE
    assert report(s, "fine", 1, 0.60, 40.0, params=900) == CONTINUE


def test_a_trial_stops_at_max_t_and_its_last_result_is_recorded():
    s = scheduler(max_t=4)
    assert report(s, "a", 3, 0.5, 5.0) == CONTINUE
    assert report(s, "a", 4, 0.5, 5.0) == STOP
    assert "Iter 4.000: 0 recorded" in s.debug_string()
    s.on_trial_complete(None, Trial("a"), {"epoch": 4, "accuracy": 0.5, "latency_ms": 5.0})
    assert "Iter 4.000: 1 recorded" in s.debug_string()


def test_tunes_single_metric_is_accepted_and_the_objectives_kept():
    s = scheduler()
    assert s.set_search_properties("accuracy", "max", config={}) is True
    assert s.set_search_properties(None, None) is True
    assert s.objectives == ACCURACY_AND_LATENCY
    assert s.metric == "accuracy"


def _stream(seed: int, trials: int = 30, max_t: int = 9, missing: float = 0.0):
    """An asynchronous stream of (trial_id, result, finished): up to 5 trials run at once, each
    reports its epochs one by one, the next one in line starts when one ends; values rounded so
    ties happen."""
    rng = random.Random(seed)
    curves = {
        f"t{i}": (rng.uniform(0, 1), rng.uniform(0, 0.3), rng.randint(max(1, max_t // 2), max_t)) for i in range(trials)
    }
    waiting, running, epochs = list(curves), [], {}
    while waiting or running:
        while waiting and len(running) < 5:
            running.append(waiting.pop(0))
            epochs[running[-1]] = 0
        trial_id = rng.choice(running)
        epochs[trial_id] += 1
        base, slope, budget = curves[trial_id]
        epoch = epochs[trial_id]
        result = {"epoch": epoch, "training_iteration": epoch, "params": rng.randint(1, 9)}
        if rng.random() >= missing:
            result["accuracy"] = round(base + slope * math.log(epoch) + rng.gauss(0, 0.03), 2)
            result["latency_ms"] = round(rng.uniform(1, 10), 1)
        stop = yield trial_id, result, epoch >= budget
        if stop or epoch >= budget:
            running.remove(trial_id)


def _drive(schedulers, stream):
    """Feeds a stream to schedulers side by side; each result's decisions, in order."""
    decisions = []
    added = set()
    step = next(stream)
    while True:
        trial_id, result, finished = step
        trial = Trial(trial_id)
        if trial_id not in added:
            added.add(trial_id)
            for s in schedulers:
                s.on_trial_add(None, trial)
        now = [s.on_trial_result(None, trial, result) for s in schedulers]
        decisions.append(now)
        if now[0] == STOP or finished:
            for s in schedulers:
                s.on_trial_complete(None, trial, result)
        try:
            step = stream.send(now[0] == STOP)
        except StopIteration:
            return decisions


@pytest.mark.parametrize("mode", ["max", "min"])
@pytest.mark.parametrize("rf, grace, seed", [(2, 1, 0), (3, 1, 1), (4, 1, 2), (3, 2, 3), (2.5, 1, 4)])
def test_one_objective_makes_rays_asha_decisions(mode, rf, grace, seed):
    settings = {"max_t": 9, "grace_period": grace, "reduction_factor": rf}
    ray_asha = AsyncHyperBandScheduler(time_attr="epoch", metric="accuracy", mode=mode, **settings)
    ours = MultiObjectiveASHA("epoch", objectives=[Objective("accuracy", mode)], **settings)
    # Constraints every result meets change nothing either.
    constrained = MultiObjectiveASHA(
        "epoch", objectives=[Objective("accuracy", mode)], constraints=[parse_constraint("params <= 9")], **settings
    )
    decisions = _drive([ray_asha, ours, constrained], _stream(seed, missing=0.05))
    assert all(ray == mine == other for ray, mine, other in decisions)
    assert 10 < sum(ray == STOP for ray, _, _ in decisions) < len(decisions) / 2  # the stream tests something


@pytest.mark.parametrize("rf", [2, 3, 4])
def test_the_ranking_is_rays_cutoff_where_it_falls_on_a_recorded_value(rf):
    # Two objectives, the second the same for all: the ranking path on what is one number. Ray
    # interpolates between recorded values, a ranking cannot: where Ray's quantile lands on a
    # recorded value the two agree; elsewhere the ranking is the stricter.
    rng = random.Random(rf)
    ray_asha = AsyncHyperBandScheduler(time_attr="epoch", metric="accuracy", mode="max", reduction_factor=rf)
    ours = scheduler(reduction_factor=rf, max_t=100)
    for m in range(60):
        trial, value = Trial(f"t{m}"), rng.uniform(0, 1)
        ray_asha.on_trial_add(None, trial)
        ray = ray_asha.on_trial_result(None, trial, {"epoch": 1, "accuracy": value})
        mine = report(ours, trial.trial_id, 1, value, 1.0)
        if m == 0 or (m - 1) % rf == 0:
            assert mine == ray
        elif mine == CONTINUE:
            assert ray == CONTINUE


def test_ties_agree_with_ray_where_its_quantile_falls_on_a_recorded_value():
    ray_asha = AsyncHyperBandScheduler(time_attr="epoch", metric="accuracy", mode="max", reduction_factor=2)
    ours = scheduler(reduction_factor=2, max_t=100)
    rng = random.Random(7)
    for m in range(60):
        trial, value = Trial(f"t{m}"), rng.choice([0.1, 0.2, 0.3])
        ray_asha.on_trial_add(None, trial)
        ray = ray_asha.on_trial_result(None, trial, {"epoch": 1, "accuracy": value})
        mine = report(ours, trial.trial_id, 1, value, 1.0)
        if (m - 1) % 2 == 0:
            assert mine == ray


def test_the_scheduler_pickles_mid_run_and_goes_on_deciding_the_same(tmp_path):
    first = scheduler(constraints=[parse_constraint("params <= 7")])
    stream = _stream(11, trials=40)
    steps = [next(stream)]
    # Half the stream, then a copy by pickle (as Tune saves it) and one by save/restore.
    copies: list[MultiObjectiveASHA] = []
    decisions = []
    while True:
        trial_id, result, finished = steps[-1]
        if len(decisions) == 50:
            copies = [pickle.loads(pickle.dumps(first)), scheduler()]
            first.save(str(tmp_path / "scheduler.pkl"))
            copies[1].restore(str(tmp_path / "scheduler.pkl"))
        now = [s.on_trial_result(None, Trial(trial_id), result) for s in [first, *copies]]
        decisions.append(now)
        if now[0] == STOP or finished:
            for s in [first, *copies]:
                s.on_trial_complete(None, Trial(trial_id), result)
        try:
            steps.append(stream.send(now[0] == STOP))
        except StopIteration:
            break
    after = decisions[50:]
    assert len(after) > 50 and any(d[0] == STOP for d in after)
    assert all(len(set(d)) == 1 and len(d) == 3 for d in after)
    assert copies[0].debug_string() == first.debug_string() == copies[1].debug_string()
    assert copy.deepcopy(first).debug_string() == first.debug_string()
