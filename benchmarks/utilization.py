"""Slot utilization: how much of the CPU slots' time goes into training, for trials of about
2 seconds of training each.

    python -m benchmarks.utilization              # 120 trials of ~2 s
    python -m benchmarks.utilization --trials 40  # a shorter job: the start-up weighs more
    python -m benchmarks.utilization --trials 40 --rounds 3  # medians of 3 rounds of both
    python -m benchmarks.utilization --smoke      # 4 trials

The job is the platform's, with full tracking: the fraud detector (80,000 training rows) with a
fixed architecture and batch size, so every trial does the same work: 5 epochs of about 0.4 s,
seeded random learning rates, no early stopping, no model registration. In-trial training time
is what the training loop itself measures per epoch (`compute_s`: training and evaluation,
without checkpointing or reporting), read back from the trials' MLflow runs.
Utilization = that sum / (job wall time x concurrent slots). The per-trial overhead is the rest
of the slots' time per trial. The same trials through plain Ray Tune (no tracking, same actor
reuse) run first, as the reference. The machine's speed drifts from one minute to the next,
and a slower minute makes the trials' own training longer, which this figure counts as
utilization: `--rounds N` runs both variants N times, one after the other, and judges medians.
Targets (issue 16): at least plain Ray Tune's figure of the same run, at any number of trials;
and at least 0.90 for a job of 120 trials or more.

A job pays a fixed start-up before its first trial trains (Ray Tune's placement groups, actor
processes importing torch; about 6 s here, for plain Ray Tune as much), then a small cost per
trial. The whole-job figure therefore depends on the number of trials: the default, 120, is a
job long enough that the figure is mostly the per-trial cost. The script prints, for both
variants, the time before the first trial started, the trials (first start to last end) and
after the last trial ended, and the utilization of the trials' span alone.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from benchmarks.common import (
    SPECS,
    create_store,
    job_request,
    parser,
    quiet,
    ray_running,
    run_plain_tune,
    run_platform,
    same_trials,
    trial_clock,
    verdict,
    workdir,
)
from trainables.loop import COMPUTE_TIME_KEY

# A job this long is mostly its per-trial cost; it must keep TARGET of the slots' time training.
LONG_JOB, TARGET = 120, 0.90


@dataclass
class Run:
    """One job of one variant: its clock (time.time()), its trials' clocks, its training time."""

    began: float
    wall_s: float
    starts: list[float]
    ends: list[float]
    training_s: float

    def utilization(self, slots: int) -> float:
        return self.training_s / (self.wall_s * slots)

    def overhead_ms(self, slots: int) -> float:
        """The slots' time that was not training, per trial."""
        return (self.wall_s * slots - self.training_s) / len(self.ends) * 1000

    def phases(self, slots: int) -> tuple[float, float, float, float]:
        """Seconds before the first trial started, of the trials, after the last one ended; the
        utilization of the trials' span alone."""
        trials_s = max(self.ends) - min(self.starts)
        after = self.began + self.wall_s - max(self.ends)
        return min(self.starts) - self.began, trials_s, after, self.training_s / (trials_s * slots)


def trial_settings(trials: int, epochs: int) -> list[str]:
    return [
        *same_trials(trials),
        "search.space={lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}}",
        f"search.fixed={{epochs: {epochs}, batch_size: 256, hidden_size: 64, num_layers: 2, optimizer: adam}}",
    ]


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=120)
    p.add_argument("--epochs", type=int, default=5, help="epochs per trial (5 take about 2 s here)")
    p.add_argument("--rounds", type=int, default=1, help="rounds of both variants, one after the other; medians judged")
    args = p.parse_args(argv)
    if args.smoke:
        args.trials, args.epochs, args.rounds = 4, 2, 1
    quiet()

    settings = trial_settings(args.trials, args.epochs)
    runs: dict[str, list[Run]] = {PLAIN: [], PLATFORM: []}
    with workdir(args.workdir) as folder, ray_running(args.cpus):
        for round_no in range(args.rounds):
            # The same trials through Ray Tune alone first: the ceiling this machine allows.
            runs[PLAIN].append(plain_run(job_request(SPECS / "fraud.yaml", settings, folder, f"plain-{round_no}")))
            request = job_request(SPECS / "fraud.yaml", settings, folder, f"platform-{round_no}")
            platform = platform_run(request, args.trials)
            if platform is None:
                return 1
            runs[PLATFORM].append(platform)
    slots = args.cpus // int(request.spec.resources.cpu)
    print(
        f"\nSlot utilization: {args.trials} trials x {args.epochs} epochs (fraud MLP), "
        f"{slots} slots on {args.cpus} CPUs, {args.rounds} round(s)"
    )
    print(f"{'':<16} {'wall s':>7} {'training s':>10} {'utilization':>11} {'overhead ms/trial':>17}")
    for name, run in in_rounds(runs):
        print(
            f"{name:<16} {run.wall_s:7.1f} {run.training_s:10.1f} {run.utilization(slots):11.3f} "
            f"{run.overhead_ms(slots):17.0f}"
        )
    # Where each job's wall time went. The platform's trial clocks are its child runs' (the
    # trial callback's times), plain Ray Tune's those of a Tune callback.
    print(f"{'phases, s':<16} {'to 1st trial':>12} {'trials':>7} {'after last':>10} {'utilization of the trials':>26}")
    for name, run in in_rounds(runs):
        before, trials_s, after, of_trials = run.phases(slots)
        print(f"{name:<16} {before:12.1f} {trials_s:7.1f} {after:10.1f} {of_trials:26.3f}")
    utilization = statistics.median(run.utilization(slots) for run in runs[PLATFORM])
    plain_utilization = statistics.median(run.utilization(slots) for run in runs[PLAIN])
    judged = "median " if args.rounds > 1 else ""
    ok = verdict(
        f"{judged}slot utilization, against plain Ray Tune's",
        utilization,
        round(plain_utilization, 3),
        at_most=False,
        smoke=args.smoke,
    )
    if args.trials >= LONG_JOB:
        ok &= verdict(f"{judged}slot utilization of {LONG_JOB} trials or more", utilization, TARGET, at_most=False)
    return 0 if ok or args.smoke else 1


PLATFORM, PLAIN = "platform", "plain Ray Tune"


def in_rounds(runs: dict[str, list[Run]]) -> Iterator[tuple[str, Run]]:
    """Each round's runs, the platform's first: the order of the printed rows."""
    for pair in zip(runs[PLATFORM], runs[PLAIN], strict=True):
        yield from zip((PLATFORM, PLAIN), pair, strict=True)


def plain_run(request: Any) -> Run:
    clock = trial_clock()
    began = time.time()
    results, wall_s = run_plain_tune(request, [clock])
    training_s = sum(float(r.metrics_dataframe[COMPUTE_TIME_KEY].sum()) for r in results)
    return Run(began, wall_s, clock.starts, clock.ends, training_s)


def platform_run(request: Any, trials: int) -> Run | None:
    """The platform's job; its training time read back from the trial runs in MLflow."""
    from tuning_platform.tracking.client import open_client
    from tuning_platform.tracking.queries import child_runs, metric_histories

    create_store(request.tracking_uri)
    began = time.time()
    outcome, wall_s = run_platform(request)
    client = open_client(request.tracking_uri)
    runs = child_runs(client, outcome.experiment_id, outcome.parent_run_id)
    histories = metric_histories(client, [run.info.run_id for run in runs], COMPUTE_TIME_KEY)
    per_trial = [sum(m.value for m in history) for history in histories.values()]
    if outcome.best is None or len(per_trial) != trials:
        print(f"error: the job ended without a best trial and {len(per_trial)} trial runs", file=sys.stderr)
        return None
    starts, ends = [r.info.start_time / 1000 for r in runs], [r.info.end_time / 1000 for r in runs]
    return Run(began, wall_s, starts, ends, sum(per_trial))


if __name__ == "__main__":
    sys.exit(main())
