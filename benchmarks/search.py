"""Search efficiency: Optuna TPE + ASHA against random search + FIFO (no early stopping), with the
same trainable, number of trials and seeds; against a small grid + FIFO, the way many teams tune
today; and TPE + ASHA telling Optuna a trial ASHA stopped as PRUNED (the platform's way) against
as COMPLETE with its last value (Ray's).

    python -m benchmarks.search                  # mlp spec, 30 trials, seeds 0-4
    python -m benchmarks.search --spec cnn       # cnn spec, its 20 trials of 12 epochs
    python -m benchmarks.search --spec mlp cnn   # both, one after the other
    python -m benchmarks.search --smoke          # 4 trials, seed 0
    python -m benchmarks.search --set scheduler.grace_period=1   # other ASHA settings

Every strategy runs through the platform on the shipped spec (`search_spaces/mlp.yaml`: the MLP
on breast cancer, val_roc_auc, ASHA grace 3 / reduction 3 up to 20 epochs; `cnn.yaml`: the CNN
on digits, val_accuracy, grace 2 / reduction 3 up to 12 epochs); only `search.algorithm` and
`scheduler.type` differ, and for "TPE+ASHA (COMPLETE)" `TrialSearch.PRUNE_STOPPED` is off for
the job (the searcher lives in this process, the driver). "grid+FIFO" runs `GRIDS`: a
hand-written grid of about the same number of trials over the learning rate, the optimizer and
the batch size (momentum 0.9 with sgd), the other parameters at common values. For each seed it prints epochs
trained, trials stopped early, what Optuna was told, wall time, the best metric, the mean of the
5 best trials, and the time until each first reached 99% of random+FIFO's final best (from the
trial runs' MLflow histories), then each seed's epoch share and best gap with their median,
spread and mean. Targets, at the median over the seeds (one lucky or unlucky seed moves a mean):
TPE+ASHA trains at most 40% of the epochs, and its best is no more than 0.005 below
random+FIFO's. COMPLETE against PRUNED has
no target: the script prints both side by side, per seed and averaged, and which one the
figures favour.
"""

from __future__ import annotations

import statistics
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from benchmarks.common import (
    SPECS,
    job_request,
    median_spread,
    parser,
    quiet,
    ray_running,
    run_platform,
    spread,
    verdict,
    workdir,
)

TARGET_EPOCH_SHARE = 0.40
TARGET_BEST_GAP = 0.005
FIFO, PRUNED, COMPLETE, GRID = "random+FIFO", "TPE+ASHA", "TPE+ASHA (COMPLETE)", "grid+FIFO"
# label: (search.algorithm, scheduler.type, TrialSearch.PRUNE_STOPPED)
STRATEGIES = {
    FIFO: ("random", "fifo", True),
    PRUNED: ("optuna", "asha", True),
    COMPLETE: ("optuna", "asha", False),
    GRID: ("grid", "fifo", True),
}
# The grid a team would write for each spec: 27 (mlp) and 18 (cnn) configurations, near the
# other strategies' 30 and 20 trials.
_OPTIMIZERS = (
    "optimizer: {type: grid, values: [sgd, adam, adamw]}, momentum: {type: grid, values: [0.9], when: {optimizer: sgd}}"
)
GRIDS = {
    "mlp": [
        "search.space={lr: {type: grid, values: [0.001, 0.01, 0.05]}, batch_size: {type: grid, values: [16, 32, 64]}, "
        + _OPTIMIZERS
        + "}",
        "search.fixed.weight_decay=0.0001",
        "search.fixed.hidden_size=64",
        "search.fixed.num_layers=2",
        "search.fixed.dropout=0.1",
    ],
    "cnn": [
        "search.space={lr: {type: grid, values: [0.001, 0.01, 0.05]}, batch_size: {type: grid, values: [32, 128]}, "
        + _OPTIMIZERS
        + "}",
        "search.fixed.weight_decay=0.0001",
        "search.fixed.dropout=0.25",
        "search.fixed.channels=16",
    ],
}
# The shipped specs measured, and the trials a run gives each unless --trials says otherwise.
SPEC_FILES = {"mlp": "mlp.yaml", "cnn": "cnn.yaml"}
DEFAULT_TRIALS = {"mlp": 30, "cnn": 20}
DESCRIPTIONS = {"mlp": "MLP on breast cancer", "cnn": "CNN on digits"}
TOP_K = 5
# --smoke: enough epochs for ASHA's rungs (mlp 3 and 9, cnn 2 and 6) to stop some trials,
# fewer than the specs' 20 and 12.
SMOKE_EPOCHS = {"mlp": 9, "cnn": 6}


def metric_histories(client: Any, outcome: Any, metric: str) -> tuple[float, list[list[Any]]]:
    """The parent run's start (ms) and each trial run's history of the metric, from MLflow."""
    from tuning_platform.tracking.queries import child_runs

    parent = client.get_run(outcome.parent_run_id)
    runs = child_runs(client, outcome.experiment_id, outcome.parent_run_id)
    return parent.info.start_time, [client.get_metric_history(run.info.run_id, metric) for run in runs]


def best_over_time(start_ms: float, histories: list[list[Any]]) -> list[tuple[float, float]]:
    """(seconds since the job's start, best value so far) at each new best."""
    points = sorted((m.timestamp, m.value) for history in histories for m in history)
    best, curve = float("-inf"), []
    for timestamp, value in points:
        if value > best:
            best = value
            curve.append(((timestamp - start_ms) / 1000, value))
    return curve


def mean_at(histories: list[list[Any]], epoch: int) -> float:
    """The mean value at `epoch` over the trials that reached it (every trial reaches ASHA's grace
    period): how good the configurations the searcher proposed were, before any was stopped."""
    values = [m.value for history in histories for m in history if m.step == epoch]
    return statistics.mean(values) if values else float("nan")


def time_to_reach(curve: list[tuple[float, float]], level: float) -> float | None:
    return next((seconds for seconds, value in curve if value >= level), None)


@contextmanager
def optuna_told() -> Iterator[Counter[str]]:
    """Counts the states the job's searcher tells its Optuna study (COMPLETE, PRUNED, FAIL):
    `Study.tell` wrapped in this process, where the searcher runs, for the block's duration."""
    import optuna

    told: Counter[str] = Counter()
    original = optuna.study.Study.tell

    def tell(self: Any, trial: Any, values: Any = None, state: Any = None, **kwargs: Any) -> Any:
        told[state.name if state is not None else "COMPLETE"] += 1
        return original(self, trial, values, state=state, **kwargs)

    optuna.study.Study.tell = tell  # type: ignore[method-assign,assignment]
    try:
        yield told
    finally:
        optuna.study.Study.tell = original  # type: ignore[method-assign]


@contextmanager
def prune_stopped(on: bool) -> Iterator[None]:
    """`TrialSearch.PRUNE_STOPPED` for one job, put back after it."""
    from tuning_platform.search.optuna_search import TrialSearch

    before = TrialSearch.PRUNE_STOPPED
    TrialSearch.PRUNE_STOPPED = on
    try:
        yield
    finally:
        TrialSearch.PRUNE_STOPPED = before


def run_strategy(
    spec_name: str, label: str, seed: int, trials: int, overrides: list[str], folder: Any, smoke: bool = False
) -> dict[str, Any] | None:
    from tuning_platform.records import TrialStatus
    from tuning_platform.tracking.client import open_client

    algorithm, scheduler, prune = STRATEGIES[label]
    name = f"search-{spec_name}-{algorithm}-{scheduler}{'' if prune else '-complete'}-{seed}"
    # A grid runs once: its size is its number of trials.
    grid = [*GRIDS[spec_name], "search.num_samples=1"] if algorithm == "grid" else []
    if grid and smoke:  # the three optimizers at one learning rate and batch size
        grid.append(f"search.space={{lr: {{type: grid, values: [0.01]}}, {_OPTIMIZERS}}}")
    request = job_request(
        SPECS / SPEC_FILES[spec_name],
        [
            f"search.num_samples={trials}",
            *grid,
            f"search.seed={seed}",
            f"search.algorithm={algorithm}",
            f"scheduler.type={scheduler}",
            "tracking.register_model=false",
            *overrides,
        ],
        folder,
        name,
    )
    with prune_stopped(prune), optuna_told() as told:
        outcome, wall_s = run_platform(request)
    if outcome.best is None:
        print(f"error: {name} ended without a best trial", file=sys.stderr)
        return None
    values = sorted((row.value for row in outcome.rows if row.value is not None), reverse=True)
    start_ms, histories = metric_histories(open_client(request.tracking_uri), outcome, request.spec.metric)
    return {
        "metric": request.spec.metric,
        "trials": len(outcome.rows),
        "epochs": sum(row.epochs for row in outcome.rows),
        "stopped": sum(row.status == TrialStatus.EARLY_STOPPED for row in outcome.rows),
        "told": dict(told),
        "wall_s": wall_s,
        "best": outcome.best.value,
        "top": statistics.mean(values[:TOP_K]),
        "grace": request.spec.scheduler.grace_period,
        "at_grace": mean_at(histories, request.spec.scheduler.grace_period),
        "curve": best_over_time(start_ms, histories),
    }


def told_text(told: dict[str, int]) -> str:
    """`20C,10P`: trials told to Optuna as COMPLETE and PRUNED (and FAIL); `-` for the grid."""
    if not told:
        return "-"
    return ",".join(f"{count}{state[0]}" for state, count in sorted(told.items()))


def report(spec_name: str, measured: dict[int, dict[str, dict[str, Any]]], args: Any) -> bool:
    """The tables and verdicts of one spec; True when its targets are met."""
    first = next(iter(measured.values()))[FIFO]
    print(
        f"\nSearch efficiency: {spec_name} ({DESCRIPTIONS[spec_name]}), {args.trials_of[spec_name]} trials, "
        f"metric {first['metric']} (max), {args.cpus} CPUs"
    )
    if args.overrides_of[spec_name]:
        print("with " + " ".join(f"--set {item}" for item in args.overrides_of[spec_name]))
    at_grace = f"mean@{first['grace']}"
    print(f"'{at_grace}': the mean {first['metric']} of all trials at epoch {first['grace']} (ASHA's grace period)")
    print(
        f"{'seed':>4} {'strategy':<20} {'epochs':>6} {'stopped':>7} {'told':>8} {'wall s':>7} {'best':>8} "
        f"{f'top-{TOP_K}':>8} {at_grace:>8} {'s to 99% of random best':>24}"
    )
    shares, gaps, speedups = [], [], []
    for seed, runs in measured.items():
        level = 0.99 * runs[FIFO]["best"]
        for label, run in runs.items():
            reached = time_to_reach(run["curve"], level)
            shown = f"{reached:.1f}" if reached is not None else "never"
            print(
                f"{seed:>4} {label:<20} {run['epochs']:>6} {run['stopped']:>7} {told_text(run['told']):>8} "
                f"{run['wall_s']:>7.1f} {run['best']:>8.4f} {run['top']:>8.4f} {run['at_grace']:>8.4f} {shown:>24}"
            )
        fifo, asha = runs[FIFO], runs[PRUNED]
        shares.append(asha["epochs"] / fifo["epochs"])
        gaps.append(fifo["best"] - asha["best"])
        speedups.append(fifo["wall_s"] / asha["wall_s"])
    print(
        f"{'mean':>4} {'strategy':<20} {'epochs':>6} {'stopped':>7} {'':>8} {'wall s':>7} {'best':>8} "
        f"{f'top-{TOP_K}':>8} {at_grace:>8}"
    )
    for label in STRATEGIES:
        ran = [measured[seed][label] for seed in measured if label in measured[seed]]
        if not ran:
            continue
        print(
            f"{'':>4} {label:<20} {statistics.mean(r['epochs'] for r in ran):>6.1f} "
            f"{statistics.mean(r['stopped'] for r in ran):>7.1f} {'':>8} "
            f"{statistics.mean(r['wall_s'] for r in ran):>7.1f} {statistics.mean(r['best'] for r in ran):>8.4f} "
            f"{statistics.mean(r['top'] for r in ran):>8.4f} {statistics.mean(r['at_grace'] for r in ran):>8.4f}"
        )
    seeds = list(measured)
    print(
        "TPE+ASHA / random+FIFO epochs per seed: "
        + ", ".join(f"{seed}: {100 * share:.1f}%" for seed, share in zip(seeds, shares, strict=True))
        + f"; {median_spread(shares, percent=True)}"
    )
    print(
        "best gap (random+FIFO minus TPE+ASHA, > 0 means TPE+ASHA is worse) per seed: "
        + ", ".join(f"{seed}: {gap:.4f}" for seed, gap in zip(seeds, gaps, strict=True))
        + f"; {median_spread(gaps)}"
    )
    print(f"wall time speed-up: {spread(speedups)}x")
    if all(GRID in runs for runs in measured.values()):
        grid_gaps = [runs[GRID]["best"] - runs[PRUNED]["best"] for runs in measured.values()]
        grid_shares = [runs[PRUNED]["epochs"] / runs[GRID]["epochs"] for runs in measured.values()]
        trials = next(iter(measured.values()))[GRID]["trials"]
        print(
            f"against {GRID} ({trials} configurations): TPE+ASHA / grid epochs {spread(grid_shares)}; "
            f"best gap (grid minus TPE+ASHA, > 0 means TPE+ASHA is worse) {spread(grid_gaps)}"
        )
    if all(COMPLETE in runs for runs in measured.values()):
        compare_complete(measured)
    share_ok = verdict(
        f"{spec_name}: epoch share of TPE+ASHA, median over {_seeds(shares)}",
        statistics.median(shares),
        TARGET_EPOCH_SHARE,
        True,
        smoke=args.smoke,
    )
    gap_ok = verdict(
        f"{spec_name}: best-metric gap, median over {_seeds(gaps)}",
        statistics.median(gaps),
        TARGET_BEST_GAP,
        True,
        smoke=args.smoke,
    )
    return share_ok and gap_ok


def _seeds(values: list[float]) -> str:
    return f"{len(values)} seed{'s' if len(values) != 1 else ''}"


def compare_complete(measured: dict[int, dict[str, dict[str, Any]]]) -> None:
    """COMPLETE against PRUNED, per seed and averaged: epochs, best, top-k and the mean at the
    grace period (no target)."""
    print("COMPLETE against PRUNED (a stopped trial told to Optuna as COMPLETE with its last value, or as PRUNED):")
    ratios, best_diffs, top_diffs, grace_diffs = [], [], [], []
    for seed, runs in measured.items():
        pruned, complete = runs[PRUNED], runs[COMPLETE]
        ratios.append(complete["epochs"] / pruned["epochs"])
        best_diffs.append(complete["best"] - pruned["best"])
        top_diffs.append(complete["top"] - pruned["top"])
        grace_diffs.append(complete["at_grace"] - pruned["at_grace"])
        print(
            f"  seed {seed}: epochs {complete['epochs']} / {pruned['epochs']} = {ratios[-1]:.3f}; "
            f"best {complete['best']:.4f} - {pruned['best']:.4f} = {best_diffs[-1]:+.4f}; "
            f"top-{TOP_K} {complete['top']:.4f} - {pruned['top']:.4f} = {top_diffs[-1]:+.4f}; "
            f"mean@{pruned['grace']} {complete['at_grace']:.4f} - {pruned['at_grace']:.4f} = {grace_diffs[-1]:+.4f}"
        )
    print(
        f"  mean: epochs COMPLETE / PRUNED {spread(ratios)}; best COMPLETE - PRUNED {spread(best_diffs)}; "
        f"top-{TOP_K} COMPLETE - PRUNED {spread(top_diffs)}; mean at the grace period COMPLETE - PRUNED "
        f"{spread(grace_diffs)}"
    )
    print(f"  the figures favour: {favoured(ratios, best_diffs)}")


# How far apart two runs of the same strategy land on this machine: the order in which two
# concurrent trials report moves ASHA's asynchronous decisions and what TPE has seen, so the
# epochs of one seed vary by about 10% from run to run (benchmarks/README.md, row 3c).
EPOCH_MARGIN = 0.05
BEST_MARGIN = 0.001


def favoured(ratios: list[float], best_diffs: list[float]) -> str:
    """Which hand-over the figures favour: one is ahead on a measure when the mean is past the
    margin and no seed goes the other way (epochs: COMPLETE / PRUNED; best: COMPLETE - PRUNED),
    and it is favoured when it is ahead on one measure and behind on neither."""

    def ahead(values: list[float], level: float, margin: float) -> str | None:
        mean = statistics.mean(values)
        if mean > level + margin and all(v >= level for v in values):
            return "higher"
        if mean < level - margin and all(v <= level for v in values):
            return "lower"
        return None

    fewer_epochs = {"lower": "COMPLETE", "higher": "PRUNED", None: None}[ahead(ratios, 1.0, EPOCH_MARGIN)]
    better_best = {"higher": "COMPLETE", "lower": "PRUNED", None: None}[ahead(best_diffs, 0.0, BEST_MARGIN)]
    sides = {side for side in (fewer_epochs, better_best) if side is not None}
    if not sides:
        return "neither (level: the differences are within the seeds' spread)"
    if len(sides) == 2:
        return "neither outright (one is ahead on epochs, the other on the best)"
    return sides.pop()


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument(
        "--spec", nargs="+", choices=sorted(SPEC_FILES), default=["mlp"], help="the shipped specs to measure"
    )
    p.add_argument("--trials", type=int, help="trials per job (default: mlp 30, cnn 20)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument(
        "--strategies",
        nargs="+",
        choices=list(STRATEGIES),
        default=list(STRATEGIES),
        help=f"which to run ({FIFO} and {PRUNED} always run: the targets compare them)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a spec override for every strategy, as the CLI's --set: scheduler.grace_period=1",
    )
    args = p.parse_args(argv)
    labels = [label for label in STRATEGIES if label in {FIFO, PRUNED, *args.strategies}]
    args.trials_of = {name: args.trials or DEFAULT_TRIALS[name] for name in args.spec}
    args.overrides_of = {name: list(args.overrides) for name in args.spec}
    if args.smoke:
        args.seeds = [0]
        for name in args.spec:
            args.trials_of[name] = 4
            args.overrides_of[name].append(f"search.fixed.epochs={SMOKE_EPOCHS[name]}")
    quiet()

    ok = True
    with workdir(args.workdir) as folder, ray_running(args.cpus):
        for spec_name in args.spec:
            measured: dict[int, dict[str, dict[str, Any]]] = {}
            for seed in args.seeds:
                measured[seed] = {}
                for label in labels:
                    run = run_strategy(
                        spec_name,
                        label,
                        seed,
                        args.trials_of[spec_name],
                        args.overrides_of[spec_name],
                        folder,
                        smoke=args.smoke,
                    )
                    if run is None:
                        return 1
                    measured[seed][label] = run
            ok = report(spec_name, measured, args) and ok
    return 0 if args.smoke or ok else 1


if __name__ == "__main__":
    sys.exit(main())
