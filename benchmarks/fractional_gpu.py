"""Fractional GPUs: the CNN with `resources.gpu: 1` (one trial per GPU) against `gpu: 0.25`
(four trials share one GPU), in trials per hour.

    python -m benchmarks.fractional_gpu            # 16 trials of 10 epochs per setting
    python -m benchmarks.fractional_gpu --smoke    # 4 trials of 2 epochs

Needs a CUDA GPU; elsewhere it prints `skipped: no GPU` and exits 0. Both settings run the
platform's cnn spec (digits), seeded random search, no early stopping, no registration, on all
of the machine's CPUs (four trials at once need four). Target: gpu 0.25 at least 2.5 x the
trials per hour of gpu 1.
"""

from __future__ import annotations

import os
import sys

from benchmarks.common import (
    SPECS,
    job_request,
    parser,
    quiet,
    ray_running,
    run_platform,
    same_trials,
    verdict,
    workdir,
)

TARGET = 2.5


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.set_defaults(cpus=os.cpu_count() or 1)
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--epochs", type=int, default=10)
    args = p.parse_args(argv)
    if args.smoke:
        args.trials, args.epochs = 4, 2
    import torch

    if not torch.cuda.is_available():
        print("skipped: no GPU")
        return 0
    quiet()
    per_hour: dict[float, float] = {}
    with workdir(args.workdir) as folder, ray_running(args.cpus):
        for gpu in (1.0, 0.25):
            overrides = [
                *same_trials(args.trials),
                "search.max_concurrent=null",
                f"search.fixed.epochs={args.epochs}",
                f"resources.gpu={gpu}",
                "resources.cpu=1",
            ]
            request = job_request(SPECS / "cnn.yaml", overrides, folder, f"gpu-{gpu}")
            outcome, wall_s = run_platform(request)
            if outcome.best is None:
                print(f"error: the gpu={gpu} job ended without a best trial", file=sys.stderr)
                return 1
            per_hour[gpu] = len(outcome.rows) / wall_s * 3600
    print(f"\nFractional GPU: {args.trials} CNN trials x {args.epochs} epochs, {torch.cuda.get_device_name(0)}")
    for gpu, rate in per_hour.items():
        print(f"gpu {gpu:g} per trial: {rate:.0f} trials per hour")
    ok = verdict("throughput gpu 0.25 / gpu 1", per_hour[0.25] / per_hour[1.0], TARGET, False, "x", smoke=args.smoke)
    return 0 if ok or args.smoke else 1


if __name__ == "__main__":
    sys.exit(main())
