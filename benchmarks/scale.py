"""Scale: 1,000 (or 10,000) trials of a trivial trainable through the full platform on one machine.

    python -m benchmarks.scale                   # 1,000 trials
    python -m benchmarks.scale --trials 10000    # the 10,000-trial targets too
    python -m benchmarks.scale --smoke           # 40 trials
    python -m benchmarks.scale --trials 10000 --plain    # the same trials through plain Ray Tune
    python -m benchmarks.scale --trials 10000 --census   # which objects the driver gains
    python -m benchmarks.scale --trials 2000 --server    # tracking to a real `mlflow server` over HTTP
    python -m benchmarks.scale --trials 10000 --postgres  # tracking to a real PostgreSQL database

This process is the job's driver (the same code `python -m platform.tune` runs). It prints
trials per minute, the driver's peak memory, and checks that MLflow holds exactly one child run
per trial. Targets: at least 300 trials per minute on 2 CPUs, driver peak memory under 1.5 GiB.

It also follows the job as it grows: the driver's resident memory every second (set against the
number of trials finished by then, from the child runs' end times), the time of each TPE
proposal (`OptunaSearch.suggest`, timed in this process, where the driver runs it), and the end
of the job (from the last trial's end to the job's return: summary, insight, registration).
Targets with 10,000 trials (issue 16): >= 600 trials/min; memory at the end within 1.25x of
memory at 2,000 trials; the last 500 proposals within 3x the time of the first 500 after
TPE's start-up trials; the end of the job under 30 s.

`--plain` runs the same trials through Ray Tune alone (the job's trainable, searcher, scheduler
and concurrency, no tracking) and follows it the same way, so growth that plain Ray Tune shows
too is told apart from the platform's. It is a separate command, not a variant of one run:
a driver's resident memory does not go down when a job ends, so two jobs in one process would
measure the second on top of the first. `--census` counts the driver's objects (those Python's
garbage collector tracks) by type once a fifth of the trials have been proposed and again at the
last proposal, and prints the types that grew most: where the memory goes. `--server` tracks to
a real `mlflow server` on 127.0.0.1 (as on a cluster's head node, sharing this machine's CPUs)
instead of a SQLite store.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import gc
import itertools
import json
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.common import (
    ROOT,
    CpuMeter,
    job_request,
    parser,
    postgres_store,
    quiet,
    ray_running,
    run_plain_tune,
    run_platform,
    tracking_server,
    trial_clock,
    verdict,
    workdir,
)

SPEC = Path(__file__).resolve().parent / "specs" / "trivial.yaml"
TARGET_PER_MINUTE = 300
TARGET_MEMORY_GIB = 1.5
# Issue 16's targets, checked when the job has at least this many trials.
LARGE = 10_000
TARGET_LARGE_PER_MINUTE = 600
TARGET_MEMORY_GROWTH = 1.25
TARGET_PROPOSAL_GROWTH = 3.0
TARGET_END_S = 30.0
PROPOSAL_WINDOW = 500
# Issue 32's, for every shape (--cpu-per-trial) at 10,000 trials: the rate of the last 2,000
# trials against the first 2,000, and the driver's memory growth against plain Ray Tune's (MiB).
EDGE_TRIALS = 2000
TARGET_RATE_KEPT = 0.8
TARGET_GROWTH_OVER_PLAIN = 1.25


def peak_rss_gib() -> float:
    """This process's peak resident memory (VmHWM on Linux, ru_maxrss elsewhere)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


@contextmanager
def in_background(work: Callable[[threading.Event], None]) -> Iterator[None]:
    """`work(done)` on a daemon thread while inside; `done` is set on the way out."""
    done = threading.Event()
    thread = threading.Thread(target=work, args=(done,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


@contextmanager
def sampled_memory(every_s: float = 1.0) -> Iterator[list[tuple[float, float]]]:
    """(wall time, resident GiB) of this process every `every_s` seconds while inside."""
    samples: list[tuple[float, float]] = []

    def sample(done: threading.Event) -> None:
        while not done.wait(every_s):
            samples.append((time.time(), rss_gib()))

    with in_background(sample):
        yield samples


@contextmanager
def clocked(owner: Any, name: str, record: Callable[[float, float], None]) -> Iterator[None]:
    """`owner.name` wrapped while inside: after each call, `record(started, ended)` (wall clock)."""
    original = getattr(owner, name)

    def timed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - the wrapped callable's own
        started = time.time()
        try:
            return original(*args, **kwargs)
        finally:
            record(started, time.time())

    setattr(owner, name, timed)
    try:
        yield
    finally:
        setattr(owner, name, original)


@contextmanager
def timed_proposals() -> Iterator[list[float]]:
    """Seconds of each `OptunaSearch.suggest` call made in this process (the driver's)."""
    from ray.tune.search.optuna import OptunaSearch

    seconds: list[float] = []
    with clocked(OptunaSearch, "suggest", lambda started, ended: seconds.append(ended - started)):
        yield seconds


@contextmanager
def timed_trims() -> Iterator[list[float]]:
    """Seconds of each time the driver handed its freed memory back (`memory.return_freed_memory`)."""
    from tuning_platform.execution import memory

    seconds: list[float] = []
    with clocked(memory, "return_freed_memory", lambda started, ended: seconds.append(ended - started)):
        yield seconds


# The steps of a job after its trials, timed where `run_job` calls them (module, function).
END_STEPS = (
    ("tuning_platform.job", "fit"),  # Tune's end: its last state save and its result grid
    ("tuning_platform.job", "_read_outcome"),
    ("tuning_platform.job", "_recorded"),
    ("tuning_platform.job", "_write_insight"),
    ("tuning_platform.job", "_register_and_finish"),
)


@contextmanager
def timed_end_steps() -> Iterator[dict[str, tuple[float, float]]]:
    """(step -> started, ended) of the steps of the job's end, timed in this process.
    `fit` is the whole Tune run: only its end (after the last trial) belongs to the job's end."""
    import importlib

    spans: dict[str, tuple[float, float]] = {}
    with contextlib.ExitStack() as stack:
        for module_name, name in END_STEPS:
            module = importlib.import_module(module_name)
            stack.enter_context(
                clocked(module, name, lambda started, ended, step=name: spans.update({step: (started, ended)}))
            )
        yield spans


def print_end_steps(spans: dict[str, tuple[float, float]], last_end: float, returned: float) -> None:
    """Seconds of each step after the last trial's end; what is left is the job's other work."""
    parts = []
    for _, name in END_STEPS:
        if name in spans:
            started, ended = spans[name]
            parts.append(
                (name if name != "fit" else "Tune's end (fit after the last trial)", ended - max(started, last_end))
            )
    left = (returned - last_end) - sum(seconds for _, seconds in parts)
    print(
        "end of the job by step: "
        + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in parts)
        + f", other {left:.1f} s"
    )


def object_census() -> Counter[str]:
    """The driver's objects that the garbage collector tracks, counted by type."""
    return Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects())


@contextmanager
def census_at(proposals: list[float], marks: tuple[int, ...]) -> Iterator[list[Counter[str]]]:
    """An object census the moment each of `marks` proposals has been made: the last mark is
    the job's last trial, so Tune's end (its result grid) and the platform's are not counted.

    Taken on the driver's main thread inside `OptunaSearch.suggest`, right after the proposal,
    not by a thread that polls: at a thousand trials a minute a poll half a second late, and a
    census that holds the GIL meanwhile, took the first one dozens of trials past its mark, and
    the census then missed the trials' own objects. Enter it after `timed_proposals`, whose
    wrapper fills `proposals`."""
    from ray.tune.search.optuna import OptunaSearch

    taken: list[Counter[str]] = []

    def at_mark(started: float, ended: float) -> None:
        if len(proposals) in marks[len(taken) : len(taken) + 1]:
            taken.append(object_census())

    with clocked(OptunaSearch, "suggest", at_mark):
        yield taken


def print_census(taken: list[Counter[str]], marks: tuple[int, ...], top: int = 15) -> None:
    if len(taken) < 2:
        print("object census: not taken (the job ended before its last proposal)")
        return
    grown = (taken[1] - taken[0]).most_common(top)
    print(f"objects the driver gained from proposal {marks[0]} to proposal {marks[1]} (count, type):")
    for name, count in grown:
        print(f"  {count:>9,}  {name}")


@contextmanager
def profiled_windows(proposals: list[float], windows: tuple[tuple[int, int], ...]) -> Iterator[list[dict[str, Any]]]:
    """For each (first, last) proposal count: a profile of the driver's main thread (Tune's
    loop: the scheduler, the searcher, the callbacks, the state saves) from proposal `first`
    to `last`, the CPU every process used meanwhile, and the wall time. The profiler is turned
    on and off inside `OptunaSearch.suggest`, which Tune's loop calls on the main thread."""
    import cProfile

    from ray.tune.search.optuna import OptunaSearch

    taken: list[dict[str, Any]] = []
    if not windows:
        yield taken
        return
    pending = list(windows)
    state: dict[str, Any] = {}
    original = OptunaSearch.suggest

    def suggest(self, trial_id):  # noqa: ANN001, ANN202 - OptunaSearch's own
        count = len(proposals)
        if pending and "profile" not in state and count >= pending[0][0]:
            state.update(profile=cProfile.Profile(), cpu=CpuMeter(), wall=time.time(), first=count)
            state["cpu"].start()
            state["profile"].enable()
        elif "profile" in state and count >= pending[0][1]:
            state["profile"].disable()
            cpu = state["cpu"].stop()
            taken.append(
                {"window": (state["first"], count), "profile": state["profile"], "cpu": cpu,
                 "wall": time.time() - state["wall"]}
            )  # fmt: skip
            state.clear()
            pending.pop(0)
        return original(self, trial_id)

    OptunaSearch.suggest = suggest  # type: ignore[method-assign]
    try:
        yield taken
    finally:
        OptunaSearch.suggest = original  # type: ignore[method-assign]


def print_profiles(taken: list[dict[str, Any]], top: int = 25) -> None:
    """Per window: CPU by process (seconds per 100 trials), then the driver's main thread's
    functions by their own time and by cumulative time (milliseconds per trial)."""
    import pstats

    for window in taken:
        first, last = window["window"]
        trials = max(last - first, 1)
        print(f"\nprofile from proposal {first:,} to {last:,} ({window['wall']:.1f} s of wall time):")
        print("  CPU seconds per 100 trials, by process:")
        for name, seconds in window["cpu"].most_common():
            if seconds >= 0.005 * trials / 100:
                print(f"    {seconds / trials * 100:7.2f}  {name}")
        stats = pstats.Stats(window["profile"])
        rows = stats.stats  # type: ignore[attr-defined]
        for title, key in (("own time", 2), ("cumulative time", 3)):
            print(f"  the driver's main thread, ms per trial by {title}:")
            ranked = sorted(rows.items(), key=lambda item: item[1][key], reverse=True)[:top]
            for (path, line, function), numbers in ranked:
                where = "/".join(Path(path).parts[-2:])
                print(f"    {numbers[key] / trials * 1000:8.3f}  {function}  ({where}:{line}, {numbers[1]:,} calls)")


def rate_between(end_times: list[float], first: int, last: int) -> float:
    """Trials per minute from the end of trial `first` (0: the first trial's end) to that of `last`."""
    start = end_times[max(first - 1, 0)]
    seconds = end_times[last - 1] - start
    return (last - max(first, 1)) / seconds * 60 if seconds > 0 else float("nan")


def memory_at(samples: list[tuple[float, float]], end_times: list[float], finished: int) -> float:
    """Resident memory at the first sample taken once `finished` trials had ended."""
    for at, gib in samples:
        if bisect.bisect_right(end_times, at) >= finished:
            return gib
    return samples[-1][1] if samples else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--plain", action="store_true", help="the same trials through plain Ray Tune, no tracking")
    p.add_argument("--census", action="store_true", help="count the driver's objects by type as the job grows")
    p.add_argument("--server", action="store_true", help="track to a real mlflow server over HTTP")
    p.add_argument("--postgres", action="store_true", help="track to a real PostgreSQL database (no server)")
    p.add_argument(
        "--cpu-per-trial",
        type=float,
        nargs="+",
        metavar="CPU",
        help="each shape (resources.cpu) through plain Ray Tune and the platform, each in a new process, "
        "and their figures side by side",
    )
    p.add_argument("--profile", action="store_true", help="profile the driver at a fifth and four fifths of the job")
    p.add_argument("--report", help=argparse.SUPPRESS)  # a shape's figures as JSON, for --cpu-per-trial
    args = p.parse_args(argv)
    if args.smoke:
        args.trials = 40
    if args.cpu_per_trial and not args.report:
        return compare_shapes(args)
    quiet()
    from tuning_platform.tracking.client import open_client
    from tuning_platform.tracking.queries import child_runs

    marks = (max(1, args.trials // 5), args.trials)
    overrides = [f"search.num_samples={args.trials}"]
    if args.cpu_per_trial:
        overrides.append(f"resources.cpu={args.cpu_per_trial[0]:g}")
    with contextlib.ExitStack() as outer:
        folder = outer.enter_context(workdir(args.workdir))
        server = outer.enter_context(tracking_server(folder)) if args.server else None
        if args.postgres:
            server = outer.enter_context(postgres_store())
        outer.enter_context(ray_running(args.cpus))
        request = job_request(SPEC, overrides, folder, "scale", server)
        with contextlib.ExitStack() as stack:
            samples = stack.enter_context(sampled_memory())
            proposals = stack.enter_context(timed_proposals())
            steps = stack.enter_context(timed_end_steps())
            trims = stack.enter_context(timed_trims())
            census = stack.enter_context(census_at(proposals, marks)) if args.census else None
            profiles = (
                stack.enter_context(profiled_windows(proposals, profile_windows(args.trials))) if args.profile else []
            )
            started = time.time()
            if args.plain:
                clock = trial_clock()
                results, seconds = run_plain_tune(request, [clock])
            else:
                outcome, seconds = run_platform(request)
        if census is not None:
            print_census(census, marks)
        print_profiles(profiles)
        if args.plain:
            end_times = sorted(clock.ends)
            code = plain_reference(args, results, seconds, started, samples, end_times, proposals)
            report(args, len(results), seconds, samples, end_times, code == 0)
            return code
        client = open_client(request.tracking_uri)
        runs = child_runs(client, outcome.experiment_id, outcome.parent_run_id)
    peak = peak_rss_gib()
    end_times = sorted((run.info.end_time or 0) / 1000 for run in runs)

    per_trial = Counter(run.data.tags.get("trial_id") for run in runs)
    trial_ids = {row.trial_id for row in outcome.rows}
    one_each = set(per_trial) == trial_ids and all(count == 1 for count in per_trial.values())
    finished = sum(run.info.status == "FINISHED" for run in runs)
    store = "PostgreSQL" if args.postgres else "an mlflow server over HTTP" if server else "SQLite"
    print(
        f"\nScale: {args.trials} trivial trials at {shape(args)} CPU per trial, full platform (Optuna TPE, "
        f"MLflow on {store}), {args.cpus} CPUs"
    )
    print(f"best trial: {outcome.best_trial_id}; {len(outcome.rows)} trials in {seconds:.1f} s")
    print(
        f"MLflow: {len(runs)} child runs for {len(trial_ids)} trials, {finished} FINISHED, most per trial: "
        f"{max(per_trial.values(), default=0)}"
    )
    print(f"driver peak memory {peak:.2f} GiB")
    if trims:
        print(
            f"freed memory handed back {len(trims)} times: {statistics.mean(trims) * 1000:.0f} ms on average, "
            f"{max(trims) * 1000:.0f} ms at most"
        )
    complete = outcome.best is not None and len(outcome.rows) == args.trials and one_each and finished == args.trials
    print(f"{'PASS' if complete else 'FALLS SHORT'}: every trial completed with exactly one FINISHED child run")
    rate_ok = verdict(
        "trials per minute", len(outcome.rows) / seconds * 60, TARGET_PER_MINUTE, at_most=False, smoke=args.smoke
    )
    memory_ok = verdict("driver peak memory", peak, TARGET_MEMORY_GIB, at_most=True, unit=" GiB", smoke=args.smoke)
    large_ok = growth(args, len(outcome.rows), seconds, started, samples, end_times, proposals)
    if end_times:
        print_end_steps(steps, end_times[-1], started + seconds)
    report(args, len(outcome.rows), seconds, samples, end_times, complete)
    return 0 if complete and (args.smoke or (rate_ok and memory_ok and large_ok)) else 1


def shape(args: argparse.Namespace) -> str:
    """The CPUs per trial of this run: the one given, or the spec's (1)."""
    return f"{args.cpu_per_trial[0]:g}" if args.cpu_per_trial else "1"


def profile_windows(trials: int) -> tuple[tuple[int, int], ...]:
    """Proposals 2,000-2,500 and 8,000-8,500 of a 10,000-trial job; the same fifths of others."""
    width = max(trials // 20, 1)
    return ((trials // 5, trials // 5 + width), (trials * 4 // 5, trials * 4 // 5 + width))


def edge(trials: int) -> int:
    """The first and last trials whose rates are set side by side: 2,000 of 10,000, a fifth of fewer."""
    return max(min(EDGE_TRIALS, trials // 5), 1)


def figures(
    trials: int, seconds: float, samples: list[tuple[float, float]], end_times: list[float]
) -> dict[str, float]:
    """One shape's figures: the rates of the whole job, of its first and its last `edge` trials,
    and the driver's resident memory (MiB) once `edge` trials and once all had finished."""
    first = edge(trials)
    return {
        "trials": trials,
        "per_minute": trials / seconds * 60,
        "first_per_minute": rate_between(end_times, 0, first),
        "last_per_minute": rate_between(end_times, trials - first, trials),
        "memory_first_mib": memory_at(samples, end_times, first) * 1024,
        "memory_end_mib": memory_at(samples, end_times, trials) * 1024,
    }


def report(args, trials, seconds, samples, end_times, ok) -> None:  # noqa: ANN001
    """The figures as JSON for the run that started this one (`--cpu-per-trial`)."""
    if args.report and end_times:
        Path(args.report).write_text(json.dumps({**figures(trials, seconds, samples, end_times), "ok": ok}))


def compare_shapes(args) -> int:  # noqa: ANN001
    """Each shape through plain Ray Tune, then the platform, each its own process (a driver's
    memory does not go down when a job ends), and one table of both."""
    ok = True
    rows = []
    with workdir(args.workdir) as folder:
        for cpu in args.cpu_per_trial:
            shape = {}
            for variant in ("plain", "platform"):
                out = folder / f"{variant}-{cpu:g}.json"
                command = [sys.executable, "-m", "benchmarks.scale", "--trials", str(args.trials), "--cpus"]
                command += [str(args.cpus), "--cpu-per-trial", f"{cpu:g}", "--report", str(out)]
                command += ["--workdir", str(folder / f"{variant}-{cpu:g}")]
                command += ["--plain"] * (variant == "plain") + ["--profile"] * args.profile
                command += ["--smoke"] * args.smoke + ["--server"] * args.server + ["--postgres"] * args.postgres
                print(f"\n=== {args.trials} trials at {cpu:g} CPU per trial: {variant} ===", flush=True)
                done = subprocess.run(command, cwd=ROOT, check=False)
                if not out.exists():
                    print(f"error: the {variant} run at {cpu:g} CPU per trial exited {done.returncode} with no figures")
                    return 1
                shape[variant] = json.loads(out.read_text())
                ok &= shape[variant]["ok"]
            rows.append((cpu, shape))
    first = edge(args.trials)
    print(f"\n{args.trials:,} trivial trials, {args.cpus} CPUs; first/last: the first and last {first:,} trials")
    print(f"{'cpu':>5} {'variant':>9} {'trials/min':>10} {'first':>7} {'last':>7} {'last/first':>10} "
          f"{'MiB at ' + format(first, ','):>12} {'MiB at end':>10} {'growth':>7}")  # fmt: skip
    for cpu, shape in rows:
        for variant, f in shape.items():
            grown = f["memory_end_mib"] - f["memory_first_mib"]
            print(
                f"{cpu:>5g} {variant:>9} {f['per_minute']:>10.0f} {f['first_per_minute']:>7.0f} "
                f"{f['last_per_minute']:>7.0f} {f['last_per_minute'] / f['first_per_minute']:>10.2f} "
                f"{f['memory_first_mib']:>12.0f} {f['memory_end_mib']:>10.0f} {grown:>+7.0f}"
            )
    for cpu, shape in rows:
        mine, plain = shape["platform"], shape["plain"]
        judged = args.trials >= LARGE or args.smoke
        ok &= (
            verdict(f"{cpu:g} CPU per trial: trials per minute", mine["per_minute"], TARGET_LARGE_PER_MINUTE, False,
                    smoke=args.smoke)
            & verdict(f"{cpu:g} CPU per trial: last / first {first:,} trials' rate",
                      mine["last_per_minute"] / mine["first_per_minute"], TARGET_RATE_KEPT, False, "x", args.smoke)
            & verdict(f"{cpu:g} CPU per trial: memory growth / plain Ray Tune's",
                      (mine["memory_end_mib"] - mine["memory_first_mib"])
                      / max(plain["memory_end_mib"] - plain["memory_first_mib"], 1.0),
                      TARGET_GROWTH_OVER_PLAIN, True, "x", args.smoke)
        ) or not judged  # fmt: skip
    if args.trials < LARGE and not args.smoke:
        print(f"(judged at {LARGE:,} trials: --trials {LARGE})")
    return 0 if ok or args.smoke else 1


def plain_reference(args, results, seconds, started, samples, end_times, proposals) -> int:  # noqa: ANN001
    """The same figures for plain Ray Tune: a reference, so no verdicts."""
    errors = sum(result.error is not None for result in results)
    print(
        f"\nScale: {args.trials} trivial trials at {shape(args)} CPU per trial, plain Ray Tune (Optuna TPE, "
        f"no tracking), {args.cpus} CPUs"
    )
    print(f"{len(results)} trials ({errors} errored) in {seconds:.1f} s: {len(results) / seconds * 60:.0f} trials/min")
    print(f"driver peak memory {peak_rss_gib():.2f} GiB")
    growth(args, len(results), seconds, started, samples, end_times, proposals, judged=False)
    return 0 if len(results) == args.trials and errors == 0 else 1


def growth(args, trials, seconds, started, samples, end_times, proposals, judged=True) -> bool:  # noqa: ANN001
    """How memory and proposal time grow with the trials, and the end of the job."""
    marks = sorted({m for m in (trials // 5, trials // 2, trials) if m})
    print("driver resident memory by trials finished: " + ", ".join(
        f"{m}: {memory_at(samples, end_times, m):.2f} GiB" for m in marks
    ))  # fmt: skip
    bounds = [0, *marks]
    print("trials per minute between those marks: " + ", ".join(
        f"{a}-{b}: {rate_between(end_times, a, b):.0f}" for a, b in itertools.pairwise(bounds) if b <= len(end_times)
    ))  # fmt: skip
    startup = min(10, trials)  # TPE's random start-up trials (Optuna's default), not TPE proposals
    window = max(1, min(PROPOSAL_WINDOW, (len(proposals) - startup) // 4))
    early = statistics.mean(proposals[startup : startup + window]) if len(proposals) > startup else float("nan")
    late = statistics.mean(proposals[-window:]) if proposals else float("nan")
    print(
        f"TPE proposal time: {early * 1000:.1f} ms (mean of {window} after the {startup} start-up trials), "
        f"{late * 1000:.1f} ms (mean of the last {window}); {len(proposals)} proposals"
    )
    end_s = started + seconds - end_times[-1] if end_times else float("nan")
    print(f"end of the job (last trial's end to the job's return): {end_s:.1f} s")
    at_fifth = memory_at(samples, end_times, max(1, trials // 5))
    print(f"memory at {trials} / at {trials // 5} trials: {memory_at(samples, end_times, trials) / at_fifth:.2f}x")
    if not judged:
        return True
    if trials < LARGE and not args.smoke:
        print(f"(the {LARGE:,}-trial targets are checked with --trials {LARGE})")
        return True
    ok = verdict(
        "trials per minute, whole job", trials / seconds * 60, TARGET_LARGE_PER_MINUTE, False, smoke=args.smoke
    )
    ok &= verdict(
        f"memory at {trials} / at {trials // 5} trials",
        memory_at(samples, end_times, trials) / at_fifth,
        TARGET_MEMORY_GROWTH,
        True,
        unit="x",
        smoke=args.smoke,
    )
    ok &= verdict("TPE proposal time, last / first", late / early, TARGET_PROPOSAL_GROWTH, True, "x", args.smoke)
    ok &= verdict("end of the job", end_s, TARGET_END_S, True, " s", args.smoke)
    return ok


if __name__ == "__main__":
    sys.exit(main())
