"""Evaluation metrics that scikit-learn does not provide in the form the trainables need.

Pure functions on tensors or arrays, no Ray and no torch modules, so tests check them against
hand-computed cases and against scikit-learn where it has the same metric.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import precision_recall_curve


def positive_rank_counts(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For rows of candidate scores whose column 0 is the held-out positive: how many
    negatives score higher than it, and how many tie with it."""
    positive = scores[:, :1]
    negatives = scores[:, 1:]
    return (negatives > positive).sum(dim=1), (negatives == positive).sum(dim=1)


def ranking_metrics(scores: torch.Tensor, k: int = 10) -> dict[str, float]:
    """Hit rate and NDCG at `k` with one relevant item per row (column 0), averaged over rows.

    Ties are broken at random, in expectation: a positive with `g` higher and `e` tied
    negatives sits at each 0-based position g..g+e with equal chance. That is what
    scikit-learn's `ndcg_score` does with ties, and it keeps a model that scores everything
    alike at the random level instead of first (optimistic) or last (pessimistic).
    NDCG of one relevant item at 0-based position r is 1 / log2(r + 2) when r < k, else 0.
    """
    scores = scores.double()
    greater, ties = positive_rank_counts(scores)
    positions = torch.arange(k, dtype=torch.float64)
    # (rows, k): the chance that the positive lands at each of the first k positions.
    chance = ((positions >= greater[:, None]) & (positions <= (greater + ties)[:, None])).double()
    chance /= (ties + 1).double()[:, None]
    gains = 1.0 / torch.log2(positions + 2.0)
    invalid = ~torch.isfinite(scores).all(dim=1)
    hit = chance.sum(dim=1).masked_fill(invalid, 0.0)
    ndcg = (chance * gains).sum(dim=1).masked_fill(invalid, 0.0)
    return {f"val_hit_rate_at_{k}": float(hit.mean()), f"val_ndcg_at_{k}": float(ndcg.mean())}


def recall_at_precision(labels: np.ndarray, probabilities: np.ndarray, precision: float) -> float:
    """The highest recall over thresholds whose precision is at least `precision`; 0 when none is.

    A threshold a user would deploy: "flag transactions so that 9 in 10 flags are fraud; how
    much fraud does that catch?"
    """
    labels = np.asarray(labels)
    if labels.sum() == 0:
        return 0.0
    precisions, recalls, _ = precision_recall_curve(labels, probabilities)
    reachable = recalls[precisions >= precision]
    # The curve's last point (precision 1, recall 0) is an artifact, not a threshold.
    return float(reachable.max()) if len(reachable) else 0.0
