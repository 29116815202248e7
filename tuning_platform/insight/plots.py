"""The pictures of a job's search, as PNGs of a fixed size: the best value so far, parallel
coordinates, importances, learning curves and, for a job of several objectives, its Pareto
front. Plain matplotlib (installed with MLflow), drawn on bare Figures, never through pyplot's
global state."""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Sequence
from typing import Any

from tuning_platform import pareto
from tuning_platform.insight.importance import EVALUATOR
from tuning_platform.objectives import Objective
from tuning_platform.ranking import best, score
from tuning_platform.records import LEARNED_FROM, TrialStatus
from tuning_platform.search.front import Front, FrontPoint
from tuning_platform.search.study import RecordedTrial, fitting_params
from tuning_platform.spec import ChoiceDomain, GridDomain, IntDomain, LogUniformDomain, Spec
from tuning_platform.spec.conditions import conditions

# Every picture is this size (inches at DPI): 900 x 500 pixels.
FIGSIZE, DPI = (9.0, 5.0), 100
PICTURES = ("best_so_far.png", "parallel_coordinates.png", "importances.png", "learning_curves.png")


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
        out.append(value if not out else best((out[-1], value), mode))
    return out


def plot_best_so_far(spec: Spec, scored: list[tuple[RecordedTrial, float]], started_ms: int) -> bytes:
    """The metric of each trial and the best so far, against trial number and wall time."""
    from matplotlib.ticker import MaxNLocator

    figure, (by_trial, by_time) = _figure(2)
    in_order = [(float(n), v, t.status == TrialStatus.EARLY_STOPPED) for n, (t, v) in enumerate(scored, start=1)]
    ended = sorted(((t.end_ms or t.start_ms) - started_ms, v, t.status == TrialStatus.EARLY_STOPPED) for t, v in scored)
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
    if isinstance(domain, (ChoiceDomain, GridDomain)):
        index = next((i for i, v in enumerate(domain.values) if str(v) == str(value)), 0)
        return index / max(len(domain.values) - 1, 1)
    low, high, value = float(domain.low), float(domain.high), float(value)
    if _is_log(domain):
        low, high, value = math.log(low), math.log(high), math.log(max(value, 1e-300))
    return (value - low) / (high - low) if high > low else 0.5


def plot_parallel_coordinates(spec: Spec, scored: list[tuple[RecordedTrial, float]]) -> bytes | None:
    """One axis per searched parameter, one line per trial, coloured by its metric. A parameter
    a trial does not hold (inactive by its `when`) is a gap in the trial's line, its axis
    labelled with the `when`; a trial that does not fit the space is not drawn."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    names = list(spec.search.space)
    if not names:
        return None
    figure, axes = _figure()
    values = [v for _, v in scored]
    norm = Normalize(min(values), max(values) if max(values) > min(values) else min(values) + 1e-9)
    cmap = colormaps["viridis" if spec.mode == "max" else "viridis_r"]
    positions, shown = [], []
    # Best trials drawn last, on top.
    for trial, value in sorted(scored, key=lambda tv: score(tv[1], spec.mode)):  # the best drawn last
        params = fitting_params(trial, spec)
        if params is not None:
            # NaN: no vertex there, so the line breaks over the axis (matplotlib drops NaN points).
            positions.append(
                [_axis_position(params[n], spec.search.space[n]) if n in params else math.nan for n in names]
            )
            shown.append(value)
    # One call of the norm for every trial: called per trial it took seconds for 10,000.
    shades = np.asarray(norm(np.asarray(shown, dtype=float)), dtype=float)
    lines = [list(enumerate([*ys, shade])) for ys, shade in zip(positions, shades, strict=True)]
    _draw_lines(axes, lines, colors=cmap(shades), alpha=0.8, linewidths=1.2)
    labels = []
    for name in names:
        domain = spec.search.space[name]
        when = _when_text(domain)
        if isinstance(domain, (ChoiceDomain, GridDomain)):
            labels.append(f"{name}{when}\n{' / '.join(str(v) for v in domain.values)}")
        else:
            log = " (log)" if _is_log(domain) else ""
            labels.append(f"{name}{log}{when}\n{domain.low:g} .. {domain.high:g}")
    labels.append(f"{spec.metric}\n{min(values):.4g} .. {max(values):.4g}")
    axes.set_xticks(range(len(labels)), labels, fontsize=7, rotation=20, ha="right")
    axes.set_yticks([0, 1], ["low", "high"])
    for x in range(len(labels)):
        axes.axvline(x, color="0.3", linewidth=0.8)
    figure.colorbar(_mappable(cmap, norm), ax=axes, label=spec.metric)
    axes.set_title(f"{spec.name}: parameters of each trial, coloured by best {spec.metric}")
    return _png(figure)


def when_text(domain: Any) -> str:
    """A parameter's `when` as a person reads it: `optimizer=sgd`, `optimizer=adam/adamw`,
    several keys joined by `, `; empty for a parameter without one."""
    return ", ".join(f"{k}={'/'.join(str(v) for v in allowed)}" for k, allowed in conditions(domain).items())


def _when_text(domain: Any) -> str:
    """` (when optimizer=sgd)` for a conditional parameter, else nothing."""
    when = when_text(domain)
    return f" (when {when})" if when else ""


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


def plot_importances(
    spec: Spec,
    found: dict[str, float],
    within_branch: dict[str, float] | None = None,
    branches: dict[str, str] | None = None,
) -> bytes | None:
    """The importances as bars, most important on top; below them, hatched and apart, each
    conditional parameter's importance within its branch (a share of that branch's variance,
    not of the whole job's), labelled with its `when`."""
    within_branch, branches = within_branch or {}, branches or {}
    if not found and not within_branch:
        return None
    figure, axes = _figure()
    bars = [(name, value, False) for name, value in found.items()]
    bars += [
        (f"{name} | {branches[name]}" if name in branches else name, value, True)
        for name, value in within_branch.items()
    ]
    bars = bars[::-1]  # most important on top, the branches' below
    for y, (_, value, branch) in enumerate(bars):
        style = {"color": "white", "edgecolor": "tab:orange", "hatch": "//"} if branch else {"color": "tab:blue"}
        axes.barh(y, value, **style)
        axes.text(value + 0.01, y, f"{value:.2f}", va="center", fontsize=8)
    axes.set_yticks(range(len(bars)), [label for label, _, _ in bars], fontsize=8)
    if within_branch and found:
        axes.axhline(len(within_branch) - 0.5, color="0.4", linewidth=0.8, linestyle="--")
    label = f"share of the variance of {spec.metric} ({EVALUATOR})"
    if within_branch:
        label += "\nhatched: a conditional parameter's share within its branch (among the trials where it is active)"
    axes.set_xlabel(label)
    axes.set_xlim(0, 1)
    axes.set_title(f"{spec.name}: parameter importances")
    return _png(figure)


def plot_importances_per_objective(spec: Spec, found: dict[str, dict[str, float]]) -> bytes | None:
    """The importances of several objectives side by side: one group of bars per parameter
    (most important first, by the largest share it has of any objective), one colour per
    objective."""
    shown = {metric: values for metric, values in found.items() if values}
    if not shown:
        return None
    import numpy as np

    params = list(dict.fromkeys(name for values in shown.values() for name in values))
    params.sort(key=lambda name: -max(values.get(name, 0.0) for values in shown.values()))
    params = params[::-1]  # most important on top
    figure, axes = _figure()
    height = 0.8 / len(shown)
    for k, (metric, values) in enumerate(shown.items()):
        # The first objective's bar on top within each group.
        ys = np.arange(len(params)) + (len(shown) - 1 - k - (len(shown) - 1) / 2) * height
        shares = [values.get(name, 0.0) for name in params]
        axes.barh(ys, shares, height=height, label=metric, color=f"C{k}")
        for y, share in zip(ys, shares, strict=True):
            axes.text(share + 0.01, y, f"{share:.2f}", va="center", fontsize=7)
    axes.set_yticks(range(len(params)), params)
    axes.set_xlabel(f"share of the variance of each objective's last value ({EVALUATOR})")
    axes.set_xlim(0, 1)
    axes.legend(loc="lower right", fontsize=8)
    axes.set_title(f"{spec.name}: parameter importances per objective")
    return _png(figure)


ARROWS = {"max": "↑", "min": "↓"}  # which way is better on an axis


def objective_label(objective: Objective) -> str:
    """`val_accuracy ↑ (max)`: the metric and which way is better."""
    return f"{objective.metric} {ARROWS[objective.mode]} ({objective.mode})"


def reference_text(front: Front) -> str:
    """The hypervolume's reference point as a person reads it: `val_accuracy=0.81, latency_ms=3.2`."""
    return ", ".join(f"{o.metric}={r:.6g}" for o, r in zip(front.objectives, front.reference, strict=True))


def staircase(
    points: Sequence[tuple[float, float]], objectives: tuple[Objective, Objective], reference: tuple[float, float]
) -> list[tuple[float, float]]:
    """The attainment staircase of the points on two objectives, in the objectives' own signs:
    the border of what the points dominate, from the reference point's level on one objective to
    its level on the other, through each non-dominated point (the corners between them are the
    points' worse value on each side). Empty without a point."""
    if not points:
        return []
    signed = sorted({tuple(o.signed(v) for o, v in zip(objectives, p, strict=True)) for p in points})
    ranks = pareto.nondominated_ranks(signed)
    # Larger is better in both: left to right the first objective improves, the second worsens.
    steps = [p for p, rank in zip(signed, ranks, strict=True) if rank == 1]
    low_x, low_y = (o.signed(r) for o, r in zip(objectives, reference, strict=True))
    corners = [(low_x, steps[0][1])]
    for (x, y), following in zip(steps, [*steps[1:], None], strict=True):
        corners.append((x, y))
        corners.append((x, following[1] if following is not None else low_y))
    return [(objectives[0].signed(x), objectives[1].signed(y)) for x, y in corners]


def _log_scale(values: Sequence[float]) -> bool:
    """A log axis for a metric spread over more than an order of magnitude (parameters, a size)."""
    return min(values) > 0 and max(values) / min(values) >= 20


def plot_front(spec: Spec, front: Front) -> bytes | None:
    """The objectives pairwise (one panel for two objectives, three for three): every trial the
    front counts as a point (the front's members red, the other feasible trials blue, the
    infeasible ones grey crosses), the front as its attainment staircase drawn from the
    reference point (a black +), a constraint on a drawn objective as a dashed line at its bound;
    with two objectives the shaded area is the hypervolume. An objective spread over more than
    a factor of 20 (parameters) gets a log axis. None for one objective (nothing to draw
    pairwise) or without a trial."""
    objectives = front.objectives
    if len(objectives) < 2 or not front.points:
        return None
    pairs = list(itertools.combinations(range(len(objectives)), 2))
    figure, axes = _figure(len(pairs))
    panels = [axes] if len(pairs) == 1 else list(axes)
    on_front = [p for p in front.points if p.feasible and p.rank == 1]
    groups: list[tuple[list[FrontPoint], dict[str, Any]]] = [
        ([p for p in front.points if p.feasible and p.rank != 1], {"color": "tab:blue", "s": 16, "alpha": 0.6}),
        ([p for p in front.points if not p.feasible], {"color": "0.6", "marker": "x", "s": 22}),
        (on_front, {"color": "tab:red", "s": 30, "edgecolors": "black", "linewidths": 0.5, "zorder": 3}),
    ]
    labels = ["feasible, dominated", "infeasible (misses a constraint)", "on the front (rank 1)"]
    for panel, (i, j) in zip(panels, pairs, strict=True):
        pair, reference = (objectives[i], objectives[j]), (front.reference[i], front.reference[j])
        for (group, style), label in zip(groups, labels, strict=True):
            if group:
                panel.scatter([p.values[i] for p in group], [p.values[j] for p in group], label=label, **style)
        corners = staircase([(p.values[i], p.values[j]) for p in on_front], pair, reference)
        if corners:
            xs, ys = [x for x, _ in corners], [y for _, y in corners]
            panel.plot(xs[1:-1], ys[1:-1], color="tab:red", linewidth=1.3, label="Pareto front")
            for ends in (slice(0, 2), slice(-2, None)):  # out to the reference point's levels
                panel.plot(xs[ends], ys[ends], color="tab:red", linewidth=0.8, linestyle=":")
            if len(pairs) == 1:  # a projection of three objectives is not the hypervolume
                panel.fill([*xs, reference[0]], [*ys, reference[1]], color="tab:red", alpha=0.1, label="hypervolume")
        panel.plot(*reference, "+", color="black", markersize=10, markeredgewidth=1.5, label="reference point")
        for constraint in front.constraints:  # a bound on a drawn objective: where feasibility ends
            if constraint.metric in (pair[0].metric, pair[1].metric):
                line = panel.axvline if constraint.metric == pair[0].metric else panel.axhline
                line(constraint.bound, color="0.4", linestyle="--", linewidth=0.9, label=constraint.text)
        if len(on_front) <= 12:  # which child runs they are, while the labels stay readable
            for p in on_front:
                panel.annotate(
                    p.trial_id, (p.values[i], p.values[j]), xytext=(4, 4), textcoords="offset points", fontsize=7
                )
        for axis, k in (("x", i), ("y", j)):
            if _log_scale([*(p.values[k] for p in front.points), front.reference[k]]):
                getattr(panel, f"set_{axis}scale")("log")
        panel.set_xlabel(objective_label(objectives[i]))
        panel.set_ylabel(objective_label(objectives[j]))
        panel.grid(alpha=0.3)
    panels[0].legend(loc="best", fontsize=7)
    hypervolume = f"hypervolume {front.hypervolume:.4g}" if front.feasible else "no feasible trial, hypervolume 0"
    figure.suptitle(
        f"{spec.name}: Pareto front, {len(front.members)} of {len(front.points)} trials on it\n"
        f"{hypervolume} against the reference point + ({reference_text(front)})",
        fontsize=10,
    )
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
    stopped = [t.history for t in curves if t.status == TrialStatus.EARLY_STOPPED]
    _draw_lines(axes, stopped, colors="0.65", linewidths=1)
    if stopped:
        axes.plot(*zip(*(history[-1] for history in stopped), strict=True), "x", color="0.45", markersize=5)
    completed = [t.history for t in curves if t.status == TrialStatus.COMPLETED]
    _draw_lines(axes, completed, colors="tab:blue", linewidths=1.3)
    others = [t.history for t in curves if t.status not in LEARNED_FROM]
    _draw_lines(axes, others, colors="tab:orange", linewidths=1, linestyles=":")
    for i, rung in enumerate(asha_rungs(spec)):
        axes.axvline(rung, color="tab:red", linestyle="--", linewidth=1, label="ASHA rung" if i == 0 else None)
    axes.plot([], [], color="tab:blue", label="completed")
    axes.plot([], [], color="0.65", marker="x", label="stopped early")
    if any(t.status not in LEARNED_FROM for t in curves):
        axes.plot([], [], color="tab:orange", linestyle=":", label="failed, diverged or interrupted")
    axes.legend(loc="best", fontsize=8)
    axes.set_xlabel("epoch")
    axes.set_ylabel(spec.metric)
    axes.grid(alpha=0.3)
    axes.set_title(f"{spec.name}: learning curves of {len(curves)} trials")
    return _png(figure)
