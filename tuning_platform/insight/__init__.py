"""What the search found, on the job's parent run: parameter importances as metrics
(`importance.NAME`, columns of the MLflow runs table) and pictures under `search/`.

Built from the recorded trials (`search/study.py`), so it is the same for a fresh, resumed, extended or
warm-started job, and written at every end of a job, a stopped one included.

Importances are Optuna's fANOVA (`FanovaImportanceEvaluator`, seed 0: a random forest fitted to
the trials, then the variance each parameter explains) over every trial that reported the
metric, each scored by its best value, as the job ranks trials. Early-stopped trials count with
the value they reached: that is what ASHA judged them on. The forest has TREES trees, half of
Optuna's default (see below); a job of more than IMPORTANCE_TRIALS trials is estimated from a
seeded sample of that many. A single searched parameter has importance 1, as the forest would
find, without fitting one.

A conditional parameter (`when:`) has no share among the others: fANOVA fits the parameters
every trial holds. Its importance within its branch, over the trials where it is active
(`importance.branch_importances`), is logged apart as `importance_in_branch.NAME`, a share of
that branch's variance, never summed with the others; the summary and the importances picture
show it with its `when`.

A job of several objectives has importances per objective, `importance.OBJECTIVE.NAME`, each
over the trials' last values of that objective (the point a trial has on the front; a
parameter name has no dot, so the name reads back unambiguously), and
`importance_in_branch.OBJECTIVE.NAME`; one picture groups them. Its
other pictures follow the primary objective (the spec's `metric`). A job with a front (several
objectives, or constraints) also gets it written: ranks and feasibility on the trial runs, the
table, picture and hypervolume on the parent run (`insight/front.py`).

The pictures are plain matplotlib (installed with MLflow), PNGs of a fixed size that the MLflow
UI's artifact viewer shows. An interactive HTML version would need plotly; not added.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tuning_platform.insight.front import FRONT_FOLDER, write_front
from tuning_platform.insight.importance import EVALUATOR, branch_importances, importances
from tuning_platform.insight.plots import (
    DPI,
    FIGSIZE,
    PICTURES,
    asha_rungs,
    plot_best_so_far,
    plot_importances,
    plot_importances_per_objective,
    plot_learning_curves,
    plot_parallel_coordinates,
    reference_text,
    warm_up,
    when_text,
)
from tuning_platform.records import UNSTABLE
from tuning_platform.search.front import Front, job_front, judged
from tuning_platform.search.study import RecordedTrial, best_value, final_value
from tuning_platform.spec import Spec

if TYPE_CHECKING:
    from tuning_platform.tracking.parent import JobTracker

__all__ = [
    "DPI",
    "FIGSIZE",
    "FOLDER",
    "FRONT_FOLDER",
    "BRANCH_IMPORTANCE_PREFIX",
    "IMPORTANCE_PREFIX",
    "PICTURES",
    "Insight",
    "asha_rungs",
    "branch_labels",
    "importance_metrics",
    "read_branch_importances",
    "read_importances",
    "reference_text",
    "warm_up",
    "write_insight",
]

logger = logging.getLogger(__name__)

FOLDER = "search"
IMPORTANCE_PREFIX = "importance."
# A conditional parameter's importance within its branch: a share of another variance than the
# others', so a name of its own (MLflow's names allow no `=` or `|` to spell the branch in).
BRANCH_IMPORTANCE_PREFIX = "importance_in_branch."


@dataclass
class Insight:
    importances: dict[str, float] = field(default_factory=dict)  # most important first (the primary objective's)
    # Several objectives: each one's importances, in the spec's order of objectives.
    per_objective: dict[str, dict[str, float]] = field(default_factory=dict)
    pictures: list[str] = field(default_factory=list)  # artifact paths on the parent run
    note: str = ""  # why something is missing
    # The Pareto front (several objectives, or constraints) and its artifacts on the parent run.
    front: Front | None = None
    front_files: list[str] = field(default_factory=list)
    # Conditional parameters: each one's importance within its branch (the primary objective's),
    # and for several objectives each one's; with each parameter's branch as a person reads it.
    within_branch: dict[str, float] = field(default_factory=dict)
    within_branch_per_objective: dict[str, dict[str, float]] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)  # `momentum` -> `optimizer=sgd`

    def summary(self, metric: str) -> str:
        if len(self.per_objective) > 1 and any(self.per_objective.values()):
            shown = "; ".join(
                f"for {objective}: {_top(found)}" if found else f"for {objective}: none"
                for objective, found in self.per_objective.items()
            )
            return f"Most important ({EVALUATOR}) {shown}{self._within(metric)}"
        if not self.importances:
            return f"Search insight: {self.note}" if self.note else ""
        return f"Most important for {metric} ({EVALUATOR}): {_top(self.importances)}{self._within(metric)}"

    def _within(self, metric: str) -> str:
        if not self.within_branch:
            return ""
        shown = ", ".join(
            f"{name} {value:.2f} (when {self.branches[name]})" if self.branches.get(name) else f"{name} {value:.2f}"
            for name, value in self.within_branch.items()
        )
        return f"; within its branch, for {metric}: {shown}"


def _top(found: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.2f}" for name, value in list(found.items())[:2])


def importance_metrics(insight: Insight) -> dict[str, float]:
    """The importances as parent-run metrics: `importance.NAME` for one objective,
    `importance.OBJECTIVE.NAME` for several; a conditional parameter's within its branch
    `importance_in_branch.NAME` (`importance_in_branch.OBJECTIVE.NAME`)."""
    if insight.per_objective:
        return {
            f"{IMPORTANCE_PREFIX}{objective}.{name}": value
            for objective, found in insight.per_objective.items()
            for name, value in found.items()
        } | {
            f"{BRANCH_IMPORTANCE_PREFIX}{objective}.{name}": value
            for objective, within in insight.within_branch_per_objective.items()
            for name, value in within.items()
        }
    return {IMPORTANCE_PREFIX + name: value for name, value in insight.importances.items()} | {
        BRANCH_IMPORTANCE_PREFIX + name: value for name, value in insight.within_branch.items()
    }


def read_importances(metrics: dict[str, float], spec: Spec) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """`importance_metrics` read back from a parent run's metrics: the primary objective's
    importances and, for several objectives, each one's; most important first."""
    return _read(IMPORTANCE_PREFIX, metrics, spec)


def read_branch_importances(
    metrics: dict[str, float], spec: Spec
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """The conditional parameters' importances within their branches, read back as
    `read_importances` reads the others."""
    return _read(BRANCH_IMPORTANCE_PREFIX, metrics, spec)


def _read(prefix: str, metrics: dict[str, float], spec: Spec) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    def ordered(found: dict[str, float]) -> dict[str, float]:
        return dict(sorted(found.items(), key=lambda item: -item[1]))

    found = {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)}
    if not spec.multi_objective:
        return ordered(found), {}
    per_objective: dict[str, dict[str, float]] = {o.metric: {} for o in spec.objective_list}
    for key, value in found.items():
        objective, _, name = key.rpartition(".")  # a parameter's name has no dot; a metric's may
        if objective in per_objective:
            per_objective[objective][name] = value
    per_objective = {objective: ordered(values) for objective, values in per_objective.items()}
    return per_objective.get(spec.metric, {}), per_objective


def write_insight(
    spec: Spec, trials: list[RecordedTrial], tracker: JobTracker, started_ms: int, front: Front | None = None
) -> Insight:
    """Importances and pictures of the job's trials, logged on its parent run; with a front to
    judge (`search.front.judged`), the front too (`front`, when the caller has computed it
    already, else computed here). A front that cannot be written is a warning, never the
    loss of the rest."""
    scored = [(t, v) for t in trials if (v := best_value(t, spec.mode)) is not None]
    insight = Insight()
    if judged(spec):
        insight.front = front if front is not None else job_front(spec, trials)
    if spec.multi_objective:
        _importances_per_objective(spec, trials, insight)
    elif len(scored) >= 2 and spec.search.space:
        insight.importances = importances(spec, scored)
        insight.within_branch = branch_importances(spec, scored)
    else:
        insight.note = f"importances need 2 or more trials that reported {spec.metric}"
    insight.branches = branch_labels(spec)
    pictures = {
        "best_so_far.png": lambda: plot_best_so_far(spec, scored, started_ms),
        "parallel_coordinates.png": lambda: plot_parallel_coordinates(spec, scored),
        "importances.png": lambda: (
            plot_importances_per_objective(spec, insight.per_objective)
            if spec.multi_objective
            else plot_importances(spec, insight.importances, insight.within_branch, insight.branches)
        ),
        "learning_curves.png": lambda: plot_learning_curves(spec, trials),
    }
    # Written while the pictures are drawn, each while the next is: over HTTP a write is mostly a wait.
    with ThreadPoolExecutor(1, thread_name_prefix="insight-upload") as uploads:
        sent = [uploads.submit(tracker.log_to_parent, metrics=importance_metrics(insight))]
        for name, draw in pictures.items() if scored else ():
            png = draw()
            if png is not None:
                path = f"{FOLDER}/{name}"
                sent.append(uploads.submit(tracker.log_bytes, png, path))
                insight.pictures.append(path)
        for upload in sent:
            upload.result()  # a write's error is the job's, as when it was done here
    if insight.front is not None:
        try:
            insight.front_files = write_front(insight.front, spec, tracker)
        except Exception as err:  # noqa: BLE001 - the front is still the job's (its result), only not on MLflow
            logger.warning("warning: the Pareto front was not written to MLflow: %s: %s", type(err).__name__, err)
    return insight


def _importances_per_objective(spec: Spec, trials: list[RecordedTrial], insight: Insight) -> None:
    """fANOVA for each objective over the trials' last values of it (a failed or diverged
    trial's none); the primary objective's are also `importances`."""
    for objective in spec.objective_list:
        scored = [
            (t, v)
            for t in trials
            if t.status not in UNSTABLE and (v := final_value(t, objective.metric, spec)) is not None
        ]
        enough = len(scored) >= 2 and spec.search.space
        insight.per_objective[objective.metric] = importances(spec, scored, objective) if enough else {}
        within = branch_importances(spec, scored, objective) if enough else {}
        if within:
            insight.within_branch_per_objective[objective.metric] = within
    insight.importances = insight.per_objective.get(spec.metric, {})
    insight.within_branch = insight.within_branch_per_objective.get(spec.metric, {})
    if not any(insight.per_objective.values()):
        metrics = ", ".join(o.metric for o in spec.objective_list)
        insight.note = f"importances need 2 or more trials that reported each of {metrics}"


def branch_labels(spec: Spec) -> dict[str, str]:
    """Each conditional parameter's `when` as a person reads it (`plots.when_text`)."""
    return {name: when for name, domain in spec.search.space.items() if (when := when_text(domain))}
