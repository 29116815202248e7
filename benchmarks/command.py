"""Whole command: `python -m platform.tune SPEC` timed as a user times it, from Enter to the
prompt (a new process: imports, checks, a fresh SQLite store, the trials, the summary; model
registration off), against a plain Ray Tune script running the same trials in a new process.

    python -m benchmarks.command               # 60 and 300 trials, 2 rounds each
    python -m benchmarks.command --smoke       # 8 trials, 1 round

The trials: `benchmarks.workloads:short` (3 epochs of 0.1 s), seeded random search over one
parameter (Tune's BasicVariantGenerator, the same configurations in both), FIFO, 1 CPU each on
all of the machine's CPUs, actors reused in both (the platform's setting; Tune's default starts a
process per trial, which made the plain script 3x slower than the platform here).
Rounds alternate plain and platform. It also times what each
command pays before any trial: the imports, and creating a fresh store.
Targets: platform / plain <= 1.10 at 60 trials, <= 1.05 at 300.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import ROOT, create_store, parser, verdict, workdir

TARGETS = {60: 1.10, 300: 1.05}
SPEC = """
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
"""
PLAIN = """
import sys

import ray
from ray import tune
from ray.tune.search import BasicVariantGenerator

from benchmarks.workloads import short

trials, storage = int(sys.argv[1]), sys.argv[2]
ray.init()
tuner = tune.Tuner(
    tune.with_resources(short, {"cpu": 1}),
    param_space={"x": tune.uniform(0.0, 1.0), "epochs": 3},
    # Actors reused, as the platform runs Tune: without it Ray starts a process per trial, and
    # the comparison would measure that instead of the platform.
    tune_config=tune.TuneConfig(
        metric="score",
        mode="max",
        num_samples=trials,
        search_alg=BasicVariantGenerator(random_state=0),
        reuse_actors=True,
    ),
    run_config=tune.RunConfig(storage_path=storage, name="plain"),
)
best = tuner.fit().get_best_result()
print(f"best x={best.config['x']:.4f} score={best.metrics['score']:.5f}")
ray.shutdown()
"""


def timed(command: list[str], folder: Path, log: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(command, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=3600)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(command[:4])} exited {done.returncode}; see {log}")
    return seconds


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
    p.add_argument("--trials", type=int, nargs="+", default=sorted(TARGETS))
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    if args.smoke:
        args.trials, args.rounds = [8], 1
    ok = True
    repeat = 3
    with workdir(args.workdir) as folder:
        (folder / "plain.py").write_text(PLAIN)
        if not args.smoke:  # a dozen new interpreters: seconds that a smoke run need not spend
            print(f"Before any trial, in a new process (median of {repeat}):", flush=True)
            print(f"  python itself              {import_seconds('pass', repeat):6.2f} s")
            print(f"  import ray.tune            {import_seconds('import ray.tune', repeat):6.2f} s")
            print(f"  import the platform's CLI  {import_seconds('import tuning_platform.cli', repeat):6.2f} s")
            job_modules = import_seconds("import tuning_platform.job", repeat)
            print(f"  plus its job's modules     {job_modules:6.2f} s")
            probe = folder / "store-probe.db"
            print(f"  a fresh SQLite store       {create_store(f'sqlite:///{probe}'):6.2f} s")
        for trials in args.trials:
            spec = folder / f"spec-{trials}.yaml"
            spec.write_text(SPEC.format(trials=trials))
            plain, platform, inside = [], [], []
            for round_no in range(args.rounds):
                plain.append(
                    timed(
                        [sys.executable, "plain.py", str(trials), str(folder / "plain_results")],
                        folder,
                        folder / f"plain-{trials}-{round_no}.log",
                    )
                )
                log = folder / f"platform-{trials}-{round_no}.log"
                command = [sys.executable, "-m", "tuning_platform", spec.name]
                command += ["--tracking-uri", f"sqlite:///{folder / f'store-{trials}-{round_no}.db'}"]
                command += ["--storage-path", str(folder / "platform_results")]
                platform.append(timed(command, folder, log))
                tune_s = re.search(r"(\d+) trials in (\d+)s", log.read_text())
                inside.append(float(tune_s.group(2)) if tune_s else float("nan"))
            ratio = statistics.median(platform) / statistics.median(plain)
            print(f"\n{trials} trials, {args.rounds} round(s), whole process wall time:", flush=True)
            print(f"  plain Ray Tune script  {statistics.median(plain):7.1f} s   rounds {_list(plain)}")
            print(f"  platform command       {statistics.median(platform):7.1f} s   rounds {_list(platform)}")
            print(f"  (the platform's own summary line counts {_list(inside)} s for the trials)")
            ok &= verdict(
                f"whole command, platform / plain at {trials} trials",
                ratio,
                TARGETS.get(trials, 1.10),
                at_most=True,
                unit="x",
                smoke=args.smoke,
            )
    return 0 if ok or args.smoke else 1


def _list(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


if __name__ == "__main__":
    sys.exit(main())
