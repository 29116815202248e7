"""`selection`: a champion chosen by its mean over new seeds, not by one lucky run.

After the search, the `top_k` best configurations are trained again, each with `seeds` new
seeds, to the full epoch budget and without early stopping, as ordinary Ray trials of a further
Ray run (`RUN-reseed`) that run in parallel and are tracked as child runs tagged
`trial_status=reseed`. The configuration with the best mean wins; its best reseeded run is the
model that gets registered, with the mean and standard deviation on it and on the parent run.
On a small validation set or a noisy metric, the search's single best run is often a lucky
seed; the mean over seeds is the better estimate of what the configuration is worth.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tuning_platform import pareto
from tuning_platform.execution.interrupt import unfinished_trials
from tuning_platform.execution.results import read_trials
from tuning_platform.execution.tuner import RunSetup, fit
from tuning_platform.objectives import signed_point
from tuning_platform.outcome import TrialRow, ranked, stable
from tuning_platform.ranking import score
from tuning_platform.records import config_key
from tuning_platform.spec import Spec

if TYPE_CHECKING:
    from ray.tune import ResultGrid

    from tuning_platform.request import JobRequest
    from tuning_platform.search.front import Front

logger = logging.getLogger(__name__)


@dataclass
class Candidate:
    source: TrialRow  # the search trial whose configuration is trained again
    runs: list[TrialRow] = field(default_factory=list)  # its reseeded runs, best first
    # With several objectives a run counts with its last value of the primary objective (its
    # point on the front), as the search's trials did; None: its best value over its epochs.
    by_last: str | None = None

    @property
    def values(self) -> list[float]:
        if self.by_last is not None:
            return self.values_of(self.by_last)
        return [r.value for r in stable(self.runs)]  # type: ignore[misc]

    def values_of(self, metric: str) -> list[float]:
        """The stable runs' last values of a metric."""
        return [r.finals[metric] for r in stable(self.runs) if metric in r.finals]

    def mean_of(self, metric: str) -> float | None:
        values = self.values_of(metric)
        return statistics.fmean(values) if values else None

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) >= 2 else 0.0


@dataclass
class Selection:
    candidates: list[Candidate]
    chosen: Candidate | None
    results: ResultGrid
    run_name: str
    interrupted: bool = False

    @property
    def registered_row(self) -> TrialRow | None:
        """The chosen configuration's best reseeded run, valued at the configuration's mean
        (the figure the champion rule compares)."""
        if self.chosen is None or self.chosen.mean is None:
            return None
        best = stable(self.chosen.runs)[0]  # a diverged run never becomes the model
        means = {metric: mean for metric in best.finals if (mean := self.chosen.mean_of(metric)) is not None}
        return TrialRow(best.trial_id, best.status, best.epochs, self.chosen.mean, dict(best.params), finals=means)

    def lines(self, metric: str) -> list[str]:
        out = [f"Robust champion: the top {len(self.candidates)} configurations trained again with new seeds:"]
        for candidate in self.candidates:
            mark = "  <- chosen" if candidate is self.chosen else ""
            mean = "-" if candidate.mean is None else f"{candidate.mean:.4f} ± {candidate.std:.4f}"
            out.append(
                f"  trial {candidate.source.trial_id}: search {metric}={candidate.source.value:.4f}; "
                f"mean over {len(candidate.values)} seeds {mean}{mark}"
            )
        return out


def top_configurations(spec: Spec, rows: list[TrialRow], top_k: int, front: Front | None = None) -> list[TrialRow]:
    """The best `top_k` trials with distinct configurations (failed and diverged never). With a
    front (several objectives or constraints): feasible trials only, and with several
    objectives the front's members in the order the selection rule ranks them."""
    order = ranked(stable(rows), spec.mode)
    if front is not None:
        by_id = {row.trial_id: row for row in order}
        if spec.multi_objective:
            order = [by_id[p.trial_id] for p in front.ordered_by(spec.selection_rule) if p.trial_id in by_id]
        else:
            feasible = {p.trial_id for p in front.feasible}
            order = [row for row in order if row.trial_id in feasible]
    chosen: list[TrialRow] = []
    for row in order:
        if all(row.params != other.params for other in chosen):
            chosen.append(row)
        if len(chosen) == top_k:
            break
    return chosen


def reseed_spec(spec: Spec, runs: int) -> Spec:
    """The reseeded runs' spec: the given configurations in full, no early stopping."""
    run = spec.model_copy(deep=True)
    run.search.algorithm = "random"
    run.search.num_samples = runs
    run.search.warm_start = None
    run.scheduler.type = "fifo"
    run.scheduler.max_t = None
    run.budget.time_s = None
    return run


def reseed_top(
    request: JobRequest, rows: list[TrialRow], setup: RunSetup, run_name: str, front: Front | None = None
) -> Selection:
    """Train the top configurations of `rows` (of the feasible front, when there is one) again
    with new seeds, as a further Ray run; choose by the means."""
    spec = request.spec
    assert spec.selection is not None and spec.selection.top_k is not None and spec.selection.seeds is not None
    top = top_configurations(spec, rows, spec.selection.top_k, front)
    seeds = [spec.search.seed + 1 + j for j in range(spec.selection.seeds)]
    points = [({**row.params, "seed": seed}, row.trial_id) for row in top for seed in seeds]
    logger.info(
        "Selection: training the top %d configurations again with seeds %s (%d runs)",
        len(top),
        ", ".join(map(str, seeds)),
        len(points),
    )
    reseed_run = f"{run_name}-reseed"
    run_spec = reseed_spec(spec, len(points))
    results = fit(run_spec, setup, reseed_run, reseed=points)
    shown = tuple(spec.search.space)
    by_last = spec.metric if spec.multi_objective else None
    candidates = {config_key(row.params, shown): Candidate(row, by_last=by_last) for row in top}
    reseeded = read_trials(run_spec, results)
    for row in reseeded:
        candidate = candidates.get(config_key(row.params, shown))
        if candidate is not None:
            candidate.runs.append(row)
    for candidate in candidates.values():
        candidate.runs = ranked(candidate.runs, spec.mode)
    with_mean = [c for c in candidates.values() if c.mean is not None]
    chosen = _chosen(spec, with_mean)
    setup.tracker.close_trial_runs({row.trial_id: row.status for row in reseeded})
    if with_mean and chosen is None:
        logger.warning("warning: no reseeded configuration meets the constraints on its means, so none is registered")
    return Selection(
        list(candidates.values()),
        chosen,
        results,
        reseed_run,
        interrupted=bool(unfinished_trials(reseed_run)),
    )


def _chosen(spec: Spec, candidates: list[Candidate]) -> Candidate | None:
    """The configuration to register, by its means over seeds: the best mean of the metric;
    with constraints only among those whose means meet them; with several objectives and
    `knee`, the knee of the non-dominated means."""
    feasible = [c for c in candidates if all(k.violation(c.mean_of(k.metric)) == 0 for k in spec.constraint_list)]
    if not feasible:
        return None
    if spec.multi_objective and spec.selection_rule == "knee":
        objectives = spec.objective_list
        means = [[c.mean_of(o.metric) for o in objectives] for c in feasible]
        whole = [(c, m) for c, m in zip(feasible, means, strict=True) if all(v is not None for v in m)]
        if whole:
            points = [signed_point([float(v) for v in m if v is not None], objectives) for _, m in whole]
            front = [i for i, rank in enumerate(pareto.nondominated_ranks(points)) if rank == 1]
            return whole[front[pareto.knee([points[i] for i in front])]][0]
    return max(feasible, key=lambda c: score(c.mean, spec.mode))  # type: ignore[arg-type]
