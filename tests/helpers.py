"""Running the CLI as a user does, in a subprocess or in this process, and reading what it left
in MLflow; a user's table to train on."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "search_spaces"


# The cluster and tracking store of whoever runs the tests: never the ones a test's job uses.
CALLERS_VARIABLES = ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 600, env: dict[str, str | None] | None = None
) -> subprocess.CompletedProcess:
    """`python -m platform.tune ARGS` from `cwd` (the project is found through PYTHONPATH);
    `env` adds variables, and removes those given as None."""
    full_env = cli_env()
    for key, value in (env or {}).items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
    return subprocess.run(
        [sys.executable, "-m", "platform.tune", *args],
        cwd=cwd or ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_main(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The CLI run as `run_cli` runs it, in this process through `cli.main` (what the console
    command calls): the same arguments and working directory, stdout and stderr captured, no
    cluster or store of the caller's. It saves a new interpreter's imports of torch, Ray and
    MLflow (4-5 s here); the process state a job changes (signal handlers, environment,
    MLflow's URI) is put back by conftest.py's autouse fixture."""
    from tuning_platform.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_cwd = os.getcwd()
    callers = {key: os.environ.pop(key) for key in CALLERS_VARIABLES if key in os.environ}
    try:
        os.chdir(cwd or ROOT)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args), prog="python -m platform.tune")
    finally:
        os.chdir(saved_cwd)
        os.environ.update(callers)
    return subprocess.CompletedProcess(["python", "-m", "platform.tune", *args], code, out.getvalue(), err.getvalue())


def cli_env() -> dict[str, str]:
    """This process's environment for a CLI a test starts: no cluster or store of the caller's,
    and the project found through PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in CALLERS_VARIABLES}
    env["PYTHONPATH"] = str(ROOT)
    return env


def write_spec(folder: Path, text: str, name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


# A trainable module (`train`) of half-second epochs, `config["epochs"]` of them.
STEADY_TRAINABLE = """
import time

from ray import tune


def train(config):
    for epoch in range(1, config["epochs"] + 1):
        time.sleep(0.5)
        tune.report({"epoch": epoch, "score": config["x"] * epoch})
"""


def packing_trainable(together: int) -> str:
    """A trainable module (`train`) whose trials report where they ran and what Ray gave them.

    Each trial checks in at a named actor and waits (up to two minutes) until `together` trials
    run at once, so a test of packing does not depend on how fast this machine starts them.
    """
    return PACKING_TRAINABLE.replace("TOGETHER", str(together))


PACKING_TRAINABLE = """
import time

import ray
from ray import tune


@ray.remote(num_cpus=0)
class Roll:
    def __init__(self):
        self.present = 0

    def arrive(self):
        self.present += 1
        return self.present

    def count(self):
        return self.present


def train(config):
    context = ray.get_runtime_context()
    # "DEFAULT" keeps the roll out of this trial's placement group, which Tune removes (and
    # every actor in it) when the trial ends, while the others may still be asking.
    roll = Roll.options(
        name="roll", namespace="packing", get_if_exists=True, lifetime="detached", scheduling_strategy="DEFAULT"
    ).remote()
    together = ray.get(roll.arrive.remote())
    deadline = time.time() + 120
    while together < TOGETHER and time.time() < deadline:
        time.sleep(0.2)
        together = ray.get(roll.count.remote())
    for epoch in range(1, 4):
        tune.report({
            "epoch": epoch,
            "score": config["x"] * epoch,
            "node_id": context.get_node_id(),
            "gpu_share": context.get_assigned_resources().get("GPU", 0.0),
            "gpu_ids": len(ray.get_gpu_ids()),
            "together": together,
        })
"""


def customers(rows: int = 400, seed: int = 0) -> pd.DataFrame:
    """A churn table as users have them: an id, numbers with gaps, a few-valued category with
    gaps, a 40-valued one (embedded), a boolean, and a text target that depends on them."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "customer_id": [f"C{i:05d}" for i in range(rows)],
            "tenure": rng.integers(0, 72, rows).astype(float),
            "plan": rng.choice(["basic", "plus", "pro"], rows),
            "country": rng.choice([f"country_{i}" for i in range(40)], rows),
            "autopay": rng.choice([True, False], rows),
            "monthly": rng.normal(50, 15, rows).round(2),
        }
    )
    churn = (frame["plan"] == "basic") & (frame["tenure"] < 24) | (frame["monthly"] > 70)
    frame["churned"] = np.where(churn, "yes", "no")
    frame.loc[frame.index % 9 == 0, "tenure"] = np.nan
    frame.loc[frame.index % 11 == 0, "plan"] = None
    return frame
