"""Tracking overhead: the platform with full MLflow tracking against plain Ray Tune on the same
short trials, and Ray's own MLflowLoggerCallback for comparison.

    python -m benchmarks.overhead            # 60 trials per variant, 3 rounds, SQLite stores
    python -m benchmarks.overhead --server   # the same, tracking to a real `mlflow server` over HTTP
    python -m benchmarks.overhead --server --server-apart   # the server on a core of its own
    python -m benchmarks.overhead --smoke    # 4 trials, 1 round

Each round runs the three variants back to back on one embedded Ray, each with its own SQLite
store (created before the clock starts), or with `--server` each with its own experiment on one
`mlflow server` on 127.0.0.1 (started before the first round); the ratio is the median
platform (or MLflowLoggerCallback) time over the median plain time. It also prints the CPU
seconds each process used while each variant ran (the driver by thread, the trials, Ray, the
server). With `--server-apart` the server runs on the machine's last core and the driver, Ray
and the trials on the others (Linux CPU affinity, inherited by the processes each starts), as
on a cluster whose tracking server has the head node: what the platform costs beyond the
server's own CPU.
Targets: the platform at most 1.15 x plain Ray Tune on SQLite, 1.10 x over HTTP.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from benchmarks.common import (
    SPECS,
    CpuMeter,
    create_store,
    job_request,
    parser,
    quiet,
    ray_running,
    run_plain_tune,
    run_platform,
    same_trials,
    tracking_server,
    verdict,
    workdir,
)

TARGET = 1.15
TARGET_HTTP = 1.10


def trial_settings(trials: int, epochs: int) -> list[str]:
    """The MLP on breast cancer, the same trials in every variant."""
    return [*same_trials(trials), f"search.fixed.epochs={epochs}"]


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=60)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--server", action="store_true", help="track to a real mlflow server over HTTP")
    p.add_argument(
        "--server-apart", action="store_true", help="with --server: the server on the last core, the job on the rest"
    )
    args = p.parse_args(argv)
    args.server |= args.server_apart
    if args.smoke:
        args.trials, args.rounds = 4, 1
    quiet()
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    store_s: list[float] = []
    cpu: dict[str, list[Counter[str]]] = {}
    times: dict[str, list[float]] = {"plain Ray Tune": [], "platform (full MLflow)": [], "MLflowLoggerCallback": []}
    with contextlib.ExitStack() as stack:
        folder = stack.enter_context(workdir(args.workdir))
        if args.server_apart:
            server, args.cpus = stack.enter_context(server_on_a_core_of_its_own(folder))
        else:
            server = stack.enter_context(tracking_server(folder)) if args.server else None
        stack.enter_context(ray_running(args.cpus))
        for round_no in range(args.rounds):
            overrides = trial_settings(args.trials, args.epochs)
            plain = job_request(SPECS / "mlp.yaml", overrides, folder, f"plain-{round_no}")
            with cpu_of(cpu, "plain Ray Tune"):
                _, seconds = run_plain_tune(plain)
            times["plain Ray Tune"].append(seconds)

            request = job_request(SPECS / "mlp.yaml", overrides, folder, f"platform-{round_no}", server)
            store_s.append(create_store(request.tracking_uri))
            with cpu_of(cpu, "platform (full MLflow)"):
                outcome, seconds = run_platform(request)
            if outcome.best is None or len(outcome.rows) != args.trials:
                print("error: the platform job ended without a best trial", file=sys.stderr)
                return 1
            times["platform (full MLflow)"].append(seconds)

            ray_logger = job_request(SPECS / "mlp.yaml", overrides, folder, f"mlflowlogger-{round_no}", server)
            store_s.append(create_store(ray_logger.tracking_uri))
            callback = MLflowLoggerCallback(
                tracking_uri=ray_logger.tracking_uri, experiment_name=f"mlflowlogger-{round_no}"
            )
            with cpu_of(cpu, "MLflowLoggerCallback"):
                _, seconds = run_plain_tune(ray_logger, [callback])
            times["MLflowLoggerCallback"].append(seconds)

    plain_s = statistics.median(times["plain Ray Tune"])
    store = f"mlflow server over HTTP ({server})" if server else "a fresh SQLite store each"
    print(f"\nTracking overhead: {args.trials} trials of {args.epochs} epochs (MLP, breast cancer), {args.cpus} CPUs")
    print(f"Tracking to: {store}")
    print(f"{'variant':<24} {'median wall s':>13} {'x plain':>8}   rounds")
    for variant, values in times.items():
        median = statistics.median(values)
        rounds = ", ".join(f"{v:.1f}" for v in values)
        print(f"{variant:<24} {median:13.1f} {median / plain_s:8.2f}   {rounds}")
    if not server:
        created = statistics.median(store_s)
        print(f"(not counted: creating each fresh SQLite store, once per store, took {created:.1f} s)")
    print_cpu(cpu, args.rounds)
    ratio = statistics.median(times["platform (full MLflow)"]) / plain_s
    label = "platform / plain Ray Tune wall time" + (", over HTTP" if server else "")
    target = TARGET_HTTP if server else TARGET
    ok = verdict(label, ratio, target, at_most=True, unit="x", smoke=args.smoke)
    return 0 if ok or args.smoke else 1


@contextlib.contextmanager
def server_on_a_core_of_its_own(folder: Path) -> Iterator[tuple[str, int]]:
    """A real `mlflow server` on this machine's last core, and this process (so the Ray it
    starts, and the trials) on the others; yields the server's URI and the job's CPUs."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise SystemExit("error: --server-apart needs 2 or more cores")
    os.sched_setaffinity(0, cores[-1:])  # the server's processes inherit it
    try:
        with tracking_server(folder) as uri:
            os.sched_setaffinity(0, cores[:-1])
            print(f"mlflow server on core {cores[-1]}; the driver, Ray and the trials on cores {cores[:-1]}")
            yield uri, len(cores) - 1
    finally:
        os.sched_setaffinity(0, cores)


@contextlib.contextmanager
def cpu_of(cpu: dict[str, list[Counter[str]]], variant: str) -> Iterator[None]:
    """CPU seconds every process of the machine used while a variant ran, by process."""
    meter = CpuMeter()
    meter.start()
    try:
        yield
    finally:
        used = meter.stop()
    cpu.setdefault(variant, []).append(used)


def print_cpu(cpu: dict[str, list[Counter[str]]], rounds: int) -> None:
    """Each variant's CPU seconds by process, the mean of its rounds: what the trials, the
    driver, Ray and (with --server) the tracking server cost on the machine's cores."""
    groups = sorted({name for used in cpu.values() for counts in used for name in counts})
    shown = [name for name in groups if any(sum(c[name] for c in used) / rounds >= 0.05 for used in cpu.values())]
    print("CPU seconds by process while each variant ran (mean of the rounds):")
    print(f"  {'process':<52}" + "".join(f"{variant[:22]:>24}" for variant in cpu))
    for name in [*shown, "all"]:
        values = [sum(sum(c.values()) if name == "all" else c[name] for c in used) / len(used) for used in cpu.values()]
        print(f"  {name:<52}" + "".join(f"{value:>24.1f}" for value in values))


if __name__ == "__main__":
    sys.exit(main())
