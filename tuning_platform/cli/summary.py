"""The summary a job's command prints at its end: counts, the top trials, the Pareto front
(several objectives, or constraints), the best one, the model, the insight and the links to the
MLflow UI. `tuning-platform show JOB` prints it again from the job's records (`cli/show.py`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tuning_platform.outcome import TrialRow, TuneResult, ranked
from tuning_platform.records import ENDED, TrialStatus, test_metric_name
from tuning_platform.request import JobRequest
from tuning_platform.spec import Spec
from tuning_platform.tracking.links import ui_links

if TYPE_CHECKING:
    from tuning_platform.search.front import Front

# Members of a Pareto front printed at most; the rest are in the parent run's table.
FRONT_ROWS = 10


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
    pbt = spec.scheduler.type == "pbt"
    if pbt:  # a population: nothing is stopped early, the weak copy the strong
        line = (
            f"{len(rows)} trials of population-based training in {outcome.wall_s:.0f}s: "
            f"{count[TrialStatus.COMPLETED]} completed, {count[TrialStatus.DIVERGED]} diverged, "
            f"{count[TrialStatus.FAILED]} failed"
        )
        stopped = count[TrialStatus.EARLY_STOPPED]
        line += f", {stopped} stopped by the time budget" if stopped else ""
    interrupted = count[TrialStatus.INTERRUPTED]
    lines.append(line + (f", {interrupted} interrupted" if interrupted else ""))
    if rows:
        params = list(spec.search.space)
        header = ["trial", "status", "epochs", spec.metric, *params]
        table = (
            [header]
            + [
                [
                    r.trial_id,
                    str(r.status),
                    str(r.epochs),
                    "-" if r.value is None else f"{r.value:.4f}",
                    *["-" if p not in r.params else _short(r.params[p]) for p in params],  # "-": inactive (when:)
                ]
                for r in rows[:top]
            ]
        )
        lines.append(f"Top {min(top, len(rows))} trials by {spec.metric} ({spec.mode}):")
        lines.extend(_aligned(table))
    front = outcome.front or (outcome.insight.front if outcome.insight is not None else None)
    if front is not None:
        lines.extend(_front_lines(front, outcome))
    if outcome.best is not None:
        best = outcome.best
        line = f"Best trial {best.trial_id}: {spec.metric}={best.value:.4f} (validation)"
        point = next((p for p in front.points if p.trial_id == best.trial_id), None) if front else None
        if spec.multi_objective and front is not None and point is not None:
            rule = spec.selection_rule
            how = "knee" if rule == "knee" else f"prefer {spec.metric}"
            values = ", ".join(f"{o.metric}={v:.4g}" for o, v in zip(front.objectives, point.values, strict=True))
            line = f"Chosen from the feasible front ({how}): trial {best.trial_id}: {values} (validation)"
        test_name = test_metric_name(spec.metric)
        if test_name in outcome.test_metrics:
            line += f", {test_name}={outcome.test_metrics[test_name]:.4f} (held-out test split, scored once)"
        lines.append(line)
        label = "config at its end" if pbt else "config"
        lines.append(f"  {label}: " + ", ".join(f"{k}={_short(v)}" for k, v in best.params.items()))
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
        if outcome.insight.front_files:
            folder = outcome.insight.front_files[0].rsplit("/", 1)[0]
            shown = "table and picture" if any(f.endswith(".png") for f in outcome.insight.front_files) else "table"
            lines.append(f"The Pareto front's {shown}: artifacts {folder}/ of the parent run")
    lines.extend(outcome.notes)
    command, runs_table, parent_run = ui_links(tracking_uri, outcome.experiment_id, outcome.parent_run_id)
    lines.append(f"Browse: {command}, then open" if command else "Browse:")
    lines.append(f"  runs table: {runs_table}")
    lines.append(f"  this job:   {parent_run}")
    return "\n".join(lines)


def _front_lines(front: Front, outcome: TuneResult) -> list[str]:
    """The front's members (several objectives) with the hypervolume and its reference point,
    and how many trials miss the constraints."""
    lines = []
    counted = len(front.points)
    if len(front.objectives) > 1:
        by = " and ".join(f"{o.metric} ({o.mode})" for o in front.objectives)
        members = front.members
        if members:
            # Imported here: the insight imports MLflow (about a second), which the command's
            # checks before a job never need; a job that has a front has loaded it already.
            from tuning_platform.insight.front import FRONT_TABLE
            from tuning_platform.insight.plots import reference_text

            lines.append(f"Pareto front by {by}: {len(members)} of {counted} trials")
            statuses = {row.trial_id: str(row.status) for row in outcome.rows}
            header = ["trial", "status", *(o.metric for o in front.objectives)]
            table = [header] + [
                [p.trial_id, statuses.get(p.trial_id, str(p.trial.status)), *(f"{v:.6g}" for v in p.values)]
                for p in members[:FRONT_ROWS]
            ]
            lines.extend(_aligned(table))
            if len(members) > FRONT_ROWS:
                lines.append(f"  ... and {len(members) - FRONT_ROWS} more ({FRONT_TABLE} on the parent run)")
            lines.append(f"Hypervolume {front.hypervolume:.6g} against the reference point {reference_text(front)}")
        elif front.points:
            lines.append(f"Pareto front by {by}: empty, no trial meets the constraints")
        else:
            lines.append(f"Pareto front by {by}: empty, no trial completed or was stopped with a value of each")
    if front.constraints:
        missed = sum(not p.feasible for p in front.points)
        rules = "; ".join(c.text for c in front.constraints)
        lines.append(f"Constraints ({rules}): {missed} of {counted} trials miss them")
    return lines


def _aligned(table: list[list[str]]) -> list[str]:
    """Rows of cells as indented lines, each column as wide as its widest cell."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in table]


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
