"""Fraud detector: an MLP over card transactions, where positives are rare (about 0.5%).

Default data: a seeded synthetic generator shaped like the public credit-card fraud set
(`Time`, `V1`..`V28`, `Amount`, `Class`). Its fraud pattern mixes a linear part with
non-linear ones (both tails of a feature, a product of two features, odd amounts at night),
so a linear model cannot reach the ceiling. Real data: that CSV from a local path.

Class imbalance is a hyperparameter: `pos_weight` weights the rare positives in the loss, and
`loss: focal` adds the focal term `(1 - p_t) ** gamma`, which turns attention to hard examples.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import ConfigDict, Field, model_validator
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import nn

from trainables.classification import check_fractions, feedforward, smoke_subset, split_indices
from trainables.cost import COST_METRICS
from trainables.files import DataError
from trainables.loop import Dataset, LossFn, Task, predict, run_trial
from trainables.metrics import recall_at_precision
from trainables.tables import (
    Selection,
    TableEncoding,
    TableOptions,
    TablePredictor,
    category_text,
    raw_example,
    table_dataset,
    target_labels,
)

METRICS = ("val_auprc", "val_roc_auc", "val_recall_at_90_precision", "val_loss", "train_loss", "epoch", *COST_METRICS)
FEATURES = ["Time", *(f"V{i}" for i in range(1, 29)), "Amount"]
TARGET = "Class"
# --smoke-test only checks the plumbing in two epochs: a small set, denser in fraud so that
# two epochs of any configuration already show learning.
SMOKE_ROWS = 20_000
SMOKE_FRAUD_RATE = 0.05
PRECISION_TARGET = 0.9


class DataConfig(TableOptions):
    """The spec's `data` block for this trainable; the table keys apply to csv and parquet."""

    model_config = ConfigDict(extra="forbid")

    dataset: Literal["synthetic", "csv", "parquet"] = "synthetic"
    # csv/parquet: the credit-card fraud file (creditcard.csv), or any table with a 0/1 target.
    target: str | None = TARGET
    # The fraud class when the target is not 0/1 or False/True (default: the rarer class).
    positive: str | int | bool | None = None
    num_rows: int = Field(default=100_000, ge=2_000)  # synthetic only
    fraud_rate: float = Field(default=0.005, gt=0, lt=0.5)  # synthetic only
    val_fraction: float = Field(default=0.2, gt=0, lt=1)
    # Held out from every trial; only the registered model is scored on it.
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    seed: int = 0
    smoke: bool = False

    @model_validator(mode="after")
    def _a_file_needs_its_columns(self) -> DataConfig:
        check_fractions(self.val_fraction, self.test_fraction)
        if self.dataset != "synthetic":
            self.check_table(self.dataset)
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
        rate = max(cfg.fraud_rate, SMOKE_FRAUD_RATE) if cfg.smoke else cfg.fraud_rate
        frame = generate_transactions(SMOKE_ROWS if cfg.smoke else cfg.num_rows, rate, cfg.seed)
        selection = Selection(numeric=FEATURES, categorical=[])
        labels, positive = frame[TARGET].to_numpy(dtype=np.float32), "1"
    else:
        frame, selection = cfg.read()
        labels, positive = fraud_labels(frame[cfg.target], cfg.target, cfg.positive, cfg.path, selection.notes)
    kept = np.arange(len(frame))
    if cfg.dataset != "synthetic" and cfg.smoke:
        kept, labels = smoke_subset(kept, labels, SMOKE_ROWS, cfg.seed)
    frame = frame.iloc[kept].reset_index(drop=True)
    if labels.sum() < 3 or labels.sum() > len(labels) - 3:
        # Each of the training, validation and test splits needs both classes.
        raise DataError(
            f"the data needs both classes, 3 rows of each at least; it has {int(labels.sum())} positives "
            f"in {len(labels)} rows"
        )
    rows = split_indices(labels, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    info = {"dataset": cfg.dataset, "positive": positive, "positive_rate": float(labels[rows["train"]].mean())}
    return table_dataset(frame, selection, labels, rows, info, cfg.max_onehot)


def fraud_labels(
    values: pd.Series, target: str, positive: Any, source: str, notes: list[str]
) -> tuple[np.ndarray, str]:
    """1.0 for the fraud class, 0.0 for the other, and the fraud class's name. Without
    `positive`: 1 of 0/1, True of False/True, else the rarer class (with a note)."""
    codes, classes = target_labels(values, target, source)
    if len(classes) > 2:
        raise DataError(f"{source}: the target {target!r} has {len(classes)} classes; the fraud detector needs two")
    if positive is not None:
        chosen = category_text(positive)
        if chosen not in classes:
            raise DataError(f"{source}: data.positive {chosen!r} is not a class of {target!r} ({', '.join(classes)})")
    elif set(classes) in ({"0", "1"}, {"False", "True"}):
        chosen = max(classes)
    else:
        chosen = classes[int(np.bincount(codes).argmin())]
        notes.append(
            f"note: data: {chosen!r} is taken as the fraud class, the rarer one; set data.positive to change it"
        )
    return (codes == classes.index(chosen)).astype(np.float32), chosen


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
    """A logistic regression on the same split and encoding (every categorical column one-hot):
    the bar the MLP must beat."""
    from sklearn.linear_model import LogisticRegression

    encoding = TableEncoding.from_dict(data.info["table"])
    model = LogisticRegression(max_iter=2000)
    model.fit(encoding.one_hot(data.x_train.numpy()), data.y_train.numpy())
    probabilities = model.predict_proba(encoding.one_hot(data.x_val.numpy()))[:, 1]
    return "logistic_regression", detection_metrics(data.y_val.numpy(), probabilities)


def serving_model(model: nn.Module, info: dict[str, Any]) -> TablePredictor:
    """Raw rows in, each row's fraud probability out (column `probability`)."""
    return TablePredictor(model, info["table"], ["probability"])


TASK = Task(
    load_data=load_data,
    build_model=build_model,
    loss_fn=imbalance_loss,
    evaluate=evaluate,
    serving_model=serving_model,
    input_example=raw_example,
    baseline=logistic_regression_baseline,
)


def train(config: dict[str, Any], data: Dataset | None = None) -> None:
    """Ray Tune trainable: one report and checkpoint per epoch."""
    run_trial(TASK, config, data)
