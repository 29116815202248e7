"""MLP classifier for tabular data.

Default data: scikit-learn's breast cancer set (569 real patients, 30 features, binary).
Any table works too: `data: {dataset: csv, path: FILE, target: COLUMN}` (or `parquet`), with
numeric, categorical, text and boolean columns and gaps, encoded as `trainables/tables.py`
describes; the registered model takes the raw rows and returns one probability per class.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import ConfigDict, Field, model_validator
from torch import nn

from trainables.classification import (
    check_fractions,
    cross_entropy,
    evaluate_classifier,
    feedforward,
    smoke_subset,
    split_indices,
)
from trainables.cost import COST_METRICS
from trainables.loop import Dataset, Task, run_trial
from trainables.tables import Selection, TableOptions, TablePredictor, raw_example, table_dataset, target_labels

METRICS = ("val_accuracy", "val_roc_auc", "val_loss", "train_loss", "epoch", *COST_METRICS)
SMOKE_ROWS = 400


class DataConfig(TableOptions):
    """The spec's `data` block for this trainable; the table keys apply to csv and parquet."""

    model_config = ConfigDict(extra="forbid")

    dataset: Literal["breast_cancer", "csv", "parquet"] = "breast_cancer"
    val_fraction: float = Field(default=0.2, gt=0, lt=1)
    # Held out from every trial; only the registered model is scored on it.
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    seed: int = 0
    smoke: bool = False

    @model_validator(mode="after")
    def _a_file_needs_path_and_target(self) -> DataConfig:
        check_fractions(self.val_fraction, self.test_fraction)
        if self.dataset != "breast_cancer":
            self.check_table(self.dataset)
        return self


def load_data(data: dict[str, Any]) -> Dataset:
    cfg = DataConfig.model_validate(data)
    if cfg.dataset == "breast_cancer":
        from sklearn.datasets import load_breast_cancer

        bunch = load_breast_cancer()
        frame = pd.DataFrame(bunch.data, columns=[str(n) for n in bunch.feature_names])
        selection = Selection(numeric=list(frame.columns), categorical=[])
        labels = np.asarray(bunch.target, dtype=np.int64)
        classes = [str(c) for c in bunch.target_names]
    else:
        frame, selection = cfg.read()
        labels, classes = target_labels(frame[cfg.target], cfg.target, cfg.path)
    kept = np.arange(len(frame))
    if cfg.smoke:
        kept, labels = smoke_subset(kept, labels, SMOKE_ROWS, cfg.seed)
    frame = frame.iloc[kept].reset_index(drop=True)
    rows = split_indices(labels, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    info = {"dataset": cfg.dataset, "classes": classes, "num_classes": len(classes)}
    return table_dataset(frame, selection, labels, rows, info, cfg.max_onehot)


def build_model(config: dict[str, Any], info: dict[str, Any]) -> nn.Module:
    return nn.Sequential(*feedforward(config, info, int(info["num_classes"])))


def serving_model(model: nn.Module, info: dict[str, Any]) -> TablePredictor:
    """Raw rows in, one probability column per class (named by the class) out."""
    return TablePredictor(model, info["table"], list(info["classes"]))


TASK = Task(
    load_data=load_data,
    build_model=build_model,
    loss_fn=cross_entropy,
    evaluate=evaluate_classifier,
    serving_model=serving_model,
    input_example=raw_example,
)


def train(config: dict[str, Any], data: Dataset | None = None) -> None:
    """Ray Tune trainable: one report and checkpoint per epoch."""
    run_trial(TASK, config, data)
