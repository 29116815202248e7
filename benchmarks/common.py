"""What the benchmark scripts share: one embedded Ray for all variants of a run, the platform's
job as the CLI would run it, the same trials through plain Ray Tune, and the verdict lines.

Every variant of a benchmark runs in the same process, on the same Ray, one after the other,
so the ratios compare like with like on a noisy shared machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "search_spaces"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--cpus", type=int, default=2, help="CPUs the embedded Ray gets (default 2, as in the targets)")
    p.add_argument("--smoke", action="store_true", help="a few trials only: checks the script works, not the targets")
    p.add_argument("--workdir", help="where stores and Ray results go (default: a temporary folder, removed)")
    return p


@contextmanager
def workdir(path: str | None) -> Iterator[Path]:
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path).resolve()
        return
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        yield Path(tmp)


@contextmanager
def ray_running(cpus: int) -> Iterator[None]:
    """One embedded Ray, started the way a job starts it, shared by every variant. A Ray this
    process already runs (the test suite's, shared by the smoke runs) is used and left running."""
    import ray

    from tuning_platform.cluster.connect import start_local_ray

    if ray.is_initialized():
        yield
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    start_local_ray(cpus)
    try:
        yield
    finally:
        ray.shutdown()


def same_trials(trials: int) -> list[str]:
    """Spec overrides that make every run of a benchmark train the same trials: seeded random
    search (the same configurations), FIFO (every epoch of every trial), and no model
    registration (a one-off at the job's end, not what these measure)."""
    return [
        f"search.num_samples={trials}",
        "search.algorithm=random",
        "scheduler.type=fifo",
        "tracking.register_model=false",
    ]


def job_request(
    spec: str | Path, overrides: Sequence[str], folder: Path, name: str, tracking_uri: str | None = None
) -> Any:
    """The request `tuning-platform SPEC --set ... --tracking-uri ... --name NAME` makes; its
    own SQLite store in `folder` unless a tracking URI (a server) is given."""
    from tuning_platform.request import build_request

    return build_request(
        str(spec),
        list(overrides),
        name=name,
        tracking_uri=tracking_uri or f"sqlite:///{folder / name}.db",
        storage_path=str(folder / "ray_results"),
    )


@contextmanager
def tracking_server(folder: Path) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 (SQLite behind it, one worker), as on a cluster's
    head node; yields its URI. Started and stopped by its own process group, the way the
    tests run it (tests/servers.py)."""
    from tests.servers import mlflow_server

    (folder / "server").mkdir(exist_ok=True)
    with mlflow_server(folder / "server") as server:
        yield server.uri


@contextmanager
def postgres_store() -> Iterator[str]:
    """A real PostgreSQL server on 127.0.0.1 (Debian's `postgresql` package, as the tests run
    it: tests/servers.py) with an empty database; yields its URI."""
    from tests.servers import postgres_server

    with postgres_server() as server:
        yield server.uri()


def create_store(tracking_uri: str) -> float:
    """Creates the tables of a fresh SQLite store, as a user's first job does once; returns seconds.

    Done outside the timed runs: it is the same one-time cost for any MLflow user of the store,
    not a cost per job.
    """
    from tuning_platform.tracking.client import open_client

    started = time.perf_counter()
    open_client(tracking_uri).search_experiments()
    return time.perf_counter() - started


def run_platform(request: Any) -> tuple[Any, float]:
    """The whole job on the running Ray: parent run, trials with full tracking, summary, registry."""
    from tuning_platform.job import run_job
    from tuning_platform.tracking.parent import JobTracker

    started = time.perf_counter()
    outcome = run_job(request, JobTracker(request.tracking_uri, request.spec.name))
    return outcome, time.perf_counter() - started


def run_plain_tune(request: Any, callbacks: Sequence[Any] = ()) -> tuple[Any, float]:
    """The same trials through Ray Tune alone: the job's trainable, data and Tune settings
    (`tuner.tune_config`, `checkpoints.checkpoint_config`), and no tracking besides `callbacks`."""
    from ray import tune

    from tuning_platform.execution.checkpoints import checkpoint_config
    from tuning_platform.execution.searcher import tune_config
    from tuning_platform.execution.tuner import build_trainable, trial_config

    spec = request.spec
    started = time.perf_counter()
    task = request.trainable.task
    dataset = task.load_data(dict(request.data)) if task is not None else None
    resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    run_name = f"{spec.name}-plain-{time.time_ns()}"
    trainable = build_trainable(request, resources, dataset, run_name, request.storage_path)
    tuner = tune.Tuner(
        trainable,
        param_space=trial_config(spec, request.data),
        tune_config=tune_config(spec, resources),
        run_config=tune.RunConfig(
            name=run_name,
            storage_path=request.storage_path,
            callbacks=list(callbacks),
            checkpoint_config=checkpoint_config(spec),
        ),
    )
    results = tuner.fit()
    return results, time.perf_counter() - started


def trial_clock() -> Any:
    """A Tune callback that notes when each trial starts and ends (driver time.time()): plain
    Ray Tune has no child runs to read it from."""
    from ray.tune import Callback

    class TrialClock(Callback):
        def __init__(self) -> None:
            self.starts: list[float] = []
            self.ends: list[float] = []

        def on_trial_start(self, iteration, trials, trial, **info) -> None:  # noqa: ANN001 - Tune's signature
            self.starts.append(time.time())

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:  # noqa: ANN001 - Tune's signature
            self.ends.append(time.time())

    return TrialClock()


# Where the machine's CPU went while the job ran, by process: this driver, the trials' actors,
# Ray's own daemons, anything else (another user of a shared machine shows up there).
DRIVER = "driver (all threads)"
METER_THREAD = "benchmark CPU meter"
OTHERS = "other processes"


class CpuMeter:
    """CPU seconds (user + system) every process of the machine uses from `start` to `stop`, by
    group; the driver's own threads each on their own (`driver: NAME`, as Python names them),
    and the driver as a whole (`DRIVER`).

    Processes that end in between count too: a job's trial actors end with the job, before a
    reading taken after it could see them. So a thread reads /proc every `INTERVAL_S` and keeps
    each process's latest figure, keyed by its id and start time; a process that ends loses at
    most its last interval. The meter's own thread is listed as `driver: benchmark CPU meter`."""

    INTERVAL_S = 0.5

    def start(self) -> None:
        self._first = _processes()
        self._last = dict(self._first)
        self._threads = _driver_threads()
        self._stopping = threading.Event()
        self._follower = threading.Thread(target=self._follow, name=METER_THREAD, daemon=True)
        self._follower.start()

    def stop(self) -> Counter[str]:
        threads = _driver_threads()  # while the meter's thread is alive, so it is listed by name
        self._stopping.set()
        self._follower.join()
        _merge(self._last, _processes())
        used: Counter[str] = Counter()
        for process, (group, seconds) in self._last.items():
            used[group] += seconds - self._first.get(process, (group, 0.0))[1]
        for name, seconds in threads.items():
            used[f"driver: {name}"] += seconds - self._threads.get(name, 0.0)
        ended = used[DRIVER] - sum(seconds for name, seconds in used.items() if name.startswith("driver: "))
        del used[DRIVER]
        if ended > 0:  # a job's writer ends with the job
            used["driver: threads that ended meanwhile"] = ended
        return +used

    def _follow(self) -> None:
        while not self._stopping.wait(self.INTERVAL_S):
            _merge(self._last, _processes())


def _processes() -> dict[tuple[int, int], tuple[str, float]]:
    """Every process's (id, start time) -> (group, CPU seconds so far)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = _stat_fields(stat)
            command = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:  # the process ended meanwhile
            continue
        pid = int(stat.parent.name)
        group = DRIVER if pid == os.getpid() else _process_group(command)
        found[(pid, int(fields[19]))] = (group, _cpu_seconds(fields))  # 19: stat's field 22, starttime
    return found


def _stat_fields(stat: Path) -> list[str]:
    """A /proc stat file's fields after the command name, so field 3 (state) is at index 0."""
    return stat.read_text().rsplit(")", 1)[1].split()


def _cpu_seconds(fields: list[str]) -> float:
    """User and system time (stat's fields 14 and 15) in seconds."""
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _merge(last: dict[tuple[int, int], tuple[str, float]], found: dict[tuple[int, int], tuple[str, float]]) -> None:
    """Each process's latest figure, under the group it had while it ran: a process that has
    ended but is not yet reaped (an actor Ray just stopped) shows no command line any more."""
    for process, (group, seconds) in found.items():
        earlier = last.get(process)
        last[process] = (earlier[0] if earlier and group == OTHERS else group, seconds)


def _driver_threads() -> Counter[str]:
    """CPU seconds of this process's live threads so far, by the name Python gave them."""
    names = {thread.native_id: thread.name for thread in threading.enumerate()}
    used: Counter[str] = Counter()
    for stat in Path("/proc/self/task").glob("*/stat"):
        try:
            fields = _stat_fields(stat)
        except OSError:
            continue
        name = names.get(int(stat.parent.name), "a thread Python did not start (Ray's, grpc's)")
        used[name] += _cpu_seconds(fields)
    return used


def _process_group(command: list[bytes]) -> str:
    first = command[0].decode(errors="replace") if command else ""
    text = b" ".join(command).decode(errors="replace")
    if first.startswith("ray::"):
        return "Ray workers (the trials' actors)" if "ImplicitFunc" in first else "Ray workers (other)"
    if "mlflow" in text:
        return "the mlflow server"
    for daemon in ("raylet", "gcs_server", "dashboard", "log_monitor", "monitor.py", "runtime_env"):
        if daemon in text:
            return f"Ray: {daemon}"
    if "default_worker.py" in text:
        return "Ray workers (idle)"
    return OTHERS


def spread(values: Sequence[float]) -> str:
    """`mean (min..max)` of a few measurements."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ({min(values):.3f}..{max(values):.3f})"


def median_spread(values: Sequence[float], percent: bool = False) -> str:
    """`median (min..max), mean m`: a target over several seeds is judged at the median, which
    one unlucky seed does not move, with the spread beside it."""
    shown = (lambda v: f"{100 * v:.1f}%") if percent else (lambda v: f"{v:.3f}")
    if len(values) == 1:
        return shown(values[0])
    return (
        f"median {shown(statistics.median(values))} ({shown(min(values))}..{shown(max(values))}), "
        f"mean {shown(statistics.mean(values))}"
    )


def verdict(label: str, value: float, target: float, at_most: bool, unit: str = "", smoke: bool = False) -> bool:
    """One line per target: PASS or FALLS SHORT, the measured value and the target."""
    ok = value <= target if at_most else value >= target
    word = "PASS" if ok else "FALLS SHORT"
    if smoke:
        word = f"smoke, not a measurement: {word.lower()}"
    print(f"{word}: {label} {value:.3f}{unit} (target {'<=' if at_most else '>='} {target:g}{unit})", flush=True)
    return ok


def quiet() -> None:
    """Tune's progress table and per-trial lines would bury the figures."""
    import logging

    for name in ("ray", "ray.tune", "ray.train", "mlflow", "optuna"):
        logging.getLogger(name).setLevel(logging.WARNING)
