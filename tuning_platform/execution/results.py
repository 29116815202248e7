"""Reading a finished Tune run: one row per trial (status, epochs, best value, params), the best
trial, and the checkpoint of it that becomes the registered model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from tuning_platform.execution.guard import missing_metric_error
from tuning_platform.outcome import TrialRow
from tuning_platform.ranking import best, score
from tuning_platform.records import TrialStatus, finished_status, last_error_text, missing_metric
from tuning_platform.spec import Spec

if TYPE_CHECKING:
    import pandas as pd
    from ray.train import Checkpoint, Result
    from ray.tune import ResultGrid


def read_trials(spec: Spec, results: ResultGrid) -> list[TrialRow]:
    rows = []
    for result in each_result(results):
        last = result.metrics or {}
        history = result.metrics_dataframe
        trial_id = str(last.get("trial_id") or Path(result.path).name.rsplit("_", 1)[-1])
        epochs = int(last.get("epoch", 0) or 0)
        value = best_of(history[spec.metric], spec.mode) if history is not None and spec.metric in history else None
        error = None
        if result.error is not None:
            status, error = TrialStatus.FAILED, last_error_text(str(result.error))
        else:
            status = finished_status(last, spec.required_metrics, spec.max_t)
            if status == TrialStatus.FAILED:
                error = missing_metric_error(missing_metric(last, spec.required_metrics) or spec.metric, last)
        params = {k: v for k, v in (result.config or {}).items() if k in spec.search.space}
        finals = {m: float(last[m]) for m in spec.required_metrics if _number(last.get(m))}
        rows.append(TrialRow(trial_id, status, epochs, value, params, error, finals))
    return rows


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def each_result(results: ResultGrid) -> Iterator[Result]:
    """The results of a Tune run in order (`ResultGrid` is indexed, and declares no iterator)."""
    return (results[index] for index in range(len(results)))


def result_of(results: ResultGrid, trial_id: str) -> Result | None:
    """The Tune result of one trial, by the id it reported; None when no result has it."""
    return next((r for r in each_result(results) if str((r.metrics or {}).get("trial_id")) == trial_id), None)


def best_of(column: pd.Series, mode: str) -> float | None:
    """The best finite value of a metric column; none when it has none. One numpy pass: per-row
    pandas calls cost seconds over the 10,000 trials of a large job."""
    import numpy as np

    values = column.to_numpy(dtype=float, na_value=np.nan)
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    return float(best((values.min(), values.max()), mode))


def best_checkpoint(spec: Spec, results: ResultGrid, trial_id: str) -> Checkpoint | None:
    """The best checkpoint the trial still keeps, by the spec's metric; with several objectives
    its latest, which holds the trial's point on the front (its last result)."""
    result = result_of(results, trial_id)
    if result is None:
        raise LookupError(f"no result of trial {trial_id} in the Tune run")
    if spec.multi_objective and result.checkpoint is not None:
        return result.checkpoint
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
    rows = history.dropna(subset=["checkpoint_path", metric])
    rows = rows.sort_values(metric, ascending=False, key=lambda column: score(column, mode))
    for path in rows["checkpoint_path"]:
        if "://" in str(path) or Path(str(path)).is_dir():
            return Checkpoint(str(path))
    return None
