"""The Pareto front of a job on MLflow (`search/front.py` computes it): each counted trial's run
tagged with its rank and whether it meets the constraints; on the parent run the front as a
table (`pareto/front.csv`), a picture (`pareto/front.png`), the hypervolume as a metric whose
history is how it grew, and the reference point it is measured against as a tag.

A single objective with constraints gets the tags and the table only: no picture (nothing to
draw pairwise) and no hypervolume (on one objective it is only the best feasible value's
distance to the reference, which the runs table already shows as the value).

Everything here is written again at every end of a job (a resume, an extension): the tags and
the table are overwritten; each hypervolume entry is stamped with the end time of the trial that
completed its step, so an unchanged step is the same record and MLflow keeps it once. An
extension that widens the objectives' range moves the reference point, and the history then
holds the earlier curve beside the new one; the tag states the point of the latest.
"""

from __future__ import annotations

import csv
import io
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from mlflow.entities import Metric, RunTag
from mlflow.utils.validation import MAX_METRICS_PER_BATCH

from tuning_platform._compat.mlflow import sql_store
from tuning_platform.insight.plots import plot_front, reference_text
from tuning_platform.records import (
    FEASIBLE_TAG,
    HYPERVOLUME_METRIC,
    HYPERVOLUME_REFERENCE_TAG,
    PARETO_RANK_TAG,
    VIOLATED_TAG,
)
from tuning_platform.search.front import Front, FrontPoint
from tuning_platform.search.study import final_value
from tuning_platform.spec import Spec
from tuning_platform.tracking.writer import PARALLEL_WRITES

if TYPE_CHECKING:
    from tuning_platform.tracking.parent import JobTracker

# On the parent run; the tags and the metric are named in records.py.
FRONT_FOLDER = "pareto"
FRONT_TABLE = f"{FRONT_FOLDER}/front.csv"
FRONT_PICTURE = f"{FRONT_FOLDER}/front.png"


def write_front(front: Front, spec: Spec, tracker: JobTracker) -> list[str]:
    """The front on the job's runs (see the module's docstring); the artifact paths written on
    the parent run. Written for a job `search.front.judged` says has a front."""
    client = tracker.client
    if not front.points:
        return []
    several = len(front.objectives) > 1
    # One request per trial run (MLflow has no batch across runs): over a tracking server
    # several at once, as the run writer sends trials' writes (measured here against a local
    # server of one worker, 300 runs: 7.6-10 s one at a time, 4.4 s four at a time, 5.1 s eight);
    # one at a time on a SQL store, which takes one writer (SQLite): 7-9 ms a run here.
    writers = 1 if sql_store(client) is not None else PARALLEL_WRITES
    with ThreadPoolExecutor(writers, thread_name_prefix="front-tags") as pool:
        # The trials' tags go out while the table and the picture are made and written.
        sent = [pool.submit(client.log_batch, p.trial.run_id, tags=trial_tags(p)) for p in front.points]
        if several:
            sent += [
                pool.submit(client.log_batch, tracker.parent_run_id, metrics=chunk, tags=tags)
                for chunk, tags in _hypervolume_batches(front)
            ]
        written = []
        tracker.log_bytes(front_table(front, spec).encode(), FRONT_TABLE)
        written.append(FRONT_TABLE)
        picture = plot_front(spec, front) if several else None
        if picture is not None:
            tracker.log_bytes(picture, FRONT_PICTURE)
            written.append(FRONT_PICTURE)
        for write in sent:
            write.result()  # a failed write is the caller's to report
    return written


def trial_tags(point: FrontPoint) -> list[RunTag]:
    """A trial's rank, whether it is feasible and, when it is not, what it breaks."""
    tags = [RunTag(PARETO_RANK_TAG, str(point.rank)), RunTag(FEASIBLE_TAG, _yes_no(point.feasible))]
    if not point.feasible:
        tags.append(RunTag(VIOLATED_TAG, violated_text(point)))
    return tags


def violated_text(point: FrontPoint) -> str:
    """`latency_ms <= 5; params <= 200000`: the constraints the trial breaks, in the spec's order."""
    return "; ".join(constraint.text for constraint in point.violated)


def table_order(front: Front) -> list[FrontPoint]:
    """The front's members first (best on the first objective first), then the other trials by
    rank, each rank in the order the trials started."""
    members = front.members
    chosen = {id(p) for p in members}
    return members + sorted((p for p in front.points if id(p) not in chosen), key=lambda p: p.rank)


def front_table(front: Front, spec: Spec) -> str:
    """`pareto/front.csv`: one row per counted trial (`table_order`), with each objective's and
    each constraint metric's last value."""
    objectives = [o.metric for o in front.objectives]
    constrained = [m for m in dict.fromkeys(c.metric for c in front.constraints) if m not in objectives]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["trial_id", "run_id", *objectives, *constrained, "feasible", "violated", "pareto_rank"])
    for p in table_order(front):
        limits = [final_value(p.trial, m, spec) for m in constrained]
        writer.writerow(
            [
                p.trial_id,
                p.trial.run_id,
                *(repr(v) for v in p.values),
                *("" if v is None else repr(v) for v in limits),
                _yes_no(p.feasible),
                violated_text(p),
                p.rank,
            ]
        )
    return out.getvalue()


def _hypervolume_batches(front: Front) -> list[tuple[list[Metric], list[RunTag]]]:
    """`hypervolume` at each step of its growth, stamped with the end time of the trial that
    completed the step, in batches MLflow takes; the reference point's tag with the first."""
    ends = sorted(p.trial.end_ms or 0 for p in front.points)  # the order `job_front` counted them in
    now = int(time.time() * 1000)
    metrics = [Metric(HYPERVOLUME_METRIC, value, ends[count - 1] or now, count) for count, value in front.growth]
    chunks = [metrics[i : i + MAX_METRICS_PER_BATCH] for i in range(0, len(metrics), MAX_METRICS_PER_BATCH)]
    tags = [RunTag(HYPERVOLUME_REFERENCE_TAG, reference_text(front))]
    return [(chunk, tags if i == 0 else []) for i, chunk in enumerate(chunks or [[]])]


def _yes_no(feasible: bool) -> str:
    return "true" if feasible else "false"
