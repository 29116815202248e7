"""What a job leaves in MLflow when it breaks down between its parent run and its first trial."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import SPECS, cli_env, job_runs

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


def test_a_job_failing_before_its_first_trial_leaves_a_failed_parent_with_the_reason(tmp_path, store_uri):
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, str(SPECS / "mlp.yaml"), "--smoke-test", "--tracking-uri", store_uri],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0, result.stdout[-3000:] + result.stderr[-3000:]
    parents, children = job_runs(store_uri, "mlp-breast-cancer")
    assert len(parents) == 1 and children == [], "one parent run and no child runs"
    assert parents[0].info.status == "FAILED"
    assert parents[0].data.tags["error"] == "RuntimeError: the object store is full"
