"""Slot utilization: how much of the CPU slots' time goes into training, for trials of about
2 seconds of training each.

    python -m benchmarks.utilization            # 20 trials of ~2 s
    python -m benchmarks.utilization --smoke    # 4 trials

The job is the platform's, with full tracking: the MLP with a fixed architecture (so every trial
does the same work), 30 epochs, seeded random learning rates, no early stopping, no model
registration. In-trial training time is what the training loop itself measures per epoch
(`compute_s`: training and evaluation, without checkpointing or reporting), read back from
the trials' MLflow runs. Utilization = that sum / (job wall time x concurrent slots).
Target: at least 0.85. The per-trial overhead is the rest of the slots' time per trial.
"""

from __future__ import annotations

import sys

from benchmarks.common import SPECS, job_request, parser, quiet, ray_running, run_platform, verdict, workdir
from trainables.loop import COMPUTE_TIME_KEY

TARGET = 0.85


def trial_settings(trials: int, epochs: int) -> list[str]:
    return [
        f"search.num_samples={trials}",
        "search.algorithm=random",
        "search.space={lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}}",
        f"search.fixed={{epochs: {epochs}, batch_size: 16, hidden_size: 256, num_layers: 3, optimizer: adam}}",
        "scheduler.type=fifo",
        "tracking.register_model=false",
    ]


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--epochs", type=int, default=30, help="epochs per trial (30 take about 2 s here)")
    args = p.parse_args(argv)
    if args.smoke:
        args.trials = 4
    quiet()
    from platform.tracking import child_runs, open_client

    with workdir(args.workdir) as folder, ray_running(args.cpus):
        request = job_request(SPECS / "mlp.yaml", trial_settings(args.trials, args.epochs), folder, "utilization")
        outcome, wall_s = run_platform(request)
        client = open_client(request.tracking_uri)
        runs = child_runs(client, outcome.experiment_id, outcome.parent_run_id)
        per_trial = [sum(m.value for m in client.get_metric_history(run.info.run_id, COMPUTE_TIME_KEY)) for run in runs]
    if outcome.exit_code != 0 or len(per_trial) != args.trials:
        print(f"error: the job ended with exit {outcome.exit_code} and {len(per_trial)} trial runs", file=sys.stderr)
        return 1
    slots = args.cpus // int(request.spec.resources.cpu)
    training_s = sum(per_trial)
    utilization = training_s / (wall_s * slots)
    overhead_ms = (wall_s * slots - training_s) / len(per_trial) * 1000
    print(f"\nSlot utilization: {args.trials} trials x {args.epochs} epochs (MLP), {slots} slots on {args.cpus} CPUs")
    print(
        f"training per trial: {training_s / len(per_trial):.2f} s (min {min(per_trial):.2f}, max {max(per_trial):.2f})"
    )
    print(f"job wall time: {wall_s:.1f} s; training {training_s:.1f} s of {wall_s * slots:.1f} slot-seconds")
    print(f"per-trial overhead: {overhead_ms:.0f} ms")
    ok = verdict("slot utilization", utilization, TARGET, at_most=False, smoke=args.smoke)
    return 0 if ok or args.smoke else 1


if __name__ == "__main__":
    sys.exit(main())
