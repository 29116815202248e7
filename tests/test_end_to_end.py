"""Real tuning jobs through the CLI: real local Ray, real SQLite MLflow store, real torch.

Each shipped spec runs once with --smoke-test, through `cli.main` in this process (the console
command as a new process is tested in test_user_project.py); the tests below check what a user
would look at afterwards in the MLflow UI and registry.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.artifacts
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.helpers import SPECS, assert_ok, cli_env, job_runs, run_main
from tests.servers import free_port, stop_group, wait_for_http
from trainables import fraud
from tuning_platform.insight import DPI, FIGSIZE, PICTURES
from tuning_platform.records import compact_number
from tuning_platform.spec import load_spec

pytestmark = pytest.mark.slow

SPEC_NAMES = ["cnn", "mlp", "recommender", "fraud"]
# What the champion of a smoke run must beat: well above chance (in the comment), two epochs.
CHAMPION_FLOOR = {
    "cnn": 0.5,  # val_accuracy, 10 classes: 0.1
    "mlp": 0.8,  # val_roc_auc: 0.5
    "recommender": 0.1,  # val_ndcg_at_10 of a random ranking: 0.046
    "fraud": 0.08,  # val_auprc: the smoke set's fraud rate, 0.05
}
# The reference model each trainable logs on the parent run.
BASELINES = {"recommender": "popularity", "fraud": "logistic_regression"}


@dataclass
class Job:
    name: str
    spec: object
    uri: str
    stdout: str
    stderr: str
    returncode: int

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(self.uri)

    @property
    def runs(self):
        """The parent runs and the child runs in the job's experiment."""
        return job_runs(self.client, self.spec.name)

    @property
    def model_name(self) -> str:
        """A smoke job registers under its own name, never beside the real models."""
        return f"{self.spec.registered_model_name}-smoke"


@pytest.fixture(scope="module")
def smoke_job(tmp_path_factory):
    """Runs a shipped spec with --smoke-test the first time it is asked for, then reuses it."""
    done: dict[str, Job] = {}

    def run(name: str) -> Job:
        if name not in done:
            folder = tmp_path_factory.mktemp(f"job-{name}")
            uri = f"sqlite:///{folder / 'mlflow.db'}"  # no store yet: a user's first job makes it
            # gpu=0.5 also exercises the embedded no-GPU path: CPU with one warning, never a hang.
            args = [str(SPECS / f"{name}.yaml"), "--smoke-test", "--tracking-uri", uri]
            args += ["--storage-path", str(folder / "ray_results"), "--set", "resources.gpu=0.5"]
            result = run_main(*args)  # in this process: the console command itself is tested elsewhere
            spec, _, _ = load_spec(SPECS / f"{name}.yaml")
            done[name] = Job(name, spec, uri, result.stdout, result.stderr, result.returncode)
        return done[name]

    return run


@pytest.fixture(params=SPEC_NAMES)
def job(request, smoke_job):
    return smoke_job(request.param)


def test_job_succeeds_and_prints_a_summary(job):
    assert_ok(job)
    assert "Top " in job.stdout and "Best trial" in job.stdout
    assert f"models:/{job.model_name}@champion" in job.stdout
    assert f"mlflow ui --backend-store-uri {job.uri}" in job.stdout
    # Ray sometimes prints a worker's SystemExit traceback while shutting actors down after the
    # job ended (prefixed "(train pid=...)"); only the driver's own output must be clean.
    driver_lines = [line for line in job.stderr.splitlines() if "pid=" not in line]
    assert not any("Traceback" in line for line in driver_lines)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the job's trials use it")
def test_gpu_ask_without_gpu_falls_back_to_cpu_with_one_warning(job):
    output = job.stdout + job.stderr
    assert output.count("but this machine has no GPU; running trials on CPU") == 1


def test_one_parent_run_with_the_spec_and_best_result(job):
    parents, _ = job.runs
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["spec_file"].endswith(f"{job.name}.yaml")
    artifacts = {a.path for a in job.client.list_artifacts(parent.info.run_id)}
    assert {"spec.yaml", "resolved_spec.yaml"} <= artifacts
    assert f"best_{job.spec.metric}" in parent.data.metrics
    assert {"best.lr", "best.batch_size", "best.optimizer"} <= set(parent.data.params)


def test_one_nested_child_run_per_trial_with_params_and_histories(job):
    parents, children = job.runs
    assert len(children) == 4  # --smoke-test runs 4 trials
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert len({c.data.tags["trial_id"] for c in children}) == 4
    statuses = {c.data.tags["trial_status"] for c in children}
    assert statuses <= {"completed", "early_stopped"}
    for child in children:
        assert child.info.status == "FINISHED"
        assert {"lr", "batch_size", "optimizer", "epochs"} <= set(child.data.params)
        assert "data" not in child.data.params
        history = job.client.get_metric_history(child.info.run_id, job.spec.metric)
        epochs_run = int(child.data.tags["epochs_run"])
        assert [m.step for m in history] == list(range(1, epochs_run + 1))
        assert child.data.tags["trial_status"] == ("completed" if epochs_run == 2 else "early_stopped")
        for name in ("train_loss", "val_loss"):
            assert len(job.client.get_metric_history(child.info.run_id, name)) == epochs_run


def test_the_search_is_pictured_and_weighed_on_the_parent_run(job, tmp_path):
    """Importances as parent metrics, four PNGs under search/, the experiment opens on its runs
    table, trial runs with names a person can scan, and the printed links lead there."""
    parents, children = job.runs
    parent = parents[0]
    importances = {k: v for k, v in parent.data.metrics.items() if k.startswith("importance.")}
    # The shipped specs search momentum for sgd only: it has no share among the others (fANOVA
    # weighs what every trial holds), at most one within its branch.
    shared = [p for p, domain in job.spec.search.space.items() if not domain.when]
    assert "momentum" in job.spec.search.space and "momentum" not in shared
    assert set(importances) == {f"importance.{p}" for p in shared}
    assert {k for k in parent.data.metrics if k.startswith("importance_in_branch.")} <= {
        "importance_in_branch.momentum"
    }
    assert sum(importances.values()) == pytest.approx(1.0, abs=1e-6)
    top = max(importances, key=importances.get).removeprefix("importance.")
    assert f"Most important for {job.spec.metric} (fANOVA): {top} " in job.stdout
    pictures = {a.path for a in job.client.list_artifacts(parent.info.run_id, "search")}
    assert pictures == {f"search/{name}" for name in PICTURES}
    folder = Path(
        mlflow.artifacts.download_artifacts(
            run_id=parent.info.run_id, artifact_path="search", tracking_uri=job.uri, dst_path=str(tmp_path)
        )
    )
    for name in PICTURES:
        png = (folder / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
        assert struct.unpack(">II", png[16:24]) == (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI))
    experiment = job.client.get_experiment_by_name(job.spec.name)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    base = f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}"
    assert f"  runs table: {base}/runs?workflowType=machine_learning\n" in job.stdout
    assert f"  this job:   {base}/runs/{parent.info.run_id}?workflowType=machine_learning\n" in job.stdout
    names = sorted(c.info.run_name for c in children)
    assert [n.split()[0] for n in names] == ["t01", "t02", "t03", "t04"]
    assert all(f"lr={compact_number(float(c.data.params['lr']))}" in c.info.run_name for c in children)
    assert f"trials of `{job.name}`" in parent.data.tags["mlflow.note.content"]
    assert parent.data.params["search.sampler.constant_liar"] == "True"


def test_the_champion_is_scored_once_on_the_held_out_test_split(job):
    parents, _ = job.runs
    test_name = "test_" + job.spec.metric.removeprefix("val_")
    score = parents[0].data.metrics[test_name]
    assert 0 < score <= 1
    version = job.client.get_model_version_by_alias(job.model_name, "champion")
    assert float(version.tags[test_name]) == pytest.approx(score)
    validation = float(version.tags["metric_value"])
    assert f"{job.spec.metric}={validation:.4f} (validation), {test_name}={score:.4f} (held-out test" in job.stdout


def test_champion_is_registered_and_predicts(job):
    name = job.model_name
    version = job.client.get_model_version_by_alias(name, "champion")
    assert job.client.search_model_versions(f"name = '{job.spec.registered_model_name}'") == []
    assert version.tags["metric"] == job.spec.metric
    assert float(version.tags["metric_value"]) > CHAMPION_FLOOR[job.name]
    mlflow.set_tracking_uri(job.uri)
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    example = model.input_example
    predictions = model.predict(example)
    assert len(predictions) == len(example)
    assert model.metadata.signature is not None


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baseline_is_logged_on_the_parent_run_and_compared_in_the_summary(smoke_job, name):
    job = smoke_job(name)
    parents, _ = job.runs
    parent = parents[0]
    assert parent.data.tags["baseline"] == BASELINES[job.name]
    baseline = parent.data.metrics[f"baseline_{job.spec.metric}"]
    assert 0 < baseline < 1
    assert f"Baseline ({BASELINES[job.name]}): {job.spec.metric}={baseline:.4f}; best trial" in job.stdout


def _champion(job: Job):
    mlflow.set_tracking_uri(job.uri)
    return mlflow.pyfunc.load_model(f"models:/{job.model_name}@champion")


def test_recommender_champion_scores_user_item_rows_and_rejects_unknown_ids(smoke_job):
    model = _champion(smoke_job("recommender"))
    inputs = model.metadata.signature.inputs.input_names()
    assert inputs == ["user_id", "item_id"]
    example = model.input_example
    scores = model.predict(example).to_numpy().ravel()
    assert len(scores) == len(example) and ((scores >= 0) & (scores <= 1)).all()
    unknown = pd.DataFrame({"user_id": [example["user_id"].iloc[0], 10**9], "item_id": example["item_id"].iloc[:2]})
    with pytest.raises(ValueError, match="unknown user_id 1000000000: the model knows 300 user_ids"):
        model.predict(unknown)


def test_fraud_champion_returns_one_probability_per_transaction(smoke_job):
    model = _champion(smoke_job("fraud"))
    assert model.metadata.signature.inputs.input_names() == fraud.FEATURES
    rows = pd.DataFrame(np.random.default_rng(0).normal(size=(7, len(fraud.FEATURES))), columns=fraud.FEATURES)
    probabilities = model.predict(rows).to_numpy()
    assert probabilities.shape in ((7,), (7, 1))
    assert ((probabilities >= 0) & (probabilities <= 1)).all()


def _model_folder(job: Job, folder) -> Path:
    """The champion's files as MLflow stored them (MLmodel, requirements.txt, code/, examples)."""
    version = job.client.get_model_version_by_alias(job.model_name, "champion")
    location = job.client.get_model_version_download_uri(job.model_name, version.version)
    return Path(mlflow.artifacts.download_artifacts(location, dst_path=str(folder)))


# One of each served form: a tensor (cnn), ids in a table to a torch model (recommender), a raw
# table to a python-function model (mlp; fraud's is the same form and loads in a fresh venv below).
@pytest.mark.parametrize("name", ["cnn", "recommender", "mlp"])
def test_champion_is_served_over_http_and_answers_its_serving_example(smoke_job, name, tmp_path):
    """`mlflow models serve -m models:/NAME@champion --env-manager local`, as the README says."""
    job = smoke_job(name)
    payload = (_model_folder(job, tmp_path / "model") / "serving_input_example.json").read_text()
    port = free_port()
    log = tmp_path / "serve.log"
    command = ["mlflow", "models", "serve", "-m", f"models:/{job.model_name}@champion", "--env-manager", "local"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    with log.open("w") as out:
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / command[0]), *command[1:]],
            cwd=tmp_path,
            env={**cli_env(), "MLFLOW_TRACKING_URI": job.uri},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", server, log, timeout=180)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", payload.encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as answer:
            assert answer.status == 200
            predictions = json.loads(answer.read())["predictions"]
    finally:
        stop_group(server)
    body = json.loads(payload)  # a table (`dataframe_split`) or a tensor (`inputs`, the CNN's images)
    rows = body["dataframe_split"]["data"] if "dataframe_split" in body else body["inputs"]
    assert len(predictions) == len(rows) > 0


def test_champion_loads_in_a_fresh_environment_that_has_only_its_requirements(smoke_job, tmp_path):
    """A new virtual environment, `pip install -r requirements.txt` of the model (torch from
    the local 2.13.0 CPU wheel, as the README installs it), then load and predict."""
    job = smoke_job("fraud")
    folder = _model_folder(job, tmp_path / "model")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    installed = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", str(folder / "requirements.txt")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert_ok(installed)
    code = (
        "import sys, mlflow\n"
        "model = mlflow.pyfunc.load_model(sys.argv[1])\n"
        "example = model.input_example\n"
        "print(len(model.predict(example)), len(example))\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    loaded = subprocess.run(
        [python, "-c", code, str(folder)],
        cwd=elsewhere,
        env={"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_ok(loaded)
    predicted, rows = loaded.stdout.split()
    assert predicted == rows != "0"
