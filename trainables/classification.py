"""Pieces the classification trainables (cnn, mlp) share: loss, evaluation, serving form."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from trainables.loop import Dataset, LossFn, predict
from trainables.tables import table_input


def cross_entropy(config: dict[str, Any]) -> LossFn:
    return nn.CrossEntropyLoss(label_smoothing=float(config.get("label_smoothing", 0.0)))


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """`val_accuracy`, and `val_roc_auc` (one-vs-rest, macro) when every class is present."""
    probabilities = torch.softmax(logits.float(), dim=1).numpy()
    y = labels.numpy()
    metrics = {"val_accuracy": float((probabilities.argmax(axis=1) == y).mean())}
    present = np.unique(y)
    if len(present) == probabilities.shape[1] and np.isfinite(probabilities).all():
        if probabilities.shape[1] == 2:
            metrics["val_roc_auc"] = float(roc_auc_score(y, probabilities[:, 1]))
        else:
            metrics["val_roc_auc"] = float(roc_auc_score(y, probabilities, multi_class="ovr"))
    return metrics


def evaluate_classifier(model: nn.Module, data: Dataset, loss_fn: LossFn, device: torch.device) -> dict[str, float]:
    logits = predict(model, data.x_val, device)
    val_loss = float(nn.functional.cross_entropy(logits, data.y_val))
    return {"val_loss": val_loss, **classification_metrics(logits, data.y_val)}


class Normalize(nn.Module):
    """Standardizes raw inputs with statistics of the training split, kept in the model.

    Keeping it inside the model means the registered model takes raw features, exactly what a
    user has at prediction time, and no statistic of the validation split leaks into training.
    """

    def __init__(self, mean: list[float], std: list[float], shape: tuple[int, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(shape))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(shape).clamp_min(1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def feedforward(config: dict[str, Any], info: dict[str, Any], outputs: int) -> list[nn.Module]:
    """Layers of a tabular MLP: the encoded table through `TableInput` (embeddings for the
    code columns), `num_layers` hidden layers of `hidden_size` (ReLU, dropout), `outputs` logits."""
    width = int(config.get("hidden_size", 64))
    dropout = float(config.get("dropout", 0.1))
    entry = table_input(info)
    layers: list[nn.Module] = [entry]
    size = entry.width
    for _ in range(int(config.get("num_layers", 2))):
        layers += [nn.Linear(size, width), nn.ReLU(), nn.Dropout(dropout)]
        size = width
    layers.append(nn.Linear(size, outputs))
    return layers


def with_probabilities(model: nn.Module, info: dict[str, Any] | None = None) -> nn.Module:
    """The served form of an image classifier: class probabilities instead of logits."""
    return nn.Sequential(model, nn.Softmax(dim=1)).eval()


def stratified_split(x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int):
    from sklearn.model_selection import train_test_split

    return train_test_split(x, y, test_size=val_fraction, random_state=seed, stratify=y)


def split_indices(y: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Row indices of a stratified train/validation/test split; fractions are of all rows.

    The test rows are drawn first and never depend on `val_fraction`, so the test split stays
    the same whatever validation split a job uses.
    """
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(y))
    rest, test = train_test_split(rows, test_size=test_fraction, random_state=seed, stratify=y)
    train, val = train_test_split(
        rest, test_size=val_fraction / (1 - test_fraction), random_state=seed, stratify=y[rest]
    )
    return {"train": train, "val": val, "test": test}


def split_three_ways(
    x: np.ndarray, y: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x_train, x_val, x_test, y_train, y_val, y_test by `split_indices`."""
    rows = split_indices(y, val_fraction, test_fraction, seed)
    return (*(x[rows[k]] for k in ("train", "val", "test")), *(y[rows[k]] for k in ("train", "val", "test")))


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    if val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1, leaving rows to train on (got {val_fraction} + {test_fraction})"
        )


def smoke_subset(x: np.ndarray, y: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded, stratified subset of at most `size` rows, for smoke tests."""
    if len(x) <= size:
        return x, y
    from sklearn.model_selection import train_test_split

    x_small, _, y_small, _ = train_test_split(x, y, train_size=size, random_state=seed, stratify=y)
    return x_small, y_small
