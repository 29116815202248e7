"""A job that tracks to a real `mlflow server` over HTTP, as on a cluster's head node."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import SPECS, run_cli

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """`mlflow server` on 127.0.0.1 with a SQLite store and a local artifact folder it serves."""
    port = _free_port()
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server",
            "--host", "127.0.0.1",
            "--port", str(port),
            "--workers", "1",
            "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination", str(tmp_path / "artifacts"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its worker processes go down with it
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.time() > deadline:
                    raise RuntimeError((tmp_path / "server.log").read_text()[-2000:]) from None
                time.sleep(0.5)
        yield uri
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        log.close()


def test_job_tracks_and_registers_over_http(mlflow_server, tmp_path):
    result = run_cli(
        str(SPECS / "mlp.yaml"),
        "--smoke-test",
        "--tracking-uri",
        mlflow_server,
        "--storage-path",
        str(tmp_path / "ray_results"),
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert not (tmp_path / "mlflow.db").exists(), "nothing may fall back to a local store"
    client = MlflowClient(mlflow_server)  # the REST client
    experiment = client.get_experiment_by_name("mlp-breast-cancer")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED" and len(children) == 4
    assert "spec.yaml" in {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    version = client.get_model_version_by_alias("mlp-breast-cancer", "champion")
    assert version.tags["parent_run_id"] == parents[0].info.run_id
    # The artifacts went to the server's destination, and load back through it.
    assert any((tmp_path / "artifacts").rglob("MLmodel"))
    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pyfunc.load_model("models:/mlp-breast-cancer@champion")
    assert len(model.predict(model.input_example)) == len(model.input_example)
