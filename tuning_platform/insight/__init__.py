"""What the search found, on the job's parent run: parameter importances as metrics
(`importance.NAME`, columns of the MLflow runs table) and pictures under `search/`.

Built from the recorded trials (`study.py`), so it is the same for a fresh, resumed, extended or
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

import io
import logging
import math
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tuning_platform.spec import ChoiceDomain, IntDomain, LogUniformDomain, Spec
from tuning_platform.study import RecordedTrial, best_value

if TYPE_CHECKING:
    from tuning_platform.tracking import JobTracker

logger = logging.getLogger(__name__)

FOLDER = "search"
# Every picture is this size (inches at DPI): 900 x 500 pixels.
FIGSIZE, DPI = (9.0, 5.0), 100
PICTURES = ("best_so_far.png", "parallel_coordinates.png", "importances.png", "learning_curves.png")
IMPORTANCE_PREFIX = "importance."
EVALUATOR = "fANOVA"


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
    scored = [(t, best_value(t, spec.mode)) for t in trials]
    scored = [(t, v) for t, v in scored if v is not None]
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


# Trials fANOVA is fitted on at most: its forest and marginal variances cost minutes on the
# 10,000 trials of a large job; on a sample of 1,000 about 18 s here, of 500 about 6 s, with
# importances within 0.03 of the 1,000-trial ones (2 parameters, a 3,000-trial job).
IMPORTANCE_TRIALS = 500
# Trees of the forest: half of Optuna's default 64, for every job. Measured on studies of the
# mlp spec's 7 parameters (a throwaway script): at 60 trials 32 trees gave importances within
# 0.007 of 64 trees, at 300 within 0.005, while another seed of the 64-tree forest moved them by
# 0.05 and 0.03; the cost halves (60 trials: 345 to 176 ms; 300: 2.8 to 1.4 s), nearly all of it
# Optuna's own walk of each tree. Earlier, on a 10,000-trial job's samples of 500: 32 trees within
# 0.003 of 64, in 2.9 s instead of 6.4 s.
TREES = 32


def importances(spec: Spec, scored: list[tuple[RecordedTrial, float]]) -> dict[str, float]:
    """fANOVA importances of the searched parameters, summing to 1, most important first; from
    a seeded sample of IMPORTANCE_TRIALS trials in a larger job."""
    from tuning_platform.study import distributions, fitting_params, quiet_optuna

    if len(spec.search.space) == 1:
        # Shares of the variance, summing to 1, of one parameter: 1, as fANOVA's forest would say
        # (tests/test_study.py compares), without importing scikit-learn and fitting it (2.4 s
        # at the end of a 300-trial job in a new process). Unless every trial has the same value,
        # when fANOVA finds no variance to share.
        values = {value for trial, value in scored if fitting_params(trial, spec) is not None}
        if len(values) < 2:
            logger.info("note: no parameter importances: every trial has the same %s", spec.metric)
            return {}
        return {next(iter(spec.search.space)): 1.0}
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    quiet_optuna()
    if len(scored) > IMPORTANCE_TRIALS:
        logger.info(
            "note: parameter importances are estimated from %d of the %d trials, drawn at random",
            IMPORTANCE_TRIALS,
            len(scored),
        )
        scored = random.Random(0).sample(scored, IMPORTANCE_TRIALS)
    dists = distributions(spec)
    study = optuna.create_study(direction="maximize" if spec.mode == "max" else "minimize")
    for trial, value in scored:
        params = fitting_params(trial, spec)
        if params is not None:
            study.add_trial(
                optuna.trial.create_trial(
                    value=value, params=params, distributions={name: dists[name] for name in params}
                )
            )
    if len(study.trials) < 2:
        return {}
    try:
        found = get_param_importances(study, evaluator=FanovaImportanceEvaluator(n_trees=TREES, seed=0))
    except (RuntimeError, ValueError) as err:  # e.g. every trial has the same value
        logger.info("note: no parameter importances: %s", err)
        return {}
    return {name: float(value) for name, value in found.items() if math.isfinite(value)}


# --- Pictures ---------------------------------------------------------------------------------


def _figure(ncols: int = 1) -> tuple[Any, Any]:
    # A bare Figure draws with Agg and never touches pyplot's global state or a display.
    from matplotlib.figure import Figure

    figure = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    return figure, figure.subplots(1, ncols)


def warm_up() -> None:
    """What the first picture of a process pays once, paid now: importing matplotlib and loading
    its fonts, 0.3-0.4 s here (the first picture took 484 ms, the second 95)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure, axes = _figure()
    axes.set_title("warm-up")
    FigureCanvasAgg(figure).draw()


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)  # no bbox_inches: the size stays FIGSIZE * DPI
    return buffer.getvalue()


def _best_so_far(values: list[float], mode: str) -> list[float]:
    out: list[float] = []
    for value in values:
        out.append(value if not out else (max if mode == "max" else min)(out[-1], value))
    return out


def plot_best_so_far(spec: Spec, scored: list[tuple[RecordedTrial, float]], started_ms: int) -> bytes:
    """The metric of each trial and the best so far, against trial number and wall time."""
    from matplotlib.ticker import MaxNLocator

    figure, (by_trial, by_time) = _figure(2)
    in_order = [(float(n), v, t.status == "early_stopped") for n, (t, v) in enumerate(scored, start=1)]
    ended = sorted(((t.end_ms or t.start_ms) - started_ms, v, t.status == "early_stopped") for t, v in scored)
    minutes = ended[-1][0] >= 180_000  # seconds read better for a short job
    by_end = [(max(ms, 0) / (60000 if minutes else 1000), v, stopped) for ms, v, stopped in ended]
    time_label = f"wall time since the job started ({'min' if minutes else 's'}), at each trial's end"
    for axes, points, label in ((by_trial, in_order, "trial (in start order)"), (by_time, by_end, time_label)):
        for stopped, style in (
            (False, {"color": "tab:blue", "label": "completed"}),
            (True, {"color": "0.6", "marker": "x", "label": "stopped early"}),
        ):
            chosen = [(x, y) for x, y, s in points if s == stopped]
            if chosen:
                axes.scatter(*zip(*chosen, strict=True), s=18, **style)
        xs, ys = [x for x, _, _ in points], [y for _, y, _ in points]
        axes.step(xs, _best_so_far(ys, spec.mode), where="post", color="tab:red", label="best so far")
        axes.set_xlabel(label)
        axes.set_ylabel(f"best {spec.metric} of the trial")
        axes.grid(alpha=0.3)
    by_trial.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_trial.legend(loc="best", fontsize=8)
    figure.suptitle(f"{spec.name}: best {spec.metric} ({spec.mode}) so far")
    return _png(figure)


def _is_log(domain: Any) -> bool:
    return isinstance(domain, LogUniformDomain) or (isinstance(domain, IntDomain) and domain.log)


def _axis_position(value: Any, domain: Any) -> float:
    """A parameter value on its axis, scaled to [0, 1] (log axes for log domains)."""
    if isinstance(domain, ChoiceDomain):
        index = next((i for i, v in enumerate(domain.values) if str(v) == str(value)), 0)
        return index / max(len(domain.values) - 1, 1)
    low, high, value = float(domain.low), float(domain.high), float(value)
    if _is_log(domain):
        low, high, value = math.log(low), math.log(high), math.log(max(value, 1e-300))
    return (value - low) / (high - low) if high > low else 0.5


def plot_parallel_coordinates(spec: Spec, scored: list[tuple[RecordedTrial, float]]) -> bytes | None:
    """One axis per searched parameter, one line per trial, coloured by its metric."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    from tuning_platform.study import fitting_params

    names = list(spec.search.space)
    if not names:
        return None
    figure, axes = _figure()
    values = [v for _, v in scored]
    norm = Normalize(min(values), max(values) if max(values) > min(values) else min(values) + 1e-9)
    cmap = colormaps["viridis" if spec.mode == "max" else "viridis_r"]
    positions, shown = [], []
    # Best trials drawn last, on top.
    for trial, value in sorted(scored, key=lambda tv: tv[1] if spec.mode == "max" else -tv[1]):
        params = fitting_params(trial, spec) or {}
        if len(params) == len(names):
            positions.append([_axis_position(params[n], spec.search.space[n]) for n in names])
            shown.append(value)
    # One call of the norm for every trial: called per trial it took seconds for 10,000.
    shades = np.asarray(norm(np.asarray(shown, dtype=float)), dtype=float)
    lines = [list(enumerate([*ys, shade])) for ys, shade in zip(positions, shades, strict=True)]
    _draw_lines(axes, lines, colors=cmap(shades), alpha=0.8, linewidths=1.2)
    labels = []
    for name in names:
        domain = spec.search.space[name]
        if isinstance(domain, ChoiceDomain):
            labels.append(f"{name}\n{' / '.join(str(v) for v in domain.values)}")
        else:
            log = " (log)" if _is_log(domain) else ""
            labels.append(f"{name}{log}\n{domain.low:g} .. {domain.high:g}")
    labels.append(f"{spec.metric}\n{min(values):.4g} .. {max(values):.4g}")
    axes.set_xticks(range(len(labels)), labels, fontsize=7, rotation=20, ha="right")
    axes.set_yticks([0, 1], ["low", "high"])
    for x in range(len(labels)):
        axes.axvline(x, color="0.3", linewidth=0.8)
    figure.colorbar(_mappable(cmap, norm), ax=axes, label=spec.metric)
    axes.set_title(f"{spec.name}: parameters of each trial, coloured by best {spec.metric}")
    return _png(figure)


def _draw_lines(axes: Any, lines: list[Any], **style: Any) -> None:
    """Many polylines as one artist: the learning curves of 10,000 trials draw in 2.6 s here,
    where one `plot` per trial took 14.7 s."""
    from matplotlib.collections import LineCollection

    if lines:
        axes.add_collection(LineCollection(lines, **style))
        axes.autoscale_view()


def _mappable(cmap: Any, norm: Any) -> Any:
    from matplotlib.cm import ScalarMappable

    return ScalarMappable(norm=norm, cmap=cmap)


def plot_importances(spec: Spec, found: dict[str, float]) -> bytes | None:
    if not found:
        return None
    figure, axes = _figure()
    names = list(found)[::-1]  # most important on top
    axes.barh(names, [found[n] for n in names], color="tab:blue")
    axes.set_xlabel(f"share of the variance of {spec.metric} ({EVALUATOR})")
    axes.set_xlim(0, 1)
    axes.set_title(f"{spec.name}: parameter importances")
    for y, name in enumerate(names):
        axes.text(found[name] + 0.01, y, f"{found[name]:.2f}", va="center", fontsize=8)
    return _png(figure)


def asha_rungs(spec: Spec) -> list[int]:
    """The epochs at which ASHA compares trials: grace_period * reduction_factor**k below max_t."""
    if spec.scheduler.type != "asha" or spec.max_t is None:
        return []
    rungs, epoch = [], float(spec.scheduler.grace_period)
    while epoch < spec.max_t:
        rungs.append(int(epoch))
        epoch *= spec.scheduler.reduction_factor
    return rungs


def plot_learning_curves(spec: Spec, trials: list[RecordedTrial]) -> bytes | None:
    """The metric per epoch of every trial; stopped trials grey and ending in a cross, the ASHA
    rungs as dashed lines."""
    curves = [t for t in trials if t.history]
    if not curves:
        return None
    figure, axes = _figure()
    stopped = [t.history for t in curves if t.status == "early_stopped"]
    _draw_lines(axes, stopped, colors="0.65", linewidths=1)
    if stopped:
        axes.plot(*zip(*(history[-1] for history in stopped), strict=True), "x", color="0.45", markersize=5)
    _draw_lines(axes, [t.history for t in curves if t.status == "completed"], colors="tab:blue", linewidths=1.3)
    others = [t.history for t in curves if t.status not in ("completed", "early_stopped")]
    _draw_lines(axes, others, colors="tab:orange", linewidths=1, linestyles=":")
    for i, rung in enumerate(asha_rungs(spec)):
        axes.axvline(rung, color="tab:red", linestyle="--", linewidth=1, label="ASHA rung" if i == 0 else None)
    axes.plot([], [], color="tab:blue", label="completed")
    axes.plot([], [], color="0.65", marker="x", label="stopped early")
    if any(t.status not in ("completed", "early_stopped") for t in curves):
        axes.plot([], [], color="tab:orange", linestyle=":", label="failed, diverged or interrupted")
    axes.legend(loc="best", fontsize=8)
    axes.set_xlabel("epoch")
    axes.set_ylabel(spec.metric)
    axes.grid(alpha=0.3)
    axes.set_title(f"{spec.name}: learning curves of {len(curves)} trials")
    return _png(figure)
