"""MLP classifier for tabular data.

Default data: scikit-learn's breast cancer set (569 real patients, 30 features, binary).
Any CSV works too: `data: {dataset: csv, path: FILE, target: COLUMN}`; numeric columns other
than the target are the features.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from trainables.classification import (
    check_fractions,
    cross_entropy,
    evaluate_classifier,
    feature_frame,
    feedforward,
    smoke_subset,
    split_three_ways,
    with_probabilities,
)
from trainables.loop import Dataset, Task, run_trial

METRICS = ("val_accuracy", "val_roc_auc", "val_loss", "train_loss", "epoch")
SMOKE_ROWS = 400


class DataConfig(BaseModel):
    """The spec's `data` block for this trainable."""

    model_config = ConfigDict(extra="forbid")

    dataset: Literal["breast_cancer", "csv"] = "breast_cancer"
    path: str | None = None  # csv only
    target: str | None = None  # csv only: the label column
    val_fraction: float = Field(default=0.2, gt=0, lt=1)
    # Held out from every trial; only the registered model is scored on it.
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    seed: int = 0
    smoke: bool = False

    @model_validator(mode="after")
    def _csv_needs_path_and_target(self) -> DataConfig:
        check_fractions(self.val_fraction, self.test_fraction)
        if self.dataset != "csv":
            return self
        if not self.path:
            raise ValueError("path: required for dataset 'csv'")
        if not Path(self.path).expanduser().is_file():
            raise ValueError(f"path: file does not exist: {self.path}")
        if not self.target:
            raise ValueError("target: required for dataset 'csv': the label column")
        columns = pd.read_csv(Path(self.path).expanduser(), nrows=0).columns
        if self.target not in columns:
            raise ValueError(f"target: column {self.target!r} is not in {self.path}")
        return self


def load_data(data: dict[str, Any]) -> Dataset:
    cfg = DataConfig.model_validate(data)
    if cfg.dataset == "breast_cancer":
        from sklearn.datasets import load_breast_cancer

        bunch = load_breast_cancer()
        features = np.asarray(bunch.data, dtype=np.float32)
        labels = np.asarray(bunch.target, dtype=np.int64)
        names = [str(n) for n in bunch.feature_names]
        classes = [str(c) for c in bunch.target_names]
    else:
        frame = pd.read_csv(Path(cfg.path).expanduser())
        target = frame.pop(cfg.target)
        numeric = frame.select_dtypes("number")
        features = numeric.to_numpy(dtype=np.float32)
        names = [str(c) for c in numeric.columns]
        codes, uniques = pd.factorize(target, sort=True)
        labels = codes.astype(np.int64)
        classes = [str(c) for c in uniques]
    if cfg.smoke:
        features, labels = smoke_subset(features, labels, SMOKE_ROWS, cfg.seed)
    x_train, x_val, x_test, y_train, y_val, y_test = split_three_ways(
        features, labels, cfg.val_fraction, cfg.test_fraction, cfg.seed
    )
    info = {
        "dataset": cfg.dataset,
        "feature_names": names,
        "classes": classes,
        "num_classes": len(classes),
        # Scaling statistics from the training split only.
        "mean": x_train.mean(axis=0).tolist(),
        "std": x_train.std(axis=0).tolist(),
    }
    tensors = [torch.from_numpy(a) for a in (x_train, y_train, x_val, y_val)]
    return Dataset(*tensors, info, torch.from_numpy(x_test), torch.from_numpy(y_test))


def build_model(config: dict[str, Any], info: dict[str, Any]) -> nn.Module:
    return nn.Sequential(*feedforward(config, info, int(info["num_classes"])))


TASK = Task(
    load_data=load_data,
    build_model=build_model,
    loss_fn=cross_entropy,
    evaluate=evaluate_classifier,
    serving_model=with_probabilities,
    input_example=feature_frame,
)


def train(config: dict[str, Any], data: Dataset | None = None) -> None:
    """Ray Tune trainable: one report and checkpoint per epoch."""
    run_trial(TASK, config, data)
