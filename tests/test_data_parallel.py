"""Trials as Ray Train data-parallel groups (resources.workers > 1), on CPU with gloo."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import SPECS, assert_ok, job_runs, run_cli
from trainables.loop import worker_share


@pytest.mark.parametrize("batches, world_size", [(10, 2), (11, 2), (7, 3), (2, 2)])
def test_every_worker_gets_the_same_number_of_distinct_batches(batches, world_size):
    shares = [worker_share(list(range(batches)), rank, world_size) for rank in range(world_size)]
    assert len({len(share) for share in shares}) == 1, "DDP would wait forever on a worker with one step more"
    taken = [b for share in shares for b in share]
    assert len(taken) == len(set(taken)) > batches - world_size


@pytest.mark.slow
def test_two_worker_trials_train_report_and_register(tmp_path, store_uri):
    result = run_cli(
        str(SPECS / "mlp.yaml"),
        "--smoke-test",
        "--set",
        "resources.workers=2",
        "--set",  # one trial of two workers: a Ray Train group starts in about 25 s here
        "search.num_samples=1",
        "--tracking-uri",
        store_uri,
        "--storage-path",
        str(tmp_path / "ray_results"),
        cwd=tmp_path,
        timeout=400,
    )
    assert_ok(result)
    assert "Setting up process group" in result.stdout + result.stderr  # really DDP
    client = MlflowClient(store_uri)
    _, children = job_runs(client, "mlp-breast-cancer")
    assert len(children) == 1
    for child in children:
        epochs = int(child.data.tags["epochs_run"])
        history = client.get_metric_history(child.info.run_id, "val_roc_auc")
        assert [m.step for m in history] == list(range(1, epochs + 1))
        assert child.data.tags["trial_status"] in ("completed", "early_stopped")
    # Ray Train kept the checkpoints; the best one was rebuilt and registered.
    version = client.get_model_version_by_alias("mlp-breast-cancer-smoke", "champion")
    assert float(version.tags["metric_value"]) > 0.8
    mlflow.set_tracking_uri(store_uri)
    model = mlflow.pyfunc.load_model("models:/mlp-breast-cancer-smoke@champion")
    assert len(model.predict(model.input_example)) == len(model.input_example)
