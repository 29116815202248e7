"""Registry rules on a real SQLite MLflow store: versions, tags, and who holds `champion`."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch

from platform.tracking import JobTracker, result_metrics, trial_params
from tests.helpers import ROOT


def _register(uri: str, value: float, mode: str = "max") -> tuple[str, bool]:
    tracker = JobTracker(uri, "registry-test")
    tracker.start(run_name="job", tags={}, params={}, artifacts={"spec.yaml": "name: registry-test\n"})
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Softmax(dim=1)).eval()
    version = tracker.register_model(
        model,
        np.ones((2, 3), dtype=np.float32),
        "reg-model",
        "val_accuracy",
        mode,
        value,
        tags={"trial_id": "t1"},
        code_paths=[str(ROOT / "trainables")],
    )
    tracker.finish("FINISHED")
    return version


def test_champion_moves_only_to_a_better_version(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert _register(uri, 0.90) == ("1", True)
    assert _register(uri, 0.80) == ("2", False)  # a worse job registers a version, not the champion
    assert _register(uri, 0.95) == ("3", True)
    client = mlflow.tracking.MlflowClient(uri)
    champion = client.get_model_version_by_alias("reg-model", "champion")
    assert str(champion.version) == "3" and champion.tags["metric_value"] == "0.95"
    assert client.get_model_version("reg-model", "2").tags["trial_id"] == "t1"
    mlflow.set_tracking_uri(uri)
    loaded = mlflow.pyfunc.load_model("models:/reg-model@champion")
    assert loaded.predict(np.ones((4, 3), dtype=np.float32)).shape == (4, 2)


def test_trial_params_leave_out_the_data_block():
    assert trial_params({"lr": 0.1, "optimizer": "adam", "data": {"dataset": "digits"}}) == {
        "lr": "0.1",
        "optimizer": "adam",
    }


def test_result_metrics_keep_the_trainables_numbers_only():
    result = {
        "epoch": 3,
        "val_accuracy": 0.9,
        "train_loss": 0.2,
        "time_this_iter_s": 0.1,
        "training_iteration": 3,
        "done": False,
        "trial_id": "abc",
        "config": {"lr": 1},
        "node_ip": "1.2.3.4",
    }
    assert result_metrics(result) == {"epoch": 3.0, "val_accuracy": 0.9, "train_loss": 0.2}


@pytest.mark.parametrize(
    "value, than, mode, better", [(0.9, 0.8, "max", True), (0.9, 0.8, "min", False), (0.8, 0.8, "max", False)]
)
def test_is_better(value, than, mode, better):
    from platform.tracking import is_better

    assert is_better(value, than, mode) is better


# Four jobs reaching a fresh store at the same instant: MLflow creates a SQLite store's tables
# without a lock, and all four would create the one experiment.
_OPEN_AT_ONCE = """
import sys, time
from platform.tracking import JobTracker
uri, at = sys.argv[1], float(sys.argv[2])
tracker = JobTracker(uri, "shared")
while time.time() < at:
    pass
tracker.start(run_name="job", tags={}, params={"a": "1"}, artifacts={})
tracker.finish("FINISHED")
"""


def test_jobs_opening_a_fresh_sqlite_store_at_once_all_get_their_parent_run(tmp_path):
    import os
    import subprocess
    import sys
    import time

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    at = str(time.time() + 8)  # every process imported MLflow by then
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    jobs = [
        subprocess.Popen([sys.executable, "-c", _OPEN_AT_ONCE, uri, at], env=env, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    errors = [job.communicate(timeout=120)[1] for job in jobs]
    assert [job.returncode for job in jobs] == [0] * 4, "\n".join(errors)[-3000:]
    client = mlflow.tracking.MlflowClient(uri)
    experiment = client.get_experiment_by_name("shared")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 4 and all(run.info.status == "FINISHED" for run in runs)
