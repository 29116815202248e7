"""What a job leaves in MLflow when it breaks down between its parent run and its first trial."""

from __future__ import annotations

import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import SPECS, cli_env

pytestmark = pytest.mark.slow

# The real CLI, with the Tune run replaced by a failure (a bug, a Ray that died, a full disk).
DRIVER = """
import sys
import tuning_platform.job as job
from tuning_platform.cli import main

def broken_fit(*args, **kwargs):
    raise RuntimeError("the object store is full")

job.fit = broken_fit
sys.exit(main(sys.argv[1:]))
"""


def test_a_job_failing_before_its_first_trial_leaves_a_failed_parent_with_the_reason(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, str(SPECS / "mlp.yaml"), "--smoke-test", "--tracking-uri", uri],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("mlp-breast-cancer").experiment_id])
    assert len(runs) == 1, "one parent run and no child runs"
    assert runs[0].info.status == "FAILED"
    assert runs[0].data.tags["error"] == "RuntimeError: the object store is full"
