"""Pareto math on objective vectors: non-dominated ranks (with Deb's constraint rule), crowding
distance, hypervolume and its reference point, the knee, and the order of a scheduler's rung.

Pure functions over points already turned so that LARGER IS BETTER in every coordinate
(`objectives.signed_point`). A non-finite coordinate is legal: -inf (a diverged trial's worst
value) is simply dominated, and NaN counts as -inf.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Points = Sequence[Sequence[float]]


def _array(points: Points) -> np.ndarray:
    """The points as an (n, d) float array, NaN read as -inf."""
    array = np.asarray(points, dtype=float)
    if array.ndim != 2:
        raise ValueError(f"points must be a list of equally long vectors, got shape {array.shape}")
    return np.where(np.isnan(array), -np.inf, array)


def _dominates(array: np.ndarray) -> np.ndarray:
    """[i, j]: point i dominates point j (at least as good everywhere, better somewhere)."""
    left, right = array[:, None, :], array[None, :, :]
    return np.all(left >= right, axis=2) & np.any(left > right, axis=2)


def nondominated_ranks(points: Points) -> list[int]:
    """Each point's front: 1 for the non-dominated points, 2 for those non-dominated once the
    first front is removed, and so on (Deb's fast non-dominated sort). Equal points share a
    rank: neither dominates the other."""
    if len(points) == 0:
        return []
    return [int(rank) for rank in _fronts(_array(points))]


def _fronts(array: np.ndarray) -> np.ndarray:
    dominates = _dominates(array)
    dominators = dominates.sum(axis=0)
    ranks = np.zeros(len(array), dtype=int)
    front = np.flatnonzero(dominators == 0)
    rank = 1
    while front.size:
        ranks[front] = rank
        dominators -= dominates[front].sum(axis=0)
        front = np.flatnonzero((dominators == 0) & (ranks == 0))
        rank += 1
    return ranks


def constrained_ranks(points: Points, violations: Sequence[float]) -> list[int]:
    """Ranks under Deb's constraint domination: the feasible points (violation 0) by
    non-dominated sorting first; then the infeasible ones, after every feasible rank, by their
    total violation alone (smaller first, equal violations sharing a rank). An infeasible point
    never outranks a feasible one. A NaN violation counts as infinite."""
    if len(points) != len(violations):
        raise ValueError(f"{len(points)} points but {len(violations)} violations")
    amounts = np.asarray(violations, dtype=float).reshape(-1)
    amounts = np.where(np.isnan(amounts), np.inf, amounts)
    feasible = amounts <= 0
    ranks = np.zeros(len(amounts), dtype=int)
    if feasible.any():
        ranks[feasible] = _fronts(_array(points)[feasible])
    last_feasible = int(ranks.max()) if feasible.any() else 0
    levels = np.unique(amounts[~feasible])
    ranks[~feasible] = last_feasible + 1 + np.searchsorted(levels, amounts[~feasible])
    return [int(rank) for rank in ranks]


def crowding_distances(points: Points) -> list[float]:
    """NSGA-II's crowding distance of each point within one front: per coordinate, the gap
    between its two neighbours over the coordinate's range, summed; the ends of a coordinate
    are infinite.

    Equal points share one distance (it is computed over the distinct points), so a duplicate
    neither hides nor doubles an end. A coordinate every point shares has no ends and adds
    nothing. With non-finite values the range is the finite values' range, and a gap reaching
    a non-finite neighbour is infinite."""
    if len(points) == 0:
        return []
    array = _array(points)
    distinct, which = np.unique(array, axis=0, return_inverse=True)
    which = which.reshape(-1)
    if len(distinct) <= 2:
        return [math.inf] * len(array)
    distance = np.zeros(len(distinct))
    for values in distinct.T:
        low, high = values.min(), values.max()
        if low == high:
            continue
        finite = values[np.isfinite(values)]
        span = high - low
        if not math.isfinite(span):
            span = float(finite.max() - finite.min()) if finite.size and finite.max() > finite.min() else 1.0
        order = np.argsort(values, kind="stable")
        ranked = values[order]
        gaps = np.full(len(values), np.inf)
        with np.errstate(invalid="ignore"):
            gaps[1:-1] = (ranked[2:] - ranked[:-2]) / span
        gaps[np.isnan(gaps)] = np.inf
        contribution = np.empty(len(values))
        contribution[order] = gaps
        contribution[(values == low) | (values == high)] = np.inf
        distance += contribution
    return [float(distance[i]) for i in which]


def hypervolume(points: Points, reference: Sequence[float]) -> float:
    """The volume dominated by the points and dominating the reference point (larger is
    better: the box between the reference and each point, united). A point that is not strictly
    better than the reference in every coordinate adds nothing.

    Exact in any dimension: a sweep in 2-D, slices along the last coordinate above that. The
    slicing costs about n^(d-1) log n, nothing for the two or three objectives a spec has."""
    origin = np.asarray(reference, dtype=float).reshape(-1)
    if origin.size == 0:
        raise ValueError("the reference point has no coordinates")
    if len(points) == 0:
        return 0.0
    array = _array(points)
    if array.shape[1] != origin.size:
        raise ValueError(f"points have {array.shape[1]} coordinates, the reference point {origin.size}")
    inside = array[np.all(array > origin, axis=1)]
    if not len(inside):
        return 0.0
    # Dominated points add nothing; dropping them first keeps the slicing small.
    front = inside[_fronts(inside) == 1]
    return float(_volume(front - origin))


def _volume(boxes: np.ndarray) -> float:
    """The union of the boxes [0, b] for rows b > 0."""
    if boxes.shape[1] == 1:
        return float(boxes.max())
    if boxes.shape[1] == 2:
        x, y = boxes[np.argsort(-boxes[:, 0], kind="stable")].T
        # Widest first: each box adds its width times the height it reaches above all wider ones.
        below = np.concatenate(([0.0], np.maximum.accumulate(y)[:-1]))
        with np.errstate(invalid="ignore"):  # an infinite width times a zero height
            return float(np.sum(np.where(y > below, x * (y - below), 0.0)))
    # Slices along the last coordinate: between two successive heights the cross-section is
    # the union of the boxes at least that tall, one dimension down.
    levels = np.unique(boxes[:, -1])[::-1]
    floors = np.append(levels[1:], 0.0)
    return float(
        sum(
            (level - floor) * _volume(boxes[boxes[:, -1] >= level, :-1])
            for level, floor in zip(levels, floors, strict=True)
        )
    )


def reference_point(points: Points) -> tuple[float, ...]:
    """The default reference point of `hypervolume`, per coordinate: the worst finite value
    among the points minus 10% of the finite values' range (minus 1 when the range is 0);
    -inf for a coordinate with no finite value (no volume then).

    The margin makes every finite point add volume, the worst ones on an objective included (a
    point on the reference adds nothing); the scale follows each objective's own units; and it
    is rebuilt from the recorded values alone. Compute it once over every trial whose figures
    are compared (all of a job's trials), so hypervolumes of steps or seeds share it. Turned
    back into an objective's own sign, it is the reference point a report states."""
    if len(points) == 0:
        raise ValueError("a reference point needs at least one point")
    reference = []
    for values in _array(points).T:
        finite = values[np.isfinite(values)]
        if not finite.size:
            reference.append(-math.inf)
            continue
        worst, span = float(finite.min()), float(finite.max() - finite.min())
        reference.append(worst - 0.1 * span if span > 0 else worst - 1.0)
    return tuple(reference)


def knee(points: Points) -> int:
    """The index of the point nearest (Euclidean) the ideal point once each coordinate is scaled
    to [0, 1] over the given points (ideal: 1 everywhere; a coordinate with zero range scales
    to 1 for all). Ties: the lowest index. The scale is the finite values'; a point with a
    non-finite coordinate is infinitely far, chosen only when every point is."""
    if len(points) == 0:
        raise ValueError("the knee of no points")
    array = _array(points)
    scaled = np.ones_like(array)
    for k, values in enumerate(array.T):
        finite = values[np.isfinite(values)]
        low, high = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
        if high > low:
            scaled[:, k] = (values - low) / (high - low)
        scaled[~np.isfinite(values), k] = -np.inf
    distance = np.sqrt(np.sum((1.0 - scaled) ** 2, axis=1))
    return int(np.argmin(distance))


def standings(points: Points, violations: Sequence[float] | None = None) -> list[tuple[int, float]]:
    """Each point's constrained rank and its crowding distance inside that rank (0 inside an
    infeasible rank: Deb's rule compares violations alone there). What `order_in_rung` sorts
    by, before the index."""
    count = len(points)
    amounts = [0.0] * count if violations is None else list(violations)
    ranks = constrained_ranks(points, amounts)
    crowding = [0.0] * count
    for rank in set(ranks):
        members = [i for i in range(count) if ranks[i] == rank]
        if not amounts[members[0]] <= 0:
            continue
        for i, distance in zip(members, crowding_distances([points[i] for i in members]), strict=True):
            crowding[i] = distance
    return list(zip(ranks, crowding, strict=True))


def order_in_rung(points: Points, violations: Sequence[float] | None = None) -> list[int]:
    """The indices of the points best first: by constrained rank; inside one feasible front by
    crowding distance, widest first; then by index (the earlier result first, a stable order).

    Crowding distance is NSGA-II's rule and what MO-ASHA (Schmucker et al. 2021) ranks by: of
    two trials on one front, the one alone in a sparse stretch comes before one beside a
    neighbour, so the ends and the gaps of the front stay alive rather than a cluster of
    near-identical trade-offs. An epsilon-net would need an epsilon per objective, which a spec
    does not give. Inside an infeasible rank the objectives do not count (Deb's rule compares
    violations alone), so there the earlier result comes first."""
    keys = standings(points, violations)
    return sorted(range(len(points)), key=lambda i: (keys[i][0], -keys[i][1], i))
