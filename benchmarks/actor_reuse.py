"""Actor reuse with short trials: Tune's own against the platform's `starting_actors_kept`.

    python -m benchmarks.actor_reuse                      # 600 trials at 1 and at 0.25 CPU each
    python -m benchmarks.actor_reuse --cpu-per-trial 0.5  # one share
    python -m benchmarks.actor_reuse --smoke              # 40 trials

A bare Tune job (no platform, no tracking) of trials that report once, in a few milliseconds,
and say which process ran them; random search, as many at once as the CPU share allows
(`BasicVariantGenerator(max_concurrent=...)`), actors reused. Each share runs twice on one
embedded Ray: with Tune's reuse as Ray ships it, then inside `_compat/ray.starting_actors_kept`
as a platform job runs it. For each it prints the trials a minute (first trial's end to the
last's), the processes that ran trials, and the actors Ray started for the job. Ray alone swaps
a staged trial onto the first freed actor and kills the one starting for it, so short trials
ran one at a time on one actor whatever the share allowed.
Targets, each share: the platform's rate at least Tune's own; as many processes ran trials as
trials fit at once.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from benchmarks.common import parser, quiet, ray_running, verdict, workdir


def started_actors() -> Counter[str]:
    """Actors Ray has started so far by class, live or dead, from the GCS's table: Ray's State
    API (`ray.util.state.list_actors`) needs the dashboard, which an embedded job leaves out."""
    import ray

    return Counter(actor["ActorClassName"] for actor in ray._private.state.actors().values())  # noqa: SLF001


def run(cpu: float, cpus: int, trials: int, kept: bool, storage: str) -> dict[str, Any]:
    import contextlib

    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    from benchmarks.workloads import quick
    from tuning_platform._compat.ray import starting_actors_kept

    ends: list[float] = []
    processes: Counter[int] = Counter()

    class Seen(tune.Callback):
        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            processes[int(result["process"])] += 1

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            ends.append(time.time())

    at_once = int(cpus / cpu)
    tuner = tune.Tuner(
        tune.with_resources(quick, {"cpu": cpu}),
        param_space={"x": tune.uniform(0.0, 1.0)},
        tune_config=tune.TuneConfig(
            num_samples=trials,
            metric="score",
            mode="max",
            search_alg=BasicVariantGenerator(max_concurrent=at_once, random_state=0),
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=f"reuse-{cpu}-{'kept' if kept else 'tune'}-{time.time_ns()}",
            storage_path=storage,
            callbacks=[Seen()],
            verbose=0,
        ),
    )
    before = started_actors()
    with starting_actors_kept() if kept else contextlib.nullcontext():
        tuner.fit()
    actors = sum((started_actors() - before).values())
    rate = (len(ends) - 1) / (ends[-1] - ends[0]) * 60 if len(ends) > 1 else 0.0
    return {"rate": rate, "processes": len(processes), "actors": actors, "at_once": at_once}


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=600)
    p.add_argument("--cpu-per-trial", type=float, nargs="+", default=[1.0, 0.25], metavar="CPU")
    args = p.parse_args(argv)
    if args.smoke:
        args.trials = 40
    quiet()
    rows = []
    with workdir(args.workdir) as folder, ray_running(args.cpus):
        for cpu in args.cpu_per_trial:
            for kept in (False, True):
                rows.append((cpu, kept, run(cpu, args.cpus, args.trials, kept, str(folder))))
    print(f"\n{args.trials} trials of a few milliseconds each, {args.cpus} CPUs, actors reused")
    print(f"{'cpu':>5} {'reuse':>9} {'at once':>8} {'trials/min':>11} {'processes':>10} {'actors':>7}")
    for cpu, kept, row in rows:
        reuse = "platform" if kept else "Tune's"
        line = f"{row['at_once']:>8} {row['rate']:>11.0f} {row['processes']:>10} {row['actors']:>7}"
        print(f"{cpu:>5g} {reuse:>9} {line}")
    ok = True
    for (cpu, _, tunes), (_, _, ours) in zip(rows[::2], rows[1::2], strict=True):
        faster = ours["rate"] / max(tunes["rate"], 1e-9)
        used = ours["processes"] / ours["at_once"]
        label = f"{cpu:g} CPU per trial:"
        ok &= verdict(f"{label} trials per minute, platform / Tune's reuse", faster, 1.0, False, "x", args.smoke)
        ok &= verdict(f"{label} processes that ran trials / trials at once", used, 1.0, False, "x", args.smoke)
    return 0 if ok or args.smoke else 1


if __name__ == "__main__":
    raise SystemExit(main())
