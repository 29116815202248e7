"""What a population-based training job leaves on its parent run: the best trial's schedule, as
the policy file Ray's `PopulationBasedTrainingReplay` replays (`pbt/pbt_policy_TRIAL.txt`), and a
picture of the population's metric over the epochs with each exploit drawn (`pbt/population.png`),
plus the schedule in a line the summary prints.

The schedule comes from the run's folder (`execution/pbt.py` writes it there at each exploit); the
curves from the trial runs' metric histories in MLflow, in the order they were logged: after an
exploit a trial goes on from its donor's epoch, so its curve starts again there.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tuning_platform.execution.pbt import (
    POLICY_FILE,
    all_exploits,
    policy_lines,
    schedule,
    schedule_policy,
    schedule_text,
)
from tuning_platform.insight.plots import DPI, FIGSIZE
from tuning_platform.records import PBT_COPIED_EPOCH_METRIC, PBT_FOLDER, PBT_PICTURE, TRIAL_ID_TAG
from tuning_platform.tracking.queries import child_runs, metric_histories

if TYPE_CHECKING:
    from tuning_platform.search.study import RecordedTrial
    from tuning_platform.spec import Spec
    from tuning_platform.tracking.parent import JobTracker


@dataclass
class Lineage:
    """What was written: the schedule's artifact path (on the parent run), its line, the picture."""

    schedule_path: str = ""
    text: str = ""
    picture: str = ""
    notes: list[str] = field(default_factory=list)


def write_lineage(
    spec: Spec,
    experiment_path: str,
    trials: list[RecordedTrial],
    tracker: JobTracker,
    best_trial: str | None,
    best_config: dict[str, Any] | None,
) -> Lineage:
    """The best trial's schedule and the population's picture, on the parent run."""
    lineage = Lineage()
    names = tuple(spec.scheduler.mutations)
    if best_trial is not None and best_config is not None:
        lines = schedule_policy(policy_lines(experiment_path, best_trial), best_trial, best_config)
        lineage.schedule_path = f"{PBT_FOLDER}/{POLICY_FILE.format(trial_id=best_trial)}"
        text = "".join(json.dumps(line, default=str) + "\n" for line in lines)
        tracker.log_bytes(text.encode(), lineage.schedule_path)
        segments = schedule(lines, names)
        lineage.text = f"PBT schedule of trial {best_trial}: {schedule_text(segments, spec.epochs)}"
    runs = child_runs(tracker.client, tracker.experiment_id, tracker.parent_run_id)
    labels = {run.data.tags.get(TRIAL_ID_TAG, ""): (run.info.run_name or "").split(" ", 1)[0] for run in runs}
    run_ids = [t.run_id for t in trials]
    histories = metric_histories(tracker.client, run_ids, spec.metric)
    copies = metric_histories(tracker.client, run_ids, PBT_COPIED_EPOCH_METRIC)
    curves = {
        t.trial_id: lineage_segments(
            [(m.timestamp, m.step, m.value) for m in histories[t.run_id]], [m.timestamp for m in copies[t.run_id]]
        )
        for t in trials
    }
    exploits = [(str(line[0]), str(line[1]), int(line[2]), int(line[3])) for line in all_exploits(experiment_path)]
    png = plot_population(spec.metric, curves, exploits, labels, best_trial)
    if png is not None:
        tracker.log_bytes(png, PBT_PICTURE)
        lineage.picture = PBT_PICTURE
    return lineage


def lineage_segments(
    points: Sequence[tuple[int, int, float]], copied_at: Sequence[int]
) -> list[list[tuple[int, float]]]:
    """A trial's (epoch, value) in the order logged (`points`: timestamp, epoch, value), cut at
    each time it copied another trial (`copied_at`: the timestamps of its `pbt.copied_epoch`): one
    segment per lineage, the first its own."""
    cuts = sorted(copied_at)
    segments: list[list[tuple[int, float]]] = [[]]
    for timestamp, step, value in sorted(points):
        while cuts and timestamp > cuts[0]:
            cuts.pop(0)
            segments.append([])
        segments[-1].append((step, value))
    return segments


def plot_population(
    metric: str,
    curves: dict[str, list[list[tuple[int, float]]]],
    exploits: list[tuple[str, str, int, int]],
    labels: dict[str, str],
    best_trial: str | None,
) -> bytes | None:
    """Each trial's metric over the epochs (`curves`: its `lineage_segments`), one colour per
    trial; at each exploit an x where the trial left its line and a dashed line from the donor's
    checkpoint to where it went on."""
    if not any(segment for segments in curves.values() for segment in segments):
        return None
    from matplotlib.figure import Figure

    figure = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    axes = figure.subplots()
    colours = {trial: f"C{index % 10}" for index, trial in enumerate(curves)}
    for trial, segments in curves.items():
        for index, segment in enumerate(segments):
            if not segment:
                continue
            axes.plot(
                *zip(*segment, strict=True),
                color=colours[trial],
                linewidth=2.4 if trial == best_trial else 1.2,
                marker=".",
                label=(labels.get(trial) or trial) + (" (best)" if trial == best_trial else "") if not index else None,
            )
    seen: dict[str, int] = {}
    marked = False
    for trial, donor, _epoch, donor_epoch in exploits:
        segments = curves.get(trial, [])
        index = seen.get(trial, 0)
        seen[trial] = index + 1
        if index + 1 >= len(segments) or not segments[index] or not segments[index + 1]:
            continue  # its next epochs were never logged (the job stopped)
        left, resumed = segments[index][-1], segments[index + 1][0]
        donor_points = dict(point for segment in curves.get(donor, []) for point in segment)
        donor_value = donor_points.get(donor_epoch, resumed[1])
        axes.plot(
            [donor_epoch, resumed[0]],
            [donor_value, resumed[1]],
            linestyle="--",
            color=colours[trial],
            linewidth=1,
            label=None if marked else "copied a checkpoint",
        )
        axes.scatter([left[0]], [left[1]], marker="x", color=colours[trial], s=40, zorder=3)
        marked = True
    axes.set_xlabel("epoch")
    axes.set_ylabel(metric)
    axes.set_title(f"The population: {len(exploits)} exploits (x: a trial left its line; dashes: what it copied)")
    axes.legend(fontsize="small", ncols=2)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()
