"""Search efficiency: Optuna TPE + ASHA against random search + FIFO (no early stopping), with the
same trainable, number of trials and seeds.

    python -m benchmarks.search             # mlp spec, 30 trials, seeds 0 1 2
    python -m benchmarks.search --smoke     # 4 trials, seed 0
    python -m benchmarks.search --set scheduler.grace_period=1   # other ASHA settings

Both run through the platform (spec `search_spaces/mlp.yaml`: the MLP on breast cancer,
val_roc_auc, ASHA grace 3 / reduction 3 up to 20 epochs), only `search.algorithm` and
`scheduler.type` differ. For each seed it prints epochs trained, wall time, the best metric and
the time until each first reached 99% of random+FIFO's final best (from the trial runs' MLflow
histories). Targets, averaged over the seeds: TPE+ASHA trains at most 40% of the epochs, and its
best is no more than 0.005 below random+FIFO's.
"""

from __future__ import annotations

import statistics
import sys
from typing import Any

from benchmarks.common import SPECS, job_request, parser, quiet, ray_running, run_platform, spread, verdict, workdir

TARGET_EPOCH_SHARE = 0.40
TARGET_BEST_GAP = 0.005
STRATEGIES = {"random+FIFO": ("random", "fifo"), "TPE+ASHA": ("optuna", "asha")}


def best_over_time(client: Any, outcome: Any, metric: str) -> list[tuple[float, float]]:
    """(seconds since the job's start, best value so far) at each new best, from MLflow."""
    from tuning_platform.tracking.queries import child_runs

    parent = client.get_run(outcome.parent_run_id)
    points = []
    for run in child_runs(client, outcome.experiment_id, outcome.parent_run_id):
        points += [(m.timestamp, m.value) for m in client.get_metric_history(run.info.run_id, metric)]
    best, curve = float("-inf"), []
    for timestamp, value in sorted(points):
        if value > best:
            best = value
            curve.append(((timestamp - parent.info.start_time) / 1000, value))
    return curve


def time_to_reach(curve: list[tuple[float, float]], level: float) -> float | None:
    return next((seconds for seconds, value in curve if value >= level), None)


# --smoke: enough epochs for ASHA's rungs at 3 and 9 to stop some trials, fewer than the spec's 20.
SMOKE_EPOCHS = 9


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a spec override for both strategies, as the CLI's --set: scheduler.grace_period=1",
    )
    args = p.parse_args(argv)
    if args.smoke:
        args.trials, args.seeds = 4, [0]
        args.overrides = [*args.overrides, f"search.fixed.epochs={SMOKE_EPOCHS}"]
    quiet()
    from tuning_platform.tracking.client import open_client

    measured: dict[int, dict[str, dict[str, Any]]] = {}
    with workdir(args.workdir) as folder, ray_running(args.cpus):
        for seed in args.seeds:
            measured[seed] = {}
            for label, (algorithm, scheduler) in STRATEGIES.items():
                overrides = [
                    f"search.num_samples={args.trials}",
                    f"search.seed={seed}",
                    f"search.algorithm={algorithm}",
                    f"scheduler.type={scheduler}",
                    "tracking.register_model=false",
                    *args.overrides,
                ]
                name = f"search-{algorithm}-{scheduler}-{seed}"
                request = job_request(SPECS / "mlp.yaml", overrides, folder, name)
                outcome, wall_s = run_platform(request)
                if outcome.best is None:
                    print(f"error: {name} ended without a best trial", file=sys.stderr)
                    return 1
                metric = request.spec.metric
                measured[seed][label] = {
                    "epochs": sum(row.epochs for row in outcome.rows),
                    "wall_s": wall_s,
                    "best": outcome.best.value,
                    "curve": best_over_time(open_client(request.tracking_uri), outcome, metric),
                }

    print(f"\nSearch efficiency: MLP on breast cancer, {args.trials} trials, metric {metric} (max), {args.cpus} CPUs")
    if args.overrides:
        print("with " + " ".join(f"--set {item}" for item in args.overrides))
    print(f"{'seed':>4} {'strategy':<12} {'epochs':>6} {'wall s':>7} {'best':>8} {'s to 99% of random best':>24}")
    shares, gaps, speedups = [], [], []
    for seed, runs in measured.items():
        level = 0.99 * runs["random+FIFO"]["best"]
        for label, run in runs.items():
            reached = time_to_reach(run["curve"], level)
            shown = f"{reached:.1f}" if reached is not None else "never"
            print(f"{seed:>4} {label:<12} {run['epochs']:>6} {run['wall_s']:>7.1f} {run['best']:>8.4f} {shown:>24}")
        fifo, asha = runs["random+FIFO"], runs["TPE+ASHA"]
        shares.append(asha["epochs"] / fifo["epochs"])
        gaps.append(fifo["best"] - asha["best"])
        speedups.append(fifo["wall_s"] / asha["wall_s"])
    print(f"TPE+ASHA / random+FIFO epochs: {spread(shares)}; wall time speed-up: {spread(speedups)}x")
    print(f"best gap (random+FIFO minus TPE+ASHA, > 0 means TPE+ASHA is worse): {spread(gaps)}")
    share_ok = verdict(
        "epoch share of TPE+ASHA, mean", statistics.mean(shares), TARGET_EPOCH_SHARE, True, smoke=args.smoke
    )
    gap_ok = verdict("best-metric gap, mean", statistics.mean(gaps), TARGET_BEST_GAP, True, smoke=args.smoke)
    return 0 if args.smoke or (share_ok and gap_ok) else 1


if __name__ == "__main__":
    sys.exit(main())
