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

The pictures are plain matplotlib (installed with MLflow), PNGs of a fixed size that the MLflow
UI's artifact viewer shows. An interactive HTML version would need plotly; not added.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tuning_platform.insight.importance import EVALUATOR, importances
from tuning_platform.insight.plots import (
    DPI,
    FIGSIZE,
    PICTURES,
    asha_rungs,
    plot_best_so_far,
    plot_importances,
    plot_learning_curves,
    plot_parallel_coordinates,
    warm_up,
)
from tuning_platform.search.study import RecordedTrial, best_value
from tuning_platform.spec import Spec

if TYPE_CHECKING:
    from tuning_platform.tracking.parent import JobTracker

__all__ = [
    "DPI",
    "FIGSIZE",
    "FOLDER",
    "IMPORTANCE_PREFIX",
    "PICTURES",
    "Insight",
    "asha_rungs",
    "warm_up",
    "write_insight",
]

FOLDER = "search"
IMPORTANCE_PREFIX = "importance."


@dataclass
class Insight:
    importances: dict[str, float] = field(default_factory=dict)  # most important first
    pictures: list[str] = field(default_factory=list)  # artifact paths on the parent run
    note: str = ""  # why something is missing

    def summary(self, metric: str) -> str:
        if not self.importances:
            return f"Search insight: {self.note}" if self.note else ""
        top = list(self.importances.items())[:2]
        shown = ", ".join(f"{name} {value:.2f}" for name, value in top)
        return f"Most important for {metric} ({EVALUATOR}): {shown}"


def write_insight(spec: Spec, trials: list[RecordedTrial], tracker: JobTracker, started_ms: int) -> Insight:
    """Importances and pictures of the job's trials, logged on its parent run."""
    scored = [(t, v) for t in trials if (v := best_value(t, spec.mode)) is not None]
    insight = Insight()
    if len(scored) >= 2 and spec.search.space:
        insight.importances = importances(spec, scored)
    else:
        insight.note = f"importances need 2 or more trials that reported {spec.metric}"
    pictures = {
        "best_so_far.png": lambda: plot_best_so_far(spec, scored, started_ms),
        "parallel_coordinates.png": lambda: plot_parallel_coordinates(spec, scored),
        "importances.png": lambda: plot_importances(spec, insight.importances),
        "learning_curves.png": lambda: plot_learning_curves(spec, trials),
    }
    # Written while the pictures are drawn, each while the next is: over HTTP a write is mostly a wait.
    with ThreadPoolExecutor(1, thread_name_prefix="insight-upload") as uploads:
        importances_metrics = {IMPORTANCE_PREFIX + k: v for k, v in insight.importances.items()}
        sent = [uploads.submit(tracker.log_to_parent, metrics=importances_metrics)]
        for name, draw in pictures.items() if scored else ():
            png = draw()
            if png is not None:
                path = f"{FOLDER}/{name}"
                sent.append(uploads.submit(tracker.log_bytes, png, path))
                insight.pictures.append(path)
        for upload in sent:
            upload.result()  # a write's error is the job's, as when it was done here
    return insight
