"""Several objectives: MO-ASHA with MO-TPE against random search with FIFO and against ASHA on a
weighted sum, trading a shipped trainable's accuracy against its cost; hypervolume against
epochs spent.

    python -m benchmarks.multiobjective                    # mlp spec: val_roc_auc against params
    python -m benchmarks.multiobjective --spec cnn         # cnn spec: val_accuracy against params
    python -m benchmarks.multiobjective --cost latency_ms  # the measured (noisy) forward-pass time
    python -m benchmarks.multiobjective --smoke            # mlp, 4 trials of 4 epochs, seed 0

A shipped spec (`search_spaces/mlp.yaml`: the MLP on breast cancer, up to 20 epochs, ASHA grace
3 / reduction 3; `cnn.yaml`: the CNN on digits, up to 12 epochs, grace 2 / reduction 3) with its
one metric replaced, three strategies per seed, each `--trials` trials (default 30):
- MO-ASHA: `objectives: [QUALITY max, COST min]`, Optuna's multi-objective TPE, `scheduler:
  asha` (the platform's multi-objective ASHA);
- random+FIFO: the same objectives, seeded random search, every trial to its last epoch;
- weighted sum: one metric, `weighted_score = QUALITY - w * COST / P`, TPE and Ray's ASHA, the
  scalarization Ray's maintainers suggest for several objectives. P is COST of the largest
  model of the space (each searched number at its high end, built and measured here), so the
  largest model costs `w` of QUALITY. The trainable is `benchmarks.workloads:weighted`, the
  built-in trial with that metric added to each report.

For each job the trials are read back from MLflow (`search.study.recorded_trials`), ordered by
when they ended, and after each one the hypervolume of the (QUALITY, COST) points of the trials
ended so far (their last values, as the platform's front takes them; a trial that failed or
diverged adds its epochs and no point) is taken against the epochs spent so far (every ended
trial's epochs). One reference point for every strategy and seed, near the best trade-offs
found: each objective's worst value on the front of every trial of the run pooled, minus 10% of
that objective's range over all the trials. A model worse than that on one objective adds
nothing, so the volume measures how much of the best region a job covered. The platform's own
rule for a job's hypervolume (`pareto.reference_point`: the worst value of every trial, minus
10% of the range) is set by the worst trial, a model stopped at its first rung with a
near-chance score; the box is then so tall that any search finding one accurate small model
covers nearly all of it. The script prints the figures against that reference, and against (a
guessing model's quality, the largest model's cost), as well, not judged. Hypervolumes are
printed as a share of the hypervolume of every trial of the run pooled (1: as good as all the
run's jobs together).

Targets (issue 30), averaged over the seeds: MO-ASHA reaches 99% of random+FIFO's final
hypervolume (the same seed's) within 40% of random+FIFO's epochs; and at equal epochs (the
smaller of the two jobs' totals) MO-ASHA's hypervolume is above the weighted sum's.
"""

from __future__ import annotations

import math
import statistics
import sys
from dataclasses import dataclass
from typing import Any

from benchmarks.common import SPECS, job_request, parser, quiet, ray_running, run_platform, spread, verdict, workdir

TARGET_EPOCH_SHARE = 0.40
TARGET_HYPERVOLUME_RATIO = 1.0
LEVEL = 0.99
MO_ASHA, RANDOM, WEIGHTED = "MO-ASHA", "random+FIFO", "weighted sum"
JOB_NAMES = {MO_ASHA: "asha", RANDOM: "random", WEIGHTED: "weighted"}
# name: (spec file, quality metric (max), what it is)
SPEC_FILES = {
    "mlp": ("mlp.yaml", "val_roc_auc", "MLP on breast cancer"),
    "cnn": ("cnn.yaml", "val_accuracy", "CNN on digits"),
}
COSTS = ("params", "size_mb", "latency_ms")
# The quality of a model that guesses: ROC AUC 0.5; accuracy 0.1 over the digits' 10 classes.
CHANCE = {"mlp": 0.5, "cnn": 0.1}
DEFAULT_WEIGHT = 0.02
# --smoke: rungs at 1 and 3 of 4 epochs, so ASHA stops some of 4 trials.
SMOKE = ["search.fixed.epochs=4", "scheduler.grace_period=1"]
# Where the hypervolume is shown as epochs go by: shares of random+FIFO's total epochs.
MARKS = (0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0)

Point = tuple[float, float]  # (quality, cost), each in its own sign


@dataclass
class Ended:
    """One trial of a job as MLflow recorded it: when it ended, its epochs, its point (None: it
    failed or diverged, or lacks an objective)."""

    end_ms: int
    epochs: int
    point: Point | None


def strategies(spec_name: str, cost: str, weight: float, scale: float) -> dict[str, list[str]]:
    """Each strategy's spec overrides on top of the shipped spec."""
    from benchmarks.workloads import WEIGHTED_METRIC

    quality = SPEC_FILES[spec_name][1]
    objectives = f"objectives=[{{metric: {quality}, mode: max}}, {{metric: {cost}, mode: min}}]"
    return {
        MO_ASHA: ["metric=", "mode=", objectives, "search.algorithm=optuna", "scheduler.type=asha"],
        RANDOM: ["metric=", "mode=", objectives, "search.algorithm=random", "scheduler.type=fifo"],
        WEIGHTED: [
            "trainable=benchmarks.workloads:weighted",
            f"metric={WEIGHTED_METRIC}",
            "mode=max",
            "search.algorithm=optuna",
            "scheduler.type=asha",
            f"search.fixed.base_trainable={spec_name}",
            f"search.fixed.quality_metric={quality}",
            f"search.fixed.cost_metric={cost}",
            f"search.fixed.cost_weight={weight}",
            f"search.fixed.cost_scale={scale!r}",
        ],
    }


def largest_cost(spec_name: str, overrides: list[str], cost: str) -> float:
    """COST of the largest model of the spec's space: every searched number at its high end
    (hidden_size and num_layers of the mlp, channels of the cnn; the rates and dropout do not
    change a model's size), every choice at its first value, the fixed values as they are. Built
    here on the spec's data: its parameters, its saved size, or its forward pass timed on one
    thread (what a trial of `cpu: 1` has) as the trainable times it."""
    import torch

    from trainables import builtin
    from trainables.cost import LATENCY_ROWS, forward_latency_ms, parameter_count, state_dict_mb
    from tuning_platform.spec.load import load_spec

    spec, _, _ = load_spec(str(SPECS / SPEC_FILES[spec_name][0]), overrides)
    config = dict(spec.search.fixed)
    for param, domain in spec.search.space.items():
        config[param] = domain.high if hasattr(domain, "high") else domain.values[0]
    module = builtin(spec_name)
    data = module.load_data(dict(spec.data))
    model = module.build_model(config, data.info)
    if cost == "params":
        return float(parameter_count(model))
    if cost == "size_mb":
        return state_dict_mb(model)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return forward_latency_ms(model, data.x_val[:LATENCY_ROWS])
    finally:
        torch.set_num_threads(threads)


def ended_trials(request: Any, outcome: Any, quality: str, cost: str) -> list[Ended]:
    """The job's trials from MLflow, in the order they ended."""
    from tuning_platform.records import LEARNED_FROM
    from tuning_platform.search.study import recorded_trials
    from tuning_platform.tracking.client import open_client

    client = open_client(request.tracking_uri)
    trials = recorded_trials(client, outcome.experiment_id, outcome.parent_run_id, quality, also=[cost, "epoch"])
    ended = []
    for trial in trials:
        epochs = int(trial.finals.get("epoch", trial.history[-1][0] if trial.history else 0))
        value, price = trial.last_value, trial.finals.get(cost)
        point = None
        if trial.status in LEARNED_FROM and value is not None and price is not None:
            point = (float(value), float(price))
        ended.append(Ended(trial.end_ms or 0, epochs, point))
    return sorted(ended, key=lambda e: e.end_ms)


def signed(point: Point) -> Point:
    """Larger is better on both: the quality as it is, the cost negated."""
    return point[0], -point[1]


def front(points: list[Point]) -> list[Point]:
    """The non-dominated points."""
    from tuning_platform.pareto import nondominated_ranks

    ranks = nondominated_ranks([signed(p) for p in points])
    return [p for p, rank in zip(points, ranks, strict=True) if rank == 1]


def volume(points: list[Point], reference: Point) -> float:
    from tuning_platform.pareto import hypervolume

    return hypervolume([signed(p) for p in points], signed(reference)) if points else 0.0


def curve(trials: list[Ended], reference: Point) -> list[tuple[int, float]]:
    """(epochs spent, hypervolume of the points so far) after each trial ended, from (0, 0)."""
    spent, points, out = 0, [], [(0, 0.0)]
    for trial in trials:
        spent += trial.epochs
        if trial.point is not None:
            points.append(trial.point)
        out.append((spent, volume(points, reference)))
    return out


def at_epochs(steps: list[tuple[int, float]], epochs: float) -> float:
    """The hypervolume of the trials that had ended when `epochs` were spent."""
    return max((value for spent, value in steps if spent <= epochs), default=0.0)


def epochs_to(steps: list[tuple[int, float]], level: float) -> int | None:
    return next((spent for spent, value in steps if value >= level), None)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--spec", choices=sorted(SPEC_FILES), default="mlp", help="the shipped spec (default mlp)")
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--cost", choices=COSTS, default="params", help="the cost objective (default params)")
    p.add_argument(
        "--weight",
        type=float,
        default=DEFAULT_WEIGHT,
        help=f"w of the weighted sum: what the largest model costs in the quality metric (default {DEFAULT_WEIGHT})",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a spec override for every strategy, as the CLI's --set: search.fixed.epochs=12",
    )
    args = p.parse_args(argv)
    if args.smoke:
        args.trials, args.seeds = 4, [0]
        args.overrides = [*SMOKE, *args.overrides]
    quiet()
    spec_file, quality, _ = SPEC_FILES[args.spec]
    common = [f"search.num_samples={args.trials}", "tracking.register_model=false", *args.overrides]

    jobs: dict[int, dict[str, dict[str, Any]]] = {}
    with workdir(args.workdir) as folder, ray_running(args.cpus):
        args.scale = largest_cost(args.spec, args.overrides, args.cost)
        plan = strategies(args.spec, args.cost, args.weight, args.scale)
        for seed in args.seeds:
            jobs[seed] = {}
            for label, overrides in plan.items():
                name = f"mo-{args.spec}-{JOB_NAMES[label]}-{args.cost}-{seed}"
                request = job_request(SPECS / spec_file, [*common, f"search.seed={seed}", *overrides], folder, name)
                outcome, wall_s = run_platform(request)
                trials = ended_trials(request, outcome, quality, args.cost)
                if not any(t.point for t in trials):
                    print(f"error: {name} recorded no trial with both {quality} and {args.cost}", file=sys.stderr)
                    return 1
                jobs[seed][label] = {"trials": trials, "wall_s": wall_s}

    for runs in jobs.values():
        for job in runs.values():
            job["front"] = front([t.point for t in job["trials"] if t.point])
            job["epochs"] = sum(t.epochs for t in job["trials"])
    # Every job's front pooled (a job's points that no point of the same job dominates).
    pooled = sorted({point for runs in jobs.values() for job in runs.values() for point in job["front"]})
    every = [t.point for runs in jobs.values() for job in runs.values() for t in job["trials"] if t.point]
    references = {
        "the front of every trial of the run pooled": near_front(every),
        "every trial's point, the platform's own rule for a job's hypervolume": reference_of(every),
        "a guessing model's quality and the largest model's cost": (
            CHANCE[args.spec],
            args.scale,
        ),
    }
    return report(jobs, args, quality, references, len(every), pooled)


def near_front(points: list[Point]) -> Point:
    """The reference point of the judged figures: each objective's worst value on the front of the
    points, minus 10% of that objective's range over all of them (1 where every point has the
    same value). Only the trade-offs near the best ones found count, whatever the worst trial
    was, and a front of one point (the mlp's: the smallest model at ROC AUC 1.0) still leaves a
    box."""
    best = front(points)
    quality_span = max(q for q, _ in points) - min(q for q, _ in points)
    cost_span = max(c for _, c in points) - min(c for _, c in points)
    return (
        min(q for q, _ in best) - (0.1 * quality_span if quality_span > 0 else 1.0),
        max(c for _, c in best) + (0.1 * cost_span if cost_span > 0 else 1.0),
    )


def reference_of(points: list[Point]) -> Point:
    """The platform's reference rule (`pareto.reference_point`) over the points, in their own signs."""
    from tuning_platform.pareto import reference_point

    quality, cost = reference_point([signed(point) for point in points])
    return quality, -cost


def judged(jobs: dict[int, dict[str, dict[str, Any]]], reference: Point, pooled: list[Point]) -> dict[str, Any]:
    """Each job's hypervolume curve against the reference (a share of the pooled fronts'), and per
    seed: random+FIFO's final hypervolume, the epochs MO-ASHA spent until 99% of it (None: never)
    and their share of random+FIFO's epochs, and MO-ASHA's and the weighted sum's hypervolumes at
    equal epochs."""
    whole = volume(pooled, reference)
    curves = {
        (seed, label): [(spent, value / whole) for spent, value in curve(job["trials"], reference)]
        for seed, runs in jobs.items()
        for label, job in runs.items()
    }
    seeds = []
    for seed, runs in jobs.items():
        final = curves[seed, RANDOM][-1][1]
        needed = epochs_to(curves[seed, MO_ASHA], LEVEL * final)
        equal = min(runs[MO_ASHA]["epochs"], runs[WEIGHTED]["epochs"])
        mine, theirs = at_epochs(curves[seed, MO_ASHA], equal), at_epochs(curves[seed, WEIGHTED], equal)
        seeds.append(
            {
                "seed": seed,
                "final": final,
                "needed": needed,
                "share": needed / runs[RANDOM]["epochs"] if needed is not None else math.inf,
                "equal": equal,
                "mine": mine,
                "theirs": theirs,
                "ratio": mine / theirs if theirs > 0 else math.inf,
            }
        )
    return {"curves": curves, "seeds": seeds}


def report(
    jobs: dict[int, dict[str, dict[str, Any]]],
    args: Any,
    quality: str,
    references: dict[str, Point],
    count: int,
    pooled: list[Point],
) -> int:
    cost = args.cost
    print(
        f"\nSeveral objectives: {SPEC_FILES[args.spec][2]}, {quality} (max) against {cost} (min), "
        f"{args.trials} trials a job, {args.cpus} CPUs"
    )
    if args.overrides:
        print("with " + " ".join(f"--set {item}" for item in args.overrides))
    print(
        f"weighted sum: {quality} - {args.weight:g} * {cost} / {args.scale:.6g} ({cost} of the largest model of "
        "the space)"
    )
    (rule, reference), *others = references.items()
    print(
        f"reference point (all strategies and seeds): {quality} {reference[0]:.4f}, {cost} {reference[1]:.6g} "
        f"(each objective's worst value on {rule}, minus 10% of its range over all {count} points)"
    )
    print("hypervolume: a share of that of every trial of the run pooled")
    main_figures = judged(jobs, reference, pooled)
    curves = main_figures["curves"]
    print(f"{'seed':>4} {'strategy':<13} {'trials':>6} {'epochs':>6} {'wall s':>7} {'hypervolume':>11}  front")
    for seed, runs in jobs.items():
        for label, job in runs.items():
            shown = " ".join(f"({q:.4f}, {c:.6g})" for q, c in sorted(set(job["front"]), reverse=True))
            print(
                f"{seed:>4} {label:<13} {len(job['trials']):>6} {job['epochs']:>6} {job['wall_s']:>7.1f} "
                f"{curves[seed, label][-1][1]:>11.4f}  {shown}"
            )

    print("hypervolume at epochs spent (a share of random+FIFO's epochs), mean over the seeds:")
    print(f"     {'strategy':<13} " + " ".join(f"{f'{mark:.0%}':>6}" for mark in MARKS))
    for label in (MO_ASHA, WEIGHTED, RANDOM):
        values = [
            statistics.mean(
                at_epochs(curves[seed, label], mark * runs[RANDOM]["epochs"]) for seed, runs in jobs.items()
            )
            for mark in MARKS
        ]
        print(f"     {label:<13} " + " ".join(f"{value:>6.4f}" for value in values))

    print(f"per seed: the epochs MO-ASHA spent until {LEVEL:.0%} of random+FIFO's final hypervolume; at equal epochs:")
    for figures in main_figures["seeds"]:
        mo_final = curves[figures["seed"], MO_ASHA][-1][1]
        epochs = jobs[figures["seed"]][RANDOM]["epochs"]
        reached = (
            f"reached {LEVEL:.0%} of it after {figures['needed']} of {epochs} epochs ({figures['share']:.1%})"
            if figures["needed"] is not None
            else f"never reached {LEVEL:.0%} of it (its final {mo_final:.4f} is {mo_final / figures['final']:.1%})"
        )
        print(
            f"  seed {figures['seed']}: random+FIFO final {figures['final']:.4f}; MO-ASHA {reached}; at "
            f"{figures['equal']} epochs MO-ASHA {figures['mine']:.4f}, weighted sum {figures['theirs']:.4f} "
            f"({figures['ratio']:.3f}x)"
        )
    print(f"random+FIFO final hypervolume: {spread([f['final'] for f in main_figures['seeds']])}")
    print("the same against other reference points (not judged):")
    for rule, other in others:
        figures = judged(jobs, other, pooled)["seeds"]
        print(
            f"  {rule} ({quality} {other[0]:.4f}, {cost} {other[1]:.6g}): MO-ASHA's epochs to {LEVEL:.0%} of "
            f"random+FIFO's final, share {spread([f['share'] for f in figures])}; MO-ASHA / weighted sum at equal "
            f"epochs {spread([f['ratio'] for f in figures])}x"
        )
    share_ok = verdict(
        f"MO-ASHA's epochs to {LEVEL:.0%} of random+FIFO's final hypervolume, share of its epochs, mean",
        statistics.mean(f["share"] for f in main_figures["seeds"]),
        TARGET_EPOCH_SHARE,
        True,
        smoke=args.smoke,
    )
    ratio_ok = verdict(
        "hypervolume MO-ASHA / weighted sum at equal epochs, mean",
        statistics.mean(f["ratio"] for f in main_figures["seeds"]),
        TARGET_HYPERVOLUME_RATIO,
        False,
        unit="x",
        smoke=args.smoke,
    )
    return 0 if args.smoke or (share_ok and ratio_ok) else 1


if __name__ == "__main__":
    sys.exit(main())
