"""The Pareto math of several objectives (larger is better everywhere): fronts, Deb's
constraint rule, crowding distance, hypervolume against hand-computed volumes and Optuna's own,
the reference point, the knee, and the order of a scheduler's rung."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from tuning_platform.pareto import (
    constrained_ranks,
    crowding_distances,
    hypervolume,
    knee,
    nondominated_ranks,
    order_in_rung,
    reference_point,
    standings,
)

INF = math.inf


@pytest.mark.parametrize(
    "points, ranks",
    [
        ([], []),
        ([(1.0, 1.0)], [1]),
        # (2, 2) dominates (1, 1), which dominates (1, 0); (0, 3) trades off; equal points share.
        ([(1, 1), (2, 2), (0, 3), (2, 2), (1, 0)], [2, 1, 1, 1, 3]),
        ([(-INF, -INF), (0, 0)], [2, 1]),
        # A diverged coordinate is only a value: best on the other objective keeps it on the front.
        ([(-INF, 5), (1, 1)], [1, 1]),
        ([(math.nan, 1), (0, 1)], [2, 1]),
        ([(3,), (1,), (3,), (2,)], [1, 3, 1, 2]),
        ([(1, 2, 3), (3, 2, 1), (1, 1, 1), (2, 2, 2)], [1, 1, 2, 1]),
    ],
)
def test_nondominated_ranks(points, ranks):
    assert nondominated_ranks(points) == ranks


def _dominates(a, b):
    return all(x >= y for x, y in zip(a, b, strict=True)) and any(x > y for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("dims", [2, 3])
def test_each_front_is_dominated_only_by_earlier_fronts(dims):
    rng = random.Random(dims)
    points = [tuple(rng.randint(0, 5) for _ in range(dims)) for _ in range(60)]
    ranks = nondominated_ranks(points)
    for i, j in itertools.permutations(range(len(points)), 2):
        if _dominates(points[i], points[j]):
            assert ranks[i] < ranks[j]
    for j, rank in enumerate(ranks):
        if rank > 1:  # something one front up dominates it
            assert any(ranks[i] == rank - 1 and _dominates(points[i], points[j]) for i in range(len(points)))


def test_constrained_ranks_put_every_feasible_point_first():
    points = [(0.9, -5.0), (0.5, -1.0), (0.99, -0.5), (0.2, -9.0), (0.95, -0.1), (0.1, -9.0)]
    violations = [0.0, 0.0, 2.0, 0.0, 0.5, 2.0]
    # Feasible: (0.9, -5) and (0.5, -1) trade off, (0.2, -9) is dominated. Infeasible, by violation
    # alone: 0.5 before the two 2.0s, which share a rank although (0.99, -0.5) dominates (0.1, -9).
    assert constrained_ranks(points, violations) == [1, 1, 4, 2, 3, 4]


def test_an_infeasible_point_never_outranks_a_feasible_one():
    rng = np.random.default_rng(3)
    points = rng.normal(size=(80, 2))
    points[:40] += 10  # the infeasible half is far better on both objectives
    violations = [rng.uniform(0.01, 3) for _ in range(40)] + [0.0] * 40
    ranks = constrained_ranks(points.tolist(), violations)
    assert max(ranks[40:]) < min(ranks[:40])
    by_violation = sorted(range(40), key=lambda i: violations[i])
    assert [ranks[i] for i in by_violation] == sorted(ranks[:40])


def test_a_missing_constraint_metric_is_infeasible_last():
    assert constrained_ranks([(1,), (0,), (5,)], [0.0, math.nan, 1.0]) == [1, 3, 2]


@pytest.mark.parametrize(
    "front, distances",
    [
        ([], []),
        ([(1, 1)], [INF]),
        ([(0, 1), (1, 0)], [INF, INF]),
        # x: (1,3) gets (2-0)/4, (2,2.5) gets (4-1)/4; y: (2,2.5) gets (3-0)/4, (1,3) (4-2.5)/4.
        ([(0, 4), (1, 3), (2, 2.5), (4, 0)], [INF, 0.875, 1.5, INF]),
        # A duplicate shares its twin's distance.
        ([(0, 4), (1, 3), (2, 2.5), (4, 0), (1, 3)], [INF, 0.875, 1.5, INF, 0.875]),
        # A coordinate all points share has no ends and adds nothing.
        ([(0, 4, 7), (1, 3, 7), (2, 2.5, 7), (4, 0, 7)], [INF, 0.875, 1.5, INF]),
        # Next to a diverged end the gap is infinite.
        ([(-INF, 9), (1, 3), (2, 2), (3, 1)], [INF, INF, 1.25, INF]),
    ],
)
def test_crowding_distances(front, distances):
    assert crowding_distances(front) == pytest.approx(distances)


@pytest.mark.parametrize(
    "points, reference, volume",
    [
        ([], (0, 0), 0.0),
        ([(3, 2)], (0, 0), 6.0),
        # A staircase: 3x1 + 2x1 + 1x1.
        ([(1, 3), (2, 2), (3, 1)], (0, 0), 6.0),
        # A dominated point and one on the reference's line add nothing.
        ([(1, 3), (2, 2), (3, 1), (1, 1), (0, 5)], (0, 0), 6.0),
        ([(1, 3), (2, 2), (3, 1)], (0.5, 0.5), 2.5 * 0.5 + 1.5 * 1 + 0.5 * 1),
        ([(1, 3), (-INF, 9), (math.nan, 9)], (0, 0), 3.0),
        ([(-1, 3)], (0, 0), 0.0),
        ([(2, 3, 4)], (0, 0, 0), 24.0),
        # 4 + 3 - their overlap 1x1x1.
        ([(2, 2, 1), (1, 1, 3)], (0, 0, 0), 6.0),
        # Inclusion-exclusion: 4 + 3 + 3 - 1 - 2 - 1 + 1.
        ([(2, 2, 1), (1, 1, 3), (3, 1, 1)], (0, 0, 0), 7.0),
        # Above x = 1 only (1, 2, 1) and (2, 1, 1) are left: 2 + 2 - 1.
        ([(2, 2, 1), (1, 1, 3), (3, 1, 1)], (1, 0, 0), 3.0),
        ([(3,), (5,)], (1,), 4.0),
    ],
)
def test_hypervolume_by_hand(points, reference, volume):
    assert hypervolume(points, reference) == pytest.approx(volume)


@pytest.mark.parametrize("dims", [2, 3])
def test_hypervolume_matches_optuna(dims):
    from optuna._hypervolume import compute_hypervolume  # private: a cross-check only

    rng = np.random.default_rng(dims)
    for _ in range(20):
        points = rng.uniform(0, 1, size=(int(rng.integers(1, 30)), dims))
        reference = np.full(dims, -0.1)
        # Optuna minimizes: the same volume with every sign turned.
        expected = compute_hypervolume(-points, -reference)
        assert hypervolume(points.tolist(), reference.tolist()) == pytest.approx(expected)


def test_the_reference_point_is_the_worst_value_less_a_tenth_of_the_range():
    assert reference_point([(1, 10), (3, 10), (2, -INF)]) == pytest.approx((0.8, 9.0))
    assert reference_point([(-INF, 1), (-INF, 2)]) == (-INF, pytest.approx(0.9))
    points = [(0.9, -9.0), (0.8, -4.0), (0.7, -2.0)]
    # Every point, the worst on an objective included, adds volume above it.
    reference = reference_point(points)
    for i in range(len(points)):
        others = points[:i] + points[i + 1 :]
        assert hypervolume(points, reference) > hypervolume(others, reference)


@pytest.mark.parametrize(
    "points, index",
    [
        ([(0, 1), (0.6, 0.6), (1, 0)], 1),
        # Each objective in its own units: scaling one by 1000 changes nothing.
        ([(0, 1000), (0.6, 600), (1, 0)], 1),
        ([(0, 1), (0.55, 0.3), (0.3, 0.55), (1, 0)], 1),
        # Equally near the ideal: the lowest index.
        ([(1, 0), (0, 1)], 0),
        ([(0.3, 0.55), (0.55, 0.3)], 0),
        # A coordinate with zero range scales to 1 for every point.
        ([(5, 0), (5, 1)], 1),
        ([(-INF, 10), (0, 0), (1, 1)], 2),
        ([(2, 3)], 0),
    ],
)
def test_knee(points, index):
    assert knee(points) == index


def test_the_rung_order_is_rank_then_crowding_then_index():
    points = [(0, 4), (1, 3), (2, 2.5), (4, 0), (1, 1)]
    # Front ends first (infinite, earlier first), then the wider gap, then the next front.
    assert order_in_rung(points) == [0, 3, 2, 1, 4]
    assert standings(points) == [(1, INF), (1, 0.875), (1, 1.5), (1, INF), (2, INF)]
    # (4, 0) infeasible: after the feasible fronts whatever its objectives.
    assert order_in_rung(points, [0, 0, 0, 1.5, 0]) == [0, 2, 1, 4, 3]
    # Equal points: the earlier first.
    assert order_in_rung([(1, 1), (0, 2), (1, 1), (2, 0)]) == [1, 3, 0, 2]
    assert order_in_rung([(5,), (5,), (7,)]) == [2, 0, 1]
    # Inside an infeasible rank the objectives do not count.
    assert order_in_rung([(0, 0), (9, 9), (5, 5)], [1.0, 1.0, 0.0]) == [2, 0, 1]
