"""The tool as a user installs it: a wheel, the `tuning-platform` command run from their own
project folder (outside the repository) with their own trainable module, locally and on a
cluster with `--address`; the registered model carries their code and loads elsewhere."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow.artifacts
import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import ROOT, assert_ok, customers, job_runs, ray_cluster
from tuning_platform.cluster.runtime_env import WORKING_DIR_EXCLUDES

pytestmark = pytest.mark.slow

# The user's module: the built-in MLP's task with a serving layer of their own, a class that
# exists only in this file, so the registered model loads only if this file travels with it.
USER_MODULE = """
import dataclasses

from trainables import mlp
from trainables.loop import run_trial

METRICS = mlp.METRICS
DataConfig = mlp.DataConfig


class Served:
    def __init__(self, inner):
        self.inner = inner

    def __call__(self, rows):
        return self.inner(rows)


def _serving(model, info):
    return Served(mlp.TASK.serving_model(model, info))


TASK = dataclasses.replace(mlp.TASK, serving_model=_serving)


def train(config, data=None):
    run_trial(TASK, config, data)
"""

USER_SPEC = """
name: user-project
trainable: mymodule:train
metric: val_roc_auc
mode: max
data: {dataset: csv, path: customers.csv, target: churned}
search:
  algorithm: optuna
  num_samples: 2
  seed: 0
  space:
    lr: {type: loguniform, low: 1e-3, high: 1e-1}
  fixed: {epochs: 2, batch_size: 64}
scheduler: {type: fifo}
resources: {cpu: 1, gpu: 0}
tracking: {register_model: user-model}
"""

LOAD_AND_PREDICT = """
import json, sys
import mlflow
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model("models:/user-model@champion")
import pandas as pd
example = pd.read_json(sys.argv[2], orient="split")
# Raw rows as a user has them: a gap in every column, a category never seen in training.
odd = pd.DataFrame({"tenure": [None, 3.0], "monthly": [None, 80.0], "plan": [None, "enterprise"],
                    "country": ["atlantis", None], "autopay": [None, "True"]})
answer = model.predict(odd)
print(json.dumps({
    "rows": len(model.predict(example)),
    "user_module": sys.modules["mymodule"].__file__,
    "signature": [(c.name, c.type.to_dict()["type"], c.required) for c in model.metadata.signature.inputs.inputs],
    "odd": answer.to_dict(orient="split"),
}))
"""


@pytest.fixture(scope="module")
def tool(tmp_path_factory) -> Path:
    """The project built as a wheel and installed into a folder of its own (its deps are this
    environment's); returns that folder, which holds `bin/tuning-platform`."""
    folder = tmp_path_factory.mktemp("tool")
    # Built from a copy: setuptools writes build/ and *.egg-info/ beside the sources it builds.
    source = folder / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*WORKING_DIR_EXCLUDES, "build", "*.egg-info"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    built = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(folder / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_ok(built)
    (wheel,) = (folder / "dist").glob("tuning_platform-*.whl")
    installed = subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(folder / "site"), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_ok(installed)
    assert not (folder / "site" / "platform").exists(), "the repo-root stand-in is not installed"
    return folder / "site"


@pytest.fixture
def project(tmp_path) -> Path:
    folder = tmp_path / "my-project"
    folder.mkdir()
    (folder / "mymodule.py").write_text(USER_MODULE)
    (folder / "spec.yaml").write_text(USER_SPEC)
    customers().to_csv(folder / "customers.csv", index=False)
    return folder


def _run(tool: Path, project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": f"{tool / 'bin'}:/usr/bin:/bin", "PYTHONPATH": str(tool), "HOME": str(Path.home())}
    return subprocess.run(
        ["tuning-platform", "spec.yaml", *args], cwd=project, env=env, capture_output=True, text=True, timeout=600
    )


def test_the_console_command_runs_a_users_project_and_their_code_travels_with_the_model(tool, project, tmp_path):
    uri = f"sqlite:///{project / 'mlflow.db'}"  # where a spec without tracking.uri puts the store
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tool), "HOME": str(Path.home())}
    where = subprocess.run(
        [sys.executable, "-c", "import tuning_platform, trainables; print(tuning_platform.__file__)"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.stdout.startswith(str(tool)), "the job runs the installed wheel, not the repository"

    result = _run(tool, project)
    assert_ok(result)
    assert "tuning-platform spec.yaml --resume" in result.stdout
    client = MlflowClient(uri)
    champion = client.get_model_version_by_alias("user-model", "champion")
    location = client.get_model_version_download_uri("user-model", champion.version)
    model_folder = Path(mlflow.artifacts.download_artifacts(location, dst_path=str(tmp_path / "download")))
    assert (model_folder / "code" / "mymodule.py").is_file()
    requirements = (model_folder / "requirements.txt").read_text()
    for name in ("torch==", "numpy==", "pandas==", "scikit-learn==", "pydantic=="):
        assert name in requirements, requirements

    # Loaded in a fresh process in another folder: `mymodule` comes from the model's code.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    example = model_folder / "input_example.json"
    loaded = subprocess.run(
        [sys.executable, "-c", LOAD_AND_PREDICT, uri, str(_example_frame(example, elsewhere))],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_ok(loaded)
    answer = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert answer["rows"] > 0
    assert answer["user_module"].startswith(str(tmp_path / "download")) is False
    assert "/code/mymodule.py" in answer["user_module"]
    # The signature names every column of the table, none required; the id is not one. Each is
    # MLflow's `Any`: a typed column refuses the dtypes a table arrives with (int64 from
    # pandas.read_csv, nullable Int64, booleans, category), and the model reads each itself.
    assert answer["signature"] == [
        ["tenure", "any", False],
        ["monthly", "any", False],
        ["plan", "any", False],
        ["country", "any", False],
        ["autopay", "any", False],
    ]
    assert "note: data: column 'customer_id' has a different value in every row" in result.stdout
    odd = answer["odd"]
    assert odd["columns"] == ["no", "yes"] and len(odd["data"]) == 2
    assert all(abs(sum(row) - 1) < 1e-6 for row in odd["data"])


def _example_frame(example: Path, folder: Path) -> Path:
    """MLflow's saved input example as a pandas `split` JSON file."""
    data = json.loads(example.read_text())
    path = folder / "example.json"
    path.write_text(json.dumps({"columns": data["columns"], "data": data["data"]}))
    return path


@pytest.fixture(scope="module")
def cluster():
    """One node of 2 CPUs."""
    with ray_cluster({"num_cpus": 2}) as cluster:
        yield cluster


def test_the_console_command_sends_a_users_project_to_a_cluster(tool, project, cluster):
    result = _run(tool, project, "--address", cluster.address, "--set", "tracking.register_model=false")
    assert_ok(result)
    _, children = job_runs(f"sqlite:///{project / 'mlflow.db'}", "user-project")
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
