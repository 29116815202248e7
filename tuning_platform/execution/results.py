"""Reading a finished Tune run: one row per trial (status, epochs, best value, params), the best
trial, and the checkpoint of it that becomes the registered model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuning_platform.spec import Spec

if TYPE_CHECKING:
    import pandas as pd
    from ray.train import Checkpoint, Result
    from ray.tune import ResultGrid


@dataclass
class TrialRow:
    trial_id: str
    status: str  # completed | early_stopped | diverged | failed | interrupted
    epochs: int
    value: float | None  # best finite value of the spec's metric over the trial's epochs
    params: dict[str, Any]
    error: str | None = None  # a failed trial's last error line


def read_trials(spec: Spec, results: ResultGrid) -> list[TrialRow]:
    # Imported here: platform.tracking loads MLflow, which input checks never need.
    from tuning_platform.guard import missing_metric_error
    from tuning_platform.tracking import finished_status, last_error_text

    rows = []
    for result in results:
        last = result.metrics or {}
        history = result.metrics_dataframe
        trial_id = str(last.get("trial_id") or Path(result.path).name.rsplit("_", 1)[-1])
        epochs = int(last.get("epoch", 0) or 0)
        value = best_of(history[spec.metric], spec.mode) if history is not None and spec.metric in history else None
        error = None
        if result.error is not None:
            status, error = "failed", last_error_text(str(result.error))
        else:
            status = finished_status(last, spec.metric, spec.max_t)
            if status == "failed":
                error = missing_metric_error(spec.metric, last)
        params = {k: v for k, v in (result.config or {}).items() if k in spec.search.space}
        rows.append(TrialRow(trial_id, status, epochs, value, params, error))
    return rows


def best_of(column: pd.Series, mode: str) -> float | None:
    """The best finite value of a metric column; none when it has none. One numpy pass: per-row
    pandas calls cost seconds over the 10,000 trials of a large job."""
    import numpy as np

    values = column.to_numpy(dtype=float, na_value=np.nan)
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    return float(values.max() if mode == "max" else values.min())


# Trials whose configuration is unstable: never the best, never learned from, never averaged.
UNSTABLE = ("failed", "diverged")


def stable(rows: list[TrialRow]) -> list[TrialRow]:
    """The rows with a value whose trial neither failed nor diverged, in their order."""
    return [row for row in rows if row.value is not None and row.status not in UNSTABLE]


def ranked(rows: list[TrialRow], mode: str) -> list[TrialRow]:
    """Best value first (ties keep their order), rows without a value last."""
    return sorted(rows, key=lambda r: (r.value is None, -(r.value or 0) if mode == "max" else (r.value or 0)))


def best_trial(spec: Spec, rows: list[TrialRow]) -> TrialRow | None:
    """The trial with the best value; a trial that failed or diverged never is: its
    configuration is unstable."""
    candidates = ranked(stable(rows), spec.mode)
    return candidates[0] if candidates else None


def best_checkpoint(spec: Spec, results: ResultGrid, trial_id: str) -> Checkpoint | None:
    """The best checkpoint the trial still keeps, by the spec's metric."""
    result = next(r for r in results if str((r.metrics or {}).get("trial_id")) == trial_id)
    if result.best_checkpoints:
        return result.get_best_checkpoint(spec.metric, spec.mode) or result.checkpoint
    return _train_checkpoint(result, spec.metric, spec.mode)  # a data-parallel trial


def _train_checkpoint(result: Result, metric: str, mode: str) -> Checkpoint | None:
    """The best checkpoint a data-parallel trial's Ray Train run still keeps.

    Train keeps those checkpoints itself; Tune only sees their paths in the reported metrics
    (`checkpoint_path`, from TuneReportCallback), best epoch first.
    """
    from ray.train import Checkpoint

    history = result.metrics_dataframe
    if history is None or "checkpoint_path" not in history or metric not in history:
        return None
    rows = history.dropna(subset=["checkpoint_path", metric]).sort_values(metric, ascending=(mode == "min"))
    for path in rows["checkpoint_path"]:
        if "://" in str(path) or Path(str(path)).is_dir():
            return Checkpoint(str(path))
    return None
