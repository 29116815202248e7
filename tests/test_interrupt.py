"""Ctrl-C during a real job: exit 130 and no MLflow run left looking RUNNING."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import ROOT, SPECS

pytestmark = pytest.mark.slow


def test_sigint_stops_the_job_and_marks_its_runs_killed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env["PYTHONPATH"] = str(ROOT)
    process = subprocess.Popen(
        [
            sys.executable,
            "-u",
            "-m",
            "platform.tune",
            str(SPECS / "cnn.yaml"),
            "--tracking-uri",
            uri,
            "--storage-path",
            str(tmp_path / "ray_results"),
            "--set",
            "search.fixed.epochs=50",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen = []
    deadline = time.time() + 180
    for line in process.stdout:  # wait until trials are really training
        seen.append(line)
        if "started with configuration" in line or time.time() > deadline:
            break
    time.sleep(3)
    process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=180)
    output = "".join(seen) + rest
    assert process.returncode == 130, output[-3000:]
    assert "interrupted: Ray saved the job's state under" in output
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("cnn-digits").experiment_id])
    assert runs, "the job had started tracking"
    assert all(run.info.status != "RUNNING" for run in runs)
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parent) == 1 and parent[0].info.status == "KILLED"
