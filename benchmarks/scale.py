"""Scale: 1,000 trials of a trivial trainable through the full platform on one machine.

    python -m benchmarks.scale             # 1,000 trials
    python -m benchmarks.scale --smoke     # 40 trials

This process is the job's driver (the same code `python -m platform.tune` runs). It prints
trials per minute, the driver's peak memory, and checks that MLflow holds exactly one child run
per trial. Targets: at least 300 trials per minute on 2 CPUs, driver peak memory under 1.5 GiB.
"""

from __future__ import annotations

import resource
import sys
from collections import Counter
from pathlib import Path

from benchmarks.common import job_request, parser, quiet, ray_running, run_platform, verdict, workdir

SPEC = Path(__file__).resolve().parent / "specs" / "trivial.yaml"
TARGET_PER_MINUTE = 300
TARGET_MEMORY_GIB = 1.5


def peak_rss_gib() -> float:
    """This process's peak resident memory (VmHWM on Linux, ru_maxrss elsewhere)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=1000)
    args = p.parse_args(argv)
    if args.smoke:
        args.trials = 40
    quiet()
    from tuning_platform.tracking import child_runs, open_client

    with workdir(args.workdir) as folder, ray_running(args.cpus):
        request = job_request(SPEC, [f"search.num_samples={args.trials}"], folder, "scale")
        outcome, seconds = run_platform(request)
        client = open_client(request.tracking_uri)
        runs = child_runs(client, outcome.experiment_id, outcome.parent_run_id)
    peak = peak_rss_gib()

    per_trial = Counter(run.data.tags.get("trial_id") for run in runs)
    trial_ids = {row.trial_id for row in outcome.rows}
    one_each = set(per_trial) == trial_ids and all(count == 1 for count in per_trial.values())
    finished = sum(run.info.status == "FINISHED" for run in runs)
    print(f"\nScale: {args.trials} trivial trials, full platform (Optuna TPE, MLflow), {args.cpus} CPUs")
    print(f"best trial: {outcome.best_trial_id}; {len(outcome.rows)} trials in {seconds:.1f} s")
    print(
        f"MLflow: {len(runs)} child runs for {len(trial_ids)} trials, {finished} FINISHED, most per trial: "
        f"{max(per_trial.values(), default=0)}"
    )
    print(f"driver peak memory {peak:.2f} GiB")
    complete = outcome.best is not None and len(outcome.rows) == args.trials and one_each and finished == args.trials
    print(f"{'PASS' if complete else 'FALLS SHORT'}: every trial completed with exactly one FINISHED child run")
    rate_ok = verdict(
        "trials per minute", len(outcome.rows) / seconds * 60, TARGET_PER_MINUTE, at_most=False, smoke=args.smoke
    )
    memory_ok = verdict("driver peak memory", peak, TARGET_MEMORY_GIB, at_most=True, unit=" GiB", smoke=args.smoke)
    return 0 if complete and (args.smoke or (rate_ok and memory_ok)) else 1


if __name__ == "__main__":
    sys.exit(main())
