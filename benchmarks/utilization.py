"""Slot utilization: how much of the CPU slots' time goes into training, for trials of about
2 seconds of training each.

    python -m benchmarks.utilization              # 120 trials of ~2 s
    python -m benchmarks.utilization --trials 40  # a shorter job: the start-up weighs more
    python -m benchmarks.utilization --smoke      # 4 trials

The job is the platform's, with full tracking: the fraud detector (80,000 training rows) with a
fixed architecture and batch size, so every trial does the same work: 5 epochs of about 0.4 s,
seeded random learning rates, no early stopping, no model registration. In-trial training time
is what the training loop itself measures per epoch (`compute_s`: training and evaluation,
without checkpointing or reporting), read back from the trials' MLflow runs.
Utilization = that sum / (job wall time x concurrent slots). The per-trial overhead is the rest
of the slots' time per trial. The same trials through plain Ray Tune (no tracking, same actor
reuse) run first, as the reference.
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

import sys
import time

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
    args = p.parse_args(argv)
    if args.smoke:
        args.trials, args.epochs = 4, 2
    quiet()
    from tuning_platform.tracking import child_runs, open_client

    settings = trial_settings(args.trials, args.epochs)
    with workdir(args.workdir) as folder, ray_running(args.cpus):
        # The same trials through Ray Tune alone first: the ceiling this machine allows.
        plain = job_request(SPECS / "fraud.yaml", settings, folder, "utilization-plain")
        clock = trial_clock()
        plain_started = time.time()
        results, plain_wall_s = run_plain_tune(plain, [clock])
        plain_training_s = sum(float(r.metrics_dataframe[COMPUTE_TIME_KEY].sum()) for r in results)

        request = job_request(SPECS / "fraud.yaml", settings, folder, "utilization")
        create_store(request.tracking_uri)
        started = time.time()
        outcome, wall_s = run_platform(request)
        client = open_client(request.tracking_uri)
        runs = child_runs(client, outcome.experiment_id, outcome.parent_run_id)
        per_trial = [sum(m.value for m in client.get_metric_history(run.info.run_id, COMPUTE_TIME_KEY)) for run in runs]
    if outcome.best is None or len(per_trial) != args.trials:
        print(f"error: the job ended without a best trial and {len(per_trial)} trial runs", file=sys.stderr)
        return 1
    slots = args.cpus // int(request.spec.resources.cpu)
    training_s = sum(per_trial)
    utilization = training_s / (wall_s * slots)
    overhead_ms = (wall_s * slots - training_s) / len(per_trial) * 1000
    plain_utilization = plain_training_s / (plain_wall_s * slots)
    plain_overhead_ms = (plain_wall_s * slots - plain_training_s) / args.trials * 1000
    print(
        f"\nSlot utilization: {args.trials} trials x {args.epochs} epochs (fraud MLP), "
        f"{slots} slots on {args.cpus} CPUs"
    )
    print(f"{'':<16} {'wall s':>7} {'training s':>10} {'utilization':>11} {'overhead ms/trial':>17}")
    print(f"{'platform':<16} {wall_s:7.1f} {training_s:10.1f} {utilization:11.3f} {overhead_ms:17.0f}")
    print(
        f"{'plain Ray Tune':<16} {plain_wall_s:7.1f} {plain_training_s:10.1f} {plain_utilization:11.3f} "
        f"{plain_overhead_ms:17.0f}"
    )
    print(
        f"platform training per trial: {training_s / len(per_trial):.2f} s "
        f"(min {min(per_trial):.2f}, max {max(per_trial):.2f})"
    )
    # Where each job's wall time went: before its first trial started, the trials, after the
    # last one ended. The platform's trial clocks are its child runs' (the trial callback's
    # times), plain Ray Tune's those of a Tune callback.
    run_starts, run_ends = [r.info.start_time / 1000 for r in runs], [r.info.end_time / 1000 for r in runs]
    phases = {
        "platform": (started, run_starts, run_ends, wall_s, training_s),
        "plain Ray Tune": (plain_started, clock.starts, clock.ends, plain_wall_s, plain_training_s),
    }
    print(f"{'phases, s':<16} {'to 1st trial':>12} {'trials':>7} {'after last':>10} {'utilization of the trials':>26}")
    for name, (began, starts, ends, wall, trained) in phases.items():
        trials_s = max(ends) - min(starts)
        print(
            f"{name:<16} {min(starts) - began:12.1f} {trials_s:7.1f} {began + wall - max(ends):10.1f} "
            f"{trained / (trials_s * slots):26.3f}"
        )
    ok = verdict(
        "slot utilization, against plain Ray Tune's",
        utilization,
        round(plain_utilization, 3),
        at_most=False,
        smoke=args.smoke,
    )
    if args.trials >= LONG_JOB:
        ok &= verdict(f"slot utilization of {LONG_JOB} trials or more", utilization, TARGET, at_most=False)
    return 0 if ok or args.smoke else 1


if __name__ == "__main__":
    sys.exit(main())
