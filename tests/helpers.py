"""Running the CLI as a user does, in a subprocess or in this process, and reading what it left
in MLflow; a user's table to train on; a Ray cluster of a few nodes on this machine."""

from __future__ import annotations

import contextlib
import functools
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pytest

from tuning_platform.records import PARENT_RUN_ID_TAG

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient
    from ray.cluster_utils import Cluster

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


def run_cli_side_by_side(
    runs: dict[str, tuple[list[str], Path]], timeout: float = 600
) -> dict[str, subprocess.CompletedProcess]:
    """`run_cli` for several commands at once, name -> (ARGS, cwd): each is a new interpreter
    importing the CLI, and none waits for another to finish. Returns name -> result."""
    started = {
        name: subprocess.Popen(
            [sys.executable, "-m", "platform.tune", *args],
            cwd=cwd,
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (args, cwd) in runs.items()
    }
    results = {}
    try:
        for name, process in started.items():
            out, err = process.communicate(timeout=timeout)
            results[name] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    finally:
        for process in started.values():
            if process.poll() is None:  # another timed out: stop each by its own handle
                process.kill()
                process.communicate()
    return results


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


def popen_cli(folder: Path, args: list[str]) -> subprocess.Popen:
    """`python -u -m platform.tune ARGS` started in `folder` and left running, its output in one
    pipe, in a session of its own so a test can signal it and clean up what a killed driver left."""
    return subprocess.Popen(
        [sys.executable, "-u", "-m", "platform.tune", *args],
        cwd=folder,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


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


def assert_ok(result: Any, output: str | None = None, tail: int = 3000) -> None:
    """The command (a CompletedProcess, a finished Popen, anything with a `returncode`) exited 0;
    else the test fails showing the end of what it printed (see `assert_exit`)."""
    assert_exit(result, 0, output, tail)


def assert_exit(result: Any, code: int, output: str | None = None, tail: int = 3000) -> None:
    """The command exited with `code`; else the test fails with the last `tail` characters of
    its stdout and of its stderr, or of `output` (what a Popen's merged pipe gave)."""
    if result.returncode == code:
        return
    shown = [("output", output)] if output is not None else [("stdout", result.stdout), ("stderr", result.stderr)]
    parts = []
    for name, text in shown:
        if isinstance(text, bytes):
            text = text.decode(errors="replace")
        if text:
            parts.append(f"--- {name}, last {tail} characters ---\n{text[-tail:]}")
    command = getattr(result, "args", "the command")
    pytest.fail(
        f"{command} exited {result.returncode}, not {code}\n" + ("\n".join(parts) or "(it printed nothing)"),
        pytrace=False,
    )


def new_store(folder: Path) -> str:
    """The URI of a new SQLite MLflow store in `folder`, made as a job makes one: a copy of the
    empty store of the installed MLflow (`tracking.store_template`), not MLflow's migrations,
    which cost about a second per store. (The `store_uri` fixture: one in the test's tmp_path.)"""
    from tuning_platform.tracking.store_template import create_from_template

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    create_from_template(uri)
    return uri


def job_runs(client: MlflowClient | str, experiment: str, missing_ok: bool = False) -> tuple[list[Run], list[Run]]:
    """The runs of an experiment's jobs: the parent runs (one per job), and their child runs
    (a trial each, and `selection`'s reseeded runs). `client` may be a tracking URI; an
    experiment that does not exist (yet) is a failure, or no runs with `missing_ok`."""
    from mlflow.tracking import MlflowClient

    if isinstance(client, str):
        client = MlflowClient(client)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        assert missing_ok, f"no experiment {experiment!r} in the store"
        return [], []
    runs = client.search_runs([found.experiment_id], max_results=1000)
    parents = [r for r in runs if PARENT_RUN_ID_TAG not in r.data.tags]
    children = [r for r in runs if PARENT_RUN_ID_TAG in r.data.tags]
    return parents, children


@contextlib.contextmanager
def ray_cluster(head: dict[str, Any], *workers: dict[str, Any]) -> Iterator[Cluster]:
    """A Ray cluster of nodes on this machine (`ray.cluster_utils.Cluster`): a head with `head`'s
    resources (`num_cpus`, `num_gpus`: a declared GPU need not exist) and a node for each of
    `workers`, without an autoscaler; shut down through its own handle on leaving, whatever
    happened, never by a process name."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        for worker in workers:
            cluster.add_node(**worker)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()


# A trainable module (`train`) of half-second epochs, `config["epochs"]` of them.
def slow_mlp(evaluate_s: float) -> str:
    """A module's text: the built-in MLP and its shared loop, each evaluation `evaluate_s` slower,
    so a job can be stopped mid-way. Its `train` runs `TASK`; a test may define its own after."""
    return f"""
import dataclasses
import time

from trainables import mlp
from trainables.loop import run_trial
from trainables.mlp import DataConfig  # noqa: F401 - the data block's schema


def _slow_evaluate(*args):
    time.sleep({evaluate_s})
    return mlp.TASK.evaluate(*args)


TASK = dataclasses.replace(mlp.TASK, evaluate=_slow_evaluate)


def train(config, data=None):
    run_trial(TASK, config, data)
"""


STEADY_TRAINABLE = """
import time

from ray import tune


def train(config):
    for epoch in range(1, config["epochs"] + 1):
        time.sleep(0.5)
        tune.report({"epoch": epoch, "score": config["x"] * epoch})
"""


# A job of STEADY_TRAINABLE (`steady.py` beside the spec): 6 trials of 12 half-second epochs, the
# experiment named by `.replace("NAME", ...)`.
STEADY_SPEC = """
name: NAME
trainable: steady:train
metric: score
mode: max
search:
  algorithm: random
  num_samples: 6
  seed: 0
  space:
    x: {type: uniform, low: 0.0, high: 1.0}
  fixed: {epochs: 12}
scheduler: {type: fifo}
tracking: {register_model: false}
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


@functools.cache
def smoke_data(name: str) -> Any:
    """A built-in trainable's smoke dataset, loaded once per test process: the fast tests of
    several files train on it, and loading the cnn's and the recommender's costs seconds. Read
    only; a test that changes data loads its own."""
    from trainables import builtin

    return builtin(name).load_data({"smoke": True})
