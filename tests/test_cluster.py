"""Jobs submitted with --address to a real two-node Ray cluster started by the test.

`ray.cluster_utils.Cluster` starts two Ray nodes on this machine, each declaring one GPU that
does not exist: Ray schedules fractional GPUs on them like on real ones, and the trainables
fall back to the CPU. The job runs in its own process, as a user would run it, and ships its
working directory (where a user's own trainable lives) to the cluster.
"""

from __future__ import annotations

import textwrap

import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.helpers import SPECS, assert_ok, job_runs, packing_trainable, ray_cluster, run_cli

pytestmark = pytest.mark.slow

# A user's own trainable, in the job's working directory: nothing but the runtime environment
# brings it to the nodes. Each trial waits until 8 run at once (see `packing_trainable`).
SLEEPY_TRAINABLE = packing_trainable(together=8)

SLEEPY_SPEC = """
name: packing
trainable: sleepy:train
metric: score
mode: max
search:
  algorithm: random
  num_samples: 8
  max_concurrent: 8
  seed: 0
  space:
    x: {type: uniform, low: 0.0, high: 1.0}
  fixed: {epochs: 3}
scheduler: {type: fifo}
resources: {cpu: 1, gpu: 0.25, workers: 1}
tracking: {register_model: false}
"""


@pytest.fixture(scope="module")
def cluster():
    """Two nodes of 4 CPUs and one declared GPU each."""
    with ray_cluster({"num_cpus": 4, "num_gpus": 1}, {"num_cpus": 4, "num_gpus": 1}) as cluster:
        yield cluster


def test_quarter_gpus_pack_eight_trials_at_once_across_both_nodes(cluster, tmp_path, store_uri):
    (tmp_path / "sleepy.py").write_text(textwrap.dedent(SLEEPY_TRAINABLE))
    (tmp_path / "spec.yaml").write_text(SLEEPY_SPEC)
    result = run_cli(
        "spec.yaml",
        "--address",
        cluster.address,
        "--tracking-uri",
        store_uri,
        "--storage-path",
        str(tmp_path / "ray_results"),
        cwd=tmp_path,
        timeout=300,
    )
    assert_ok(result)
    parents, children = job_runs(store_uri, "packing")
    assert len(parents) == 1 and len(children) == 8
    nodes = {c.data.tags["node_id"] for c in children}
    assert len(nodes) == 2, "trials ran on both nodes"
    for child in children:
        assert child.data.metrics["gpu_share"] == 0.25 and child.data.metrics["gpu_ids"] == 1
    # Every trial saw all 8 running at once; with whole GPUs at most 2 could have been.
    assert [c.data.metrics["together"] for c in children] == [8] * 8


def test_builtin_trainable_runs_on_both_nodes_and_is_tracked_by_the_driver(cluster, tmp_path, store_uri):
    # A trial takes a whole node (4 CPUs), so two trials at once must use both nodes.
    result = run_cli(
        str(SPECS / "mlp.yaml"),
        "--smoke-test",
        "--address",
        cluster.address,
        "--tracking-uri",
        store_uri,
        "--storage-path",
        str(tmp_path / "ray_results"),
        "--set",
        "resources.cpu=4",
        "--set",
        "resources.gpu=0.5",
        cwd=tmp_path,
        timeout=300,
    )
    assert_ok(result)
    # The declared GPU is assigned; without a real one the trainable says so and uses the CPU.
    fell_back = "CUDA is not available here; training on CPU" in result.stdout + result.stderr
    assert fell_back is not torch.cuda.is_available()
    client = MlflowClient(store_uri)
    parents, children = job_runs(client, "mlp-breast-cancer")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 4
    assert len({c.data.tags["node_id"] for c in children}) == 2
    for child in children:
        epochs = int(child.data.tags["epochs_run"])
        assert len(client.get_metric_history(child.info.run_id, "val_roc_auc")) == epochs
    assert client.get_model_version_by_alias("mlp-breast-cancer-smoke", "champion") is not None
