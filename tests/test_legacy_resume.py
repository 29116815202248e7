"""A job saved by an older layout of the package resumes with today's code.

Tune pickles the run's callbacks, its stopper and the searcher into the job's saved state by
import path (`tuning_platform.tracking.TrialRunsCallback`, `tuning_platform.guard.TrialGuard`,
`tuning_platform.sampler.WindowedTPESampler`, ...). The fixture is a job stopped by Ctrl-C on
commit aaa982e, before the modules moved into packages (`tests/fixtures/make_legacy_state.py`
made it); `tuning_platform/_compat/moved.py` keeps those paths importable.
"""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.fixtures.make_legacy_state import LEGACY_DIR
from tests.helpers import run_cli

pytestmark = pytest.mark.slow

FIXTURE = Path(__file__).parent / "fixtures" / "legacy_state.tar.gz"


@pytest.fixture
def legacy_job():
    shutil.rmtree(LEGACY_DIR, ignore_errors=True)
    with tarfile.open(FIXTURE) as archive:
        archive.extractall(LEGACY_DIR.parent, filter="data")
    yield LEGACY_DIR
    shutil.rmtree(LEGACY_DIR, ignore_errors=True)


def test_a_job_saved_before_the_move_into_packages_resumes(legacy_job):
    client = MlflowClient(f"sqlite:///{legacy_job / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "legacy-resume"]
    before = client.search_runs([experiment.experiment_id])
    assert [r.info.status for r in before if "mlflow.parentRunId" not in r.data.tags] == ["KILLED"]

    result = run_cli("spec.yaml", "--resume", cwd=legacy_job, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Resuming job legacy-resume-" in result.stdout

    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert [(p.info.status, p.data.tags["resumed"]) for p in parents] == [("FINISHED", "1")]
    trial_ids = [c.data.tags["trial_id"] for c in children]
    assert len(trial_ids) == len(set(trial_ids)) == 4, trial_ids
    assert {c.data.tags["trial_status"] for c in children} == {"completed"}
    for child in children:  # the trials stopped mid-way went on from their checkpoints: each epoch once
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "score")]
        assert steps == [1, 2, 3, 4, 5], (child.data.tags["trial_id"], steps)
