"""Whole command: `python -m platform.tune SPEC` timed as a user times it, from Enter to the
prompt (a new process: imports, checks, a fresh SQLite store, the trials, the job's end, the
summary), against a plain Ray Tune script running the same trials in a new process.

    python -m benchmarks.command                        # every workload, 2 rounds each
    python -m benchmarks.command --workload digits-task --trials 60 --rounds 3
    python -m benchmarks.command --smoke                # 8 trials of each workload, 1 round, side by side

Workloads (`--workload`), each with seeded random search over its parameters (Tune's
BasicVariantGenerator, the same configurations in both), FIFO, 1 CPU each on all of the
machine's CPUs, actors reused in both (the platform's setting; Tune's default starts a process
per trial, which made the plain script 3x slower than the platform here):
- `sleep`: `benchmarks.workloads:short`, 3 epochs of 0.1 s; registration off. 60 and 300 trials.
- `digits`: a user's own function in the working folder (`digits_trial.py`, written by the
  script next to `digits.csv`, scikit-learn's digits as a CSV read with pandas: 64 int64
  columns), an MLP trained 3 epochs; no `TASK`, so insight and no registration. 60 trials.
- `digits-task`: the built-in `mlp` on the same CSV: a `TASK`, so the job's end draws the
  insight and registers the best model, scored on the held-out rows. The plain script runs the
  same trainable function with the same data. 60 trials.

Rounds alternate plain and platform. For the platform it also prints where each round's time
went, read from its MLflow records: before the first trial started, the trials, the job's end
up to its parent run's end (Tune's end, insight, registration), and from there to the prompt
(summary, Ray's shutdown, the interpreter's exit). It also times what each command pays before
any trial: the imports, and creating a fresh store.
Targets: platform / plain <= 1.10 at 60 trials, <= 1.05 at 300.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import ROOT, create_store, parser, verdict, workdir

TARGETS = {60: 1.10, 300: 1.05}
# Each workload: the spec the platform runs and what the plain script runs, the same trials.
SPECS = {
    # 3 epochs of 0.1 s of sleep: what is left is the platform's cost per trial.
    "sleep": """
name: bench-command
trainable: benchmarks.workloads:short
metric: score
mode: max
search:
  algorithm: random
  num_samples: {trials}
  seed: 0
  space:
    x: {{type: uniform, low: 0.0, high: 1.0}}
  fixed: {{epochs: 3}}
scheduler: {{type: fifo}}
resources: {{cpu: 1, gpu: 0}}
tracking: {{register_model: false}}
failure: {{max_failures: 0}}
""",
    # A user's own function (digits_trial.py, written next to the spec): no TASK, so the
    # job draws its insight and registers nothing.
    "digits": """
name: bench-digits
trainable: digits_trial:train
metric: val_accuracy
mode: max
search:
  algorithm: random
  num_samples: {trials}
  seed: 0
  space:
    lr: {{type: loguniform, low: 1e-3, high: 1e-1}}
  fixed: {{epochs: 3, hidden_size: 256, batch_size: 16, path: {folder}/digits.csv}}
scheduler: {{type: fifo}}
resources: {{cpu: 1, gpu: 0}}
failure: {{max_failures: 0}}
""",
    # The built-in mlp on the same CSV (a TASK): insight, and the best model registered and
    # scored on the held-out rows, as a user's job does by default.
    "digits-task": """
name: bench-digits-task
trainable: mlp
metric: val_accuracy
mode: max
data: {{dataset: csv, path: {folder}/digits.csv, target: digit}}
search:
  algorithm: random
  num_samples: {trials}
  seed: 0
  space:
    lr: {{type: loguniform, low: 1e-3, high: 1e-1}}
  fixed: {{epochs: 3, hidden_size: 256, num_layers: 2, batch_size: 16, optimizer: adam, dropout: 0.0}}
scheduler: {{type: fifo}}
resources: {{cpu: 1, gpu: 0}}
failure: {{max_failures: 0}}
""",
}
# The user's own trainable of the "digits" workload, as one writes it for Ray Tune: an MLP on
# the digits table read with pandas (its pixel columns are int64), three epochs, one report each.
DIGITS_TRIAL = """
import pandas as pd
import torch
from ray import tune
from torch import nn


def train(config):
    frame = pd.read_csv(config["path"])
    labels = torch.tensor(frame.pop("digit").to_numpy())
    pixels = torch.tensor(frame.to_numpy(), dtype=torch.float32) / 16.0
    order = torch.randperm(len(pixels), generator=torch.Generator().manual_seed(0))
    val, fit = order[:360], order[360:]
    torch.manual_seed(int(config.get("seed", 0)))
    width = int(config["hidden_size"])
    model = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=float(config["lr"]))
    for epoch in range(1, int(config["epochs"]) + 1):
        model.train()
        for batch in fit[torch.randperm(len(fit))].split(int(config["batch_size"])):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(pixels[batch]), labels[batch]).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            logits = model(pixels[val])
            accuracy = (logits.argmax(1) == labels[val]).float().mean().item()
            loss = nn.functional.cross_entropy(logits, labels[val]).item()
        tune.report({"epoch": epoch, "val_loss": loss, "val_accuracy": accuracy})
"""
PLAIN = """
import sys

import ray
from ray import tune
from ray.tune.search import BasicVariantGenerator

workload, trials, storage, folder = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
if workload == "sleep":
    from benchmarks.workloads import short as trainable

    metric, space = "score", {"x": tune.uniform(0.0, 1.0), "epochs": 3}
else:
    metric = "val_accuracy"
    space = {"lr": tune.loguniform(1e-3, 1e-1), "epochs": 3, "hidden_size": 256, "batch_size": 16}
    if workload == "digits":
        from digits_trial import train as trainable

        space["path"] = f"{folder}/digits.csv"
    else:  # the built-in trainable's own function and loop, its data loaded once and shared
        from trainables import mlp

        data = mlp.load_data({"dataset": "csv", "path": f"{folder}/digits.csv", "target": "digit"})
        trainable = tune.with_parameters(mlp.train, data=data.for_trials())
        space |= {"num_layers": 2, "optimizer": "adam", "dropout": 0.0}
ray.init()
tuner = tune.Tuner(
    tune.with_resources(trainable, {"cpu": 1}),
    param_space=space,
    # Actors reused, as the platform runs Tune: without it Ray starts a process per trial, and
    # the comparison would measure that instead of the platform.
    tune_config=tune.TuneConfig(
        metric=metric,
        mode="max",
        num_samples=trials,
        search_alg=BasicVariantGenerator(random_state=0),
        reuse_actors=True,
    ),
    run_config=tune.RunConfig(storage_path=storage, name="plain"),
)
best = tuner.fit().get_best_result()
print(f"best {best.config} {metric}={best.metrics[metric]:.5f}")
ray.shutdown()
"""


def write_digits(folder: Path) -> None:
    """scikit-learn's digits as a user's CSV (64 pixel columns of int64, the label `digit`), and
    the user's own trainable next to it."""
    import pandas as pd
    from sklearn.datasets import load_digits

    digits = load_digits()
    frame = pd.DataFrame(digits.data.astype("int64"), columns=[f"pixel_{i}" for i in range(64)])
    frame["digit"] = digits.target
    frame.to_csv(folder / "digits.csv", index=False)
    (folder / "digits_trial.py").write_text(DIGITS_TRIAL)


def timed(command: list[str], folder: Path, log: Path) -> tuple[float, float, float]:
    """Seconds the command took, and its start and end (wall clock)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    wall, started = time.time(), time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(command, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=3600)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(command[:4])} exited {done.returncode}; see {log}")
    return seconds, wall, wall + seconds


def import_seconds(statement: str, repeat: int) -> float:
    """A new interpreter running one import, median of `repeat`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", statement], env=env, check=True, capture_output=True)
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--workload", nargs="+", choices=sorted(SPECS), default=["sleep", "digits", "digits-task"])
    p.add_argument("--trials", type=int, nargs="+", help="default: 60 and 300 for sleep, 60 for the others")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    if args.smoke:
        args.trials, args.rounds = [8], 1
    ok = True
    repeat = 3
    with workdir(args.workdir) as folder:
        (folder / "plain.py").write_text(PLAIN)
        write_digits(folder)
        if not args.smoke:  # a dozen new interpreters: seconds that a smoke run need not spend
            print(f"Before any trial, in a new process (median of {repeat}):", flush=True)
            print(f"  python itself              {import_seconds('pass', repeat):6.2f} s")
            print(f"  import ray.tune            {import_seconds('import ray.tune', repeat):6.2f} s")
            print(f"  import the platform's CLI  {import_seconds('import tuning_platform.cli', repeat):6.2f} s")
            job_modules = import_seconds("import tuning_platform.job", repeat)
            print(f"  plus its job's modules     {job_modules:6.2f} s")
            probe = folder / "store-probe.db"
            print(f"  a fresh SQLite store       {create_store(f'sqlite:///{probe}'):6.2f} s")
        shapes = [
            (workload, trials)
            for workload in args.workload
            for trials in args.trials or ([60, 300] if workload == "sleep" else [60])
        ]
        for (workload, trials), rounds in zip(shapes, measured(shapes, args, folder), strict=True):
            ok &= report(workload, trials, args, rounds)
    return 0 if ok or args.smoke else 1


def measured(shapes: list[tuple[str, int]], args: argparse.Namespace, folder: Path) -> Iterator[Rounds]:
    """Each shape's rounds, in order, as each is measured. A smoke run measures its shapes side
    by side (each still a new process, plain then platform): it checks that every workload runs
    end to end, its figures are not judged, and one after the other took 2-2.5 minutes of the
    test suite."""
    if not args.smoke:
        return (measure(workload, trials, args, folder) for workload, trials in shapes)
    pool = ThreadPoolExecutor(len(shapes), thread_name_prefix="smoke-shape")
    futures = [pool.submit(measure, workload, trials, args, folder) for workload, trials in shapes]
    pool.shutdown(wait=False)
    return (future.result() for future in futures)


@dataclass
class Rounds:
    """Seconds of each round of the plain script and of the platform command, and where each
    of the platform's went (`job_phases`)."""

    plain: list[float] = field(default_factory=list)
    platform: list[float] = field(default_factory=list)
    phases: list[tuple[float, float, float, float]] = field(default_factory=list)


def measure(workload: str, trials: int, args: argparse.Namespace, folder: Path) -> Rounds:
    """Rounds of the plain script and the platform command, alternated."""
    spec = folder / f"spec-{workload}-{trials}.yaml"
    spec.write_text(SPECS[workload].format(trials=trials, folder=folder))
    rounds = Rounds()
    plain, platform, phases = rounds.plain, rounds.platform, rounds.phases
    for round_no in range(args.rounds):
        name = f"{workload}-{trials}-{round_no}"
        # Each shape its own results folder: Tune names the plain run `plain`, and shapes measured
        # side by side would otherwise read each other's experiment state at their end.
        results = folder / f"plain_results-{workload}-{trials}"
        plain_command = [sys.executable, "plain.py", workload, str(trials), str(results), str(folder)]
        plain.append(timed(plain_command, folder, folder / f"plain-{name}.log")[0])
        store = f"sqlite:///{folder / f'store-{name}.db'}"
        command = [sys.executable, "-m", "tuning_platform", spec.name, "--tracking-uri", store]
        command += ["--storage-path", str(folder / "platform_results")]
        seconds, started, ended = timed(command, folder, folder / f"platform-{name}.log")
        platform.append(seconds)
        phases.append(job_phases(store, started, ended))
    return rounds


def report(workload: str, trials: int, args: argparse.Namespace, rounds: Rounds) -> bool:
    """The ratio of medians, each variant's rounds, and where the platform's wall time went
    (from its MLflow records)."""
    plain, platform, phases = rounds.plain, rounds.platform, rounds.phases
    ratio = statistics.median(platform) / statistics.median(plain)
    print(f"\n{workload}: {trials} trials, {args.rounds} round(s), whole process wall time:", flush=True)
    print(f"  plain Ray Tune script  {statistics.median(plain):7.1f} s   rounds {_list(plain)}")
    print(f"  platform command       {statistics.median(platform):7.1f} s   rounds {_list(platform)}")
    print("  the platform's rounds, from its MLflow records (s):")
    for label, index in PHASES:
        print(f"    {label:<44} {_list([phase[index] for phase in phases])}")
    return verdict(
        f"{workload}: whole command, platform / plain at {trials} trials",
        ratio,
        TARGETS.get(trials, 1.10),
        at_most=True,
        unit="x",
        smoke=args.smoke,
    )


# What `job_phases` returns, in order.
PHASES = (
    ("start to the first trial's start", 0),
    ("the trials (first start to last end)", 1),
    ("last trial's end to the parent run's end", 2),
    ("parent run's end to the prompt", 3),
)


def job_phases(store: str, started: float, ended: float) -> tuple[float, float, float, float]:
    """Where a platform command's wall time went: before the first trial, the trials, the job's
    end up to its parent run's end (Tune's end, insight, registration), and after it (the
    summary, Ray's shutdown, the interpreter's exit). Read from the child and parent runs."""
    from mlflow import MlflowClient

    client = MlflowClient(store)
    runs = [run for experiment in client.search_experiments() for run in client.search_runs([experiment.experiment_id])]
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    parent = next(run for run in runs if "mlflow.parentRunId" not in run.data.tags)
    first = min(run.info.start_time for run in children) / 1000
    last = max(run.info.end_time or 0 for run in children) / 1000
    parent_end = (parent.info.end_time or 0) / 1000
    return first - started, last - first, parent_end - last, ended - parent_end


def _list(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


if __name__ == "__main__":
    sys.exit(main())
