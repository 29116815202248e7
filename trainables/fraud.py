"""Fraud detector: an MLP over card transactions, where positives are rare (about 0.5%).

Default data: a seeded synthetic generator shaped like the public credit-card fraud set
(`Time`, `V1`..`V28`, `Amount`, `Class`). Its fraud pattern mixes a linear part with
non-linear ones (both tails of a feature, a product of two features, odd amounts at night),
so a linear model cannot reach the ceiling. Real data: that CSV from a local path.

Class imbalance is a hyperparameter: `pos_weight` weights the rare positives in the loss, and
`loss: focal` adds the focal term `(1 - p_t) ** gamma`, which turns attention to hard examples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import nn

from trainables.classification import check_fractions, feature_frame, feedforward, smoke_subset, split_three_ways
from trainables.files import DataError
from trainables.loop import Dataset, LossFn, Task, predict, run_trial
from trainables.metrics import recall_at_precision

METRICS = ("val_auprc", "val_roc_auc", "val_recall_at_90_precision", "val_loss", "train_loss", "epoch")
FEATURES = ["Time", *(f"V{i}" for i in range(1, 29)), "Amount"]
TARGET = "Class"
# --smoke-test only checks the plumbing in two epochs: a small set, denser in fraud so that
# two epochs of any configuration already show learning.
SMOKE_ROWS = 20_000
SMOKE_FRAUD_RATE = 0.05
PRECISION_TARGET = 0.9


class DataConfig(BaseModel):
    """The spec's `data` block for this trainable."""

    model_config = ConfigDict(extra="forbid")

    dataset: Literal["synthetic", "csv"] = "synthetic"
    path: str | None = None  # csv: the credit-card fraud file (creditcard.csv)
    num_rows: int = Field(default=100_000, ge=2_000)  # synthetic only
    fraud_rate: float = Field(default=0.005, gt=0, lt=0.5)  # synthetic only
    val_fraction: float = Field(default=0.2, gt=0, lt=1)
    # Held out from every trial; only the registered model is scored on it.
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    seed: int = 0
    smoke: bool = False

    @model_validator(mode="after")
    def _csv_needs_the_columns(self) -> DataConfig:
        check_fractions(self.val_fraction, self.test_fraction)
        if self.dataset != "csv":
            return self
        if not self.path:
            raise ValueError("path: required for dataset 'csv': the credit-card fraud file (creditcard.csv)")
        if not Path(self.path).expanduser().is_file():
            raise ValueError(f"path: file does not exist: {self.path}")
        columns = set(pd.read_csv(Path(self.path).expanduser(), nrows=0).columns)
        missing = [c for c in [*FEATURES, TARGET] if c not in columns]
        if missing:
            raise ValueError(f"path: {self.path} lacks the columns {', '.join(missing)}")
        return self


def generate_transactions(num_rows: int, fraud_rate: float, seed: int) -> pd.DataFrame:
    """Seeded transactions with a rare fraud pattern to learn.

    `V1..V28` are independent normals with shrinking spread, like PCA components; `Amount` is
    log-normal; `Time` spans two days in seconds. A hidden fraud score combines a linear part
    (V14, V12, V4: a logistic regression finds these) with non-linear ones: both tails of V3,
    the product V10 * V17, and very small or very large amounts between midnight and 5 am.
    `Class` is drawn from that score, its offset solved so the fraud rate is `fraud_rate`.
    """
    rng = np.random.default_rng(seed)
    time = np.sort(rng.uniform(0, 2 * 86_400, num_rows)).round()
    scales = 2.0 * 0.92 ** np.arange(28)
    z = rng.normal(size=(num_rows, 28))
    amount = np.exp(rng.normal(3.0, 1.3, num_rows)).round(2)
    night = (time / 3600) % 24 < 5
    score = 2.5 * (
        -1.6 * z[:, 13]
        - 1.0 * z[:, 11]
        + 0.8 * z[:, 3]
        + 1.6 * np.maximum(np.abs(z[:, 2]) - 1.0, 0.0)
        + 1.2 * z[:, 9] * z[:, 16]
        + 2.0 * (night & ((amount < 3) | (amount > 400)))
    )
    low, high = -60.0, 20.0  # bisect the offset: the mean fraud probability is the rate
    for _ in range(60):
        offset = (low + high) / 2
        if _sigmoid(score + offset).mean() > fraud_rate:
            high = offset
        else:
            low = offset
    labels = (rng.uniform(size=num_rows) < _sigmoid(score + offset)).astype(np.int64)
    frame = pd.DataFrame(z * scales, columns=FEATURES[1:29])
    frame.insert(0, "Time", time)
    frame["Amount"] = amount
    frame[TARGET] = labels
    return frame


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def load_data(data: dict[str, Any]) -> Dataset:
    cfg = DataConfig.model_validate(data)
    if cfg.dataset == "synthetic":
        if cfg.smoke:
            frame = generate_transactions(SMOKE_ROWS, max(cfg.fraud_rate, SMOKE_FRAUD_RATE), cfg.seed)
        else:
            frame = generate_transactions(cfg.num_rows, cfg.fraud_rate, cfg.seed)
    else:
        frame = pd.read_csv(Path(cfg.path).expanduser(), usecols=[*FEATURES, TARGET])
    features = frame[FEATURES].to_numpy(dtype=np.float32)
    labels = frame[TARGET].to_numpy(dtype=np.float32)
    if cfg.dataset == "csv" and cfg.smoke:
        features, labels = smoke_subset(features, labels, SMOKE_ROWS, cfg.seed)
    if labels.sum() < 3 or labels.sum() > len(labels) - 3:
        # Each of the training, validation and test splits needs both classes.
        raise DataError(
            f"the data needs both classes, 3 rows of each at least; it has {int(labels.sum())} positives "
            f"in {len(labels)} rows"
        )
    x_train, x_val, x_test, y_train, y_val, y_test = split_three_ways(
        features, labels, cfg.val_fraction, cfg.test_fraction, cfg.seed
    )
    info = {
        "dataset": cfg.dataset,
        "feature_names": FEATURES,
        "positive_rate": float(y_train.mean()),
        # Scaling statistics from the training split only.
        "mean": x_train.mean(axis=0).tolist(),
        "std": x_train.std(axis=0).tolist(),
    }
    tensors = [torch.from_numpy(a) for a in (x_train, y_train, x_val, y_val)]
    return Dataset(*tensors, info, torch.from_numpy(x_test), torch.from_numpy(y_test))


def build_model(config: dict[str, Any], info: dict[str, Any]) -> nn.Module:
    """Raw features in, one fraud logit per row out."""
    return nn.Sequential(*feedforward(config, info, 1), nn.Flatten(start_dim=0))


def imbalance_loss(config: dict[str, Any]) -> LossFn:
    """`loss: bce` (default) or `focal`; `pos_weight` multiplies the positives' terms in both.

    Focal loss (Lin et al. 2017) scales each example's cross-entropy by `(1 - p_t) ** gamma`,
    where p_t is the probability given to the true class: confident, easy negatives fade out.
    With gamma = 0 it is the weighted cross-entropy again.
    """
    kind = str(config.get("loss", "bce"))
    pos_weight = float(config.get("pos_weight", 1.0))
    gamma = float(config.get("gamma", 2.0))
    if kind not in ("bce", "focal"):
        raise ValueError(f"unknown loss {kind!r}: expected bce or focal")

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        weights = 1.0 + (pos_weight - 1.0) * labels
        cross_entropy = nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        if kind == "focal":
            p_true = torch.exp(-cross_entropy)  # the probability of the true class
            cross_entropy = (1.0 - p_true) ** gamma * cross_entropy
        return (weights * cross_entropy).mean()

    return loss


def detection_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Metrics that mean something with rare positives; a diverged model's NaNs count as 0."""
    probabilities = np.nan_to_num(probabilities, nan=0.0, posinf=1.0, neginf=0.0)
    return {
        "val_auprc": float(average_precision_score(labels, probabilities)),
        "val_roc_auc": float(roc_auc_score(labels, probabilities)),
        "val_recall_at_90_precision": recall_at_precision(labels, probabilities, PRECISION_TARGET),
    }


def evaluate(model: nn.Module, data: Dataset, loss_fn: LossFn, device: torch.device) -> dict[str, float]:
    logits = predict(model, data.x_val, device)
    # Unweighted, so val_loss compares across trials with different pos_weight and loss.
    val_loss = float(nn.functional.binary_cross_entropy_with_logits(logits, data.y_val))
    return {"val_loss": val_loss, **detection_metrics(data.y_val.numpy(), torch.sigmoid(logits).numpy())}


def logistic_regression_baseline(data: Dataset) -> tuple[str, dict[str, float]]:
    """A logistic regression on the same split and scaling: the bar the MLP must beat."""
    from sklearn.linear_model import LogisticRegression

    mean, std = np.asarray(data.info["mean"]), np.maximum(np.asarray(data.info["std"]), 1e-6)
    model = LogisticRegression(max_iter=2000)
    model.fit((data.x_train.numpy() - mean) / std, data.y_train.numpy())
    probabilities = model.predict_proba((data.x_val.numpy() - mean) / std)[:, 1]
    return "logistic_regression", detection_metrics(data.y_val.numpy(), probabilities)


def serving_model(model: nn.Module, info: dict[str, Any] | None = None) -> nn.Module:
    """The fraud probability of each row."""
    return nn.Sequential(model, nn.Sigmoid()).eval()


TASK = Task(
    load_data=load_data,
    build_model=build_model,
    loss_fn=imbalance_loss,
    evaluate=evaluate,
    serving_model=serving_model,
    input_example=feature_frame,
    baseline=logistic_regression_baseline,
)


def train(config: dict[str, Any], data: Dataset | None = None) -> None:
    """Ray Tune trainable: one report and checkpoint per epoch."""
    run_trial(TASK, config, data)
