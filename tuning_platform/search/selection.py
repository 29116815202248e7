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

from tuning_platform.execution.interrupt import unfinished_trials
from tuning_platform.execution.results import read_trials
from tuning_platform.execution.tuner import RunSetup, fit
from tuning_platform.outcome import TrialRow, ranked, stable
from tuning_platform.ranking import score
from tuning_platform.records import config_key
from tuning_platform.spec import Spec

if TYPE_CHECKING:
    from ray.tune import ResultGrid

    from tuning_platform.request import JobRequest

logger = logging.getLogger(__name__)


@dataclass
class Candidate:
    source: TrialRow  # the search trial whose configuration is trained again
    runs: list[TrialRow] = field(default_factory=list)  # its reseeded runs, best first

    @property
    def values(self) -> list[float]:
        return [r.value for r in stable(self.runs)]  # type: ignore[misc]

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
        return TrialRow(best.trial_id, best.status, best.epochs, self.chosen.mean, dict(best.params))

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


def top_configurations(spec: Spec, rows: list[TrialRow], top_k: int) -> list[TrialRow]:
    """The best `top_k` trials with distinct configurations (failed and diverged never)."""
    chosen: list[TrialRow] = []
    for row in ranked(stable(rows), spec.mode):
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


def reseed_top(request: JobRequest, rows: list[TrialRow], setup: RunSetup, run_name: str) -> Selection:
    """Train the top configurations of `rows` again with new seeds, as a further Ray run."""
    spec = request.spec
    assert spec.selection is not None and spec.selection.top_k is not None and spec.selection.seeds is not None
    top = top_configurations(spec, rows, spec.selection.top_k)
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
    candidates = {config_key(row.params, shown): Candidate(row) for row in top}
    reseeded = read_trials(run_spec, results)
    for row in reseeded:
        candidate = candidates.get(config_key(row.params, shown))
        if candidate is not None:
            candidate.runs.append(row)
    for candidate in candidates.values():
        candidate.runs = ranked(candidate.runs, spec.mode)
    with_mean = [c for c in candidates.values() if c.mean is not None]
    chosen = max(with_mean, key=lambda c: score(c.mean, spec.mode)) if with_mean else None  # type: ignore[arg-type]
    setup.tracker.close_trial_runs({row.trial_id: row.status for row in reseeded})
    return Selection(
        list(candidates.values()),
        chosen,
        results,
        reseed_run,
        interrupted=bool(unfinished_trials(reseed_run)),
    )
