"""The summary a job's command prints at its end: counts, the top trials, the best one, the
model, the insight and the links to the MLflow UI. `tuning-platform show JOB` prints it again
from the job's records (`cli/show.py`)."""

from __future__ import annotations

from typing import Any

from tuning_platform.outcome import TrialRow, TuneResult, ranked
from tuning_platform.records import ENDED, TrialStatus, test_metric_name
from tuning_platform.request import JobRequest
from tuning_platform.spec import Spec
from tuning_platform.tracking.links import ui_links


def format_summary(outcome: TuneResult, request: JobRequest, top: int = 5) -> str:
    return summary_of(outcome, request.spec, request.tracking_uri, top)


def summary_of(outcome: TuneResult, spec: Spec, tracking_uri: str, top: int = 5) -> str:
    """The summary of a job of `spec` whose store is `tracking_uri` (its links point there)."""
    lines = [""]
    rows = ranked(outcome.rows, spec.mode)
    count = {status: sum(r.status == status for r in rows) for status in ENDED}
    line = (
        f"{len(rows)} trials in {outcome.wall_s:.0f}s: {count[TrialStatus.COMPLETED]} completed, "
        f"{count[TrialStatus.EARLY_STOPPED]} stopped early by {spec.scheduler.type.upper()}, "
        f"{count[TrialStatus.DIVERGED]} diverged, {count[TrialStatus.FAILED]} failed"
    )
    interrupted = count[TrialStatus.INTERRUPTED]
    lines.append(line + (f", {interrupted} interrupted" if interrupted else ""))
    if rows:
        params = list(spec.search.space)
        header = ["trial", "status", "epochs", spec.metric, *params]
        table = [header] + [
            [
                r.trial_id,
                str(r.status),
                str(r.epochs),
                "-" if r.value is None else f"{r.value:.4f}",
                *[_short(r.params.get(p)) for p in params],
            ]
            for r in rows[:top]
        ]
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        lines.append(f"Top {min(top, len(rows))} trials by {spec.metric} ({spec.mode}):")
        for row in table:
            lines.append("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    if outcome.best is not None:
        best = outcome.best
        line = f"Best trial {best.trial_id}: {spec.metric}={best.value:.4f} (validation)"
        test_name = test_metric_name(spec.metric)
        if test_name in outcome.test_metrics:
            line += f", {test_name}={outcome.test_metrics[test_name]:.4f} (held-out test split, scored once)"
        lines.append(line)
        lines.append("  config: " + ", ".join(f"{k}={_short(v)}" for k, v in best.params.items()))
    if outcome.selection is not None:
        lines.extend(outcome.selection.lines(spec.metric))
    if outcome.baseline is not None:
        lines.append(_baseline_line(outcome.baseline, outcome.best, spec.metric, spec.mode))
    lines.append(
        f"MLflow: experiment '{outcome.experiment_name}' (id {outcome.experiment_id}), "
        f"parent run {outcome.parent_run_id}"
    )
    if outcome.model_version:
        lines.append(
            f"Registered model: {outcome.model_name} version {outcome.model_version}; "
            f"champion is version {outcome.champion_version} (models:/{outcome.model_name}@champion)"
        )
    if outcome.insight is not None:
        summary = outcome.insight.summary(spec.metric)
        if summary:
            lines.append(summary)
        if outcome.insight.pictures:
            folder = outcome.insight.pictures[0].rsplit("/", 1)[0]
            lines.append(f"Pictures of the search: artifacts {folder}/ of the parent run")
    lines.extend(outcome.notes)
    command, runs_table, parent_run = ui_links(tracking_uri, outcome.experiment_id, outcome.parent_run_id)
    lines.append(f"Browse: {command}, then open" if command else "Browse:")
    lines.append(f"  runs table: {runs_table}")
    lines.append(f"  this job:   {parent_run}")
    return "\n".join(lines)


def _baseline_line(baseline: tuple[str, dict[str, float]], best: TrialRow | None, metric: str, mode: str) -> str:
    name, metrics = baseline
    if metric not in metrics:
        return f"Baseline ({name}): " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
    line = f"Baseline ({name}): {metric}={metrics[metric]:.4f}"
    if best is not None and best.value is not None:
        line += f"; best trial {best.value:.4f}"
        if mode == "max" and metrics[metric] > 0:  # "Nx the baseline" reads right only for a score
            line += f" ({best.value / metrics[metric]:.2f}x the baseline)"
    return line


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
