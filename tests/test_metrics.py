"""Ranking and rare-positive metrics against hand-computed cases and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import ndcg_score, precision_recall_curve

from trainables.fraud import detection_metrics
from trainables.metrics import positive_rank_counts, ranking_metrics, recall_at_precision


def _row_with_positive_at(position: int, candidates: int = 100) -> torch.Tensor:
    """Scores of one user's candidates (column 0 the held-out item) that put it at `position`."""
    negatives = torch.arange(candidates - 1, 0, -1, dtype=torch.float64)  # 99, 98, ..., 1
    positive = candidates - position - 0.5  # between the negatives ranked position-1 and position
    return torch.cat([torch.tensor([positive]), negatives])[None, :]


@pytest.mark.parametrize(
    "position, hit, ndcg",
    [
        (0, 1.0, 1.0),  # first: log2(2) = 1
        (1, 1.0, 1 / math.log2(3)),
        (9, 1.0, 1 / math.log2(11)),  # tenth: still in the top 10
        (10, 0.0, 0.0),  # eleventh: absent from the top 10
        (99, 0.0, 0.0),  # last
    ],
)
def test_hit_rate_and_ndcg_of_one_ranking_by_formula(position, hit, ndcg):
    scores = _row_with_positive_at(position)
    greater, ties = positive_rank_counts(scores)
    assert (int(greater), int(ties)) == (position, 0)
    metrics = ranking_metrics(scores, k=10)
    assert metrics["val_hit_rate_at_10"] == pytest.approx(hit)
    assert metrics["val_ndcg_at_10"] == pytest.approx(ndcg)


def test_metrics_average_over_users():
    scores = torch.cat([_row_with_positive_at(0), _row_with_positive_at(9), _row_with_positive_at(50)])
    metrics = ranking_metrics(scores, k=10)
    assert metrics["val_hit_rate_at_10"] == pytest.approx(2 / 3)
    assert metrics["val_ndcg_at_10"] == pytest.approx((1 + 1 / math.log2(11)) / 3)


def test_ties_count_as_a_random_order_not_a_win():
    # Everything scored alike: the positive is equally likely at each of the 100 positions.
    flat = torch.zeros(1, 100)
    metrics = ranking_metrics(flat, k=10)
    assert metrics["val_hit_rate_at_10"] == pytest.approx(0.1)
    assert metrics["val_ndcg_at_10"] == pytest.approx(sum(1 / math.log2(r + 2) for r in range(10)) / 100)
    # Two above and one tied: position 2 or 3, half each.
    row = torch.tensor([[5.0, 9.0, 8.0, 5.0, 1.0]])
    assert ranking_metrics(row, k=3)["val_ndcg_at_3"] == pytest.approx(0.5 / math.log2(4))
    assert ranking_metrics(row, k=3)["val_hit_rate_at_3"] == pytest.approx(0.5)


def test_a_row_with_nan_scores_counts_as_a_miss():
    scores = torch.cat([_row_with_positive_at(0), torch.full((1, 100), float("nan"))])
    assert ranking_metrics(scores, k=10)["val_hit_rate_at_10"] == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(5))
def test_ndcg_matches_scikit_learn(seed):
    generator = np.random.default_rng(seed)
    # Coarse scores so that ties happen; scikit-learn averages over tied orders as we do.
    scores = generator.integers(0, 20, size=(50, 100)).astype(float)
    relevance = np.zeros_like(scores)
    relevance[:, 0] = 1
    ours = ranking_metrics(torch.from_numpy(scores), k=10)["val_ndcg_at_10"]
    assert ours == pytest.approx(ndcg_score(relevance, scores, k=10))


@pytest.mark.parametrize(
    "labels, scores, precision, expected",
    [
        # The top two are fraud, then a legit one: 100% precision catches 2 of 3.
        ([1, 1, 0, 1, 0], [0.9, 0.8, 0.7, 0.6, 0.1], 0.9, 2 / 3),
        # Flagging the top four gives precision 3/4: enough for 0.75, all fraud caught.
        ([1, 1, 0, 1, 0], [0.9, 0.8, 0.7, 0.6, 0.1], 0.75, 1.0),
        # The top score is legit: no threshold reaches 90% precision.
        ([0, 1, 1, 0, 0], [0.9, 0.8, 0.3, 0.2, 0.1], 0.9, 0.0),
        # No fraud at all: nothing to recall.
        ([0, 0, 0], [0.9, 0.5, 0.1], 0.9, 0.0),
    ],
)
def test_recall_at_precision_by_hand(labels, scores, precision, expected):
    assert recall_at_precision(np.array(labels), np.array(scores), precision) == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(3))
def test_recall_at_precision_is_the_best_threshold_by_brute_force(seed):
    generator = np.random.default_rng(seed)
    labels = (generator.uniform(size=400) < 0.1).astype(int)
    scores = labels * generator.uniform(0.3, 1.0, size=400) + generator.uniform(0, 0.7, size=400)
    best = 0.0
    for threshold in np.unique(scores):
        flagged = scores >= threshold
        if labels[flagged].mean() >= 0.9:
            best = max(best, labels[flagged].sum() / labels.sum())
    assert recall_at_precision(labels, scores, 0.9) == pytest.approx(best)
    precisions, recalls, _ = precision_recall_curve(labels, scores)
    assert best <= recalls[precisions >= 0.9].max() + 1e-12


def test_detection_metrics_of_a_perfect_and_a_useless_model():
    labels = np.array([0] * 95 + [1] * 5)
    perfect = detection_metrics(labels, labels.astype(float))
    assert perfect == {"val_auprc": 1.0, "val_roc_auc": 1.0, "val_recall_at_90_precision": 1.0}
    # A diverged model (NaN everywhere) scores like a constant one: AUPRC = the positive rate.
    useless = detection_metrics(labels, np.full(100, np.nan))
    assert useless["val_auprc"] == pytest.approx(0.05)
    assert useless["val_roc_auc"] == pytest.approx(0.5)
    assert useless["val_recall_at_90_precision"] == 0.0
