"""What a job may ask of a cluster: checked against the nodes alive, or on an autoscaling
cluster against the node types the autoscaler may launch (GPU workers start from zero)."""

from __future__ import annotations

import copy

import pytest
import yaml

from tests.helpers import ROOT
from tests.test_spec import BASE
from tuning_platform.cluster import Capacity, JobError, NodeType, check_resources, concurrent_groups
from tuning_platform.spec import validate_spec


def _spec(cpu: float = 1, gpu: float = 0, workers: int = 1, max_concurrent: int | None = None):
    raw = copy.deepcopy(BASE)
    raw["resources"] = {"cpu": cpu, "gpu": gpu, "workers": workers}
    raw["search"]["max_concurrent"] = max_concurrent
    return validate_spec(raw, "f.yaml")


def _launcher_types() -> Capacity:
    """cluster.yaml as the autoscaler sees it: a CPU head and GPU worker types from zero."""
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    head = config["head_node_type"]
    types = [
        NodeType(name, {k: float(v) for k, v in t["resources"].items()}, 1 if name == head else t["max_workers"])
        for name, t in config["available_node_types"].items()
    ]
    return Capacity(types, autoscaling=True)


CPU_HEAD_ONLY = Capacity([NodeType("10.0.0.1", {"CPU": 8.0}, 1)], autoscaling=False)


def test_a_gpu_trial_is_accepted_on_an_autoscaling_cluster_whose_live_head_has_no_gpu():
    resources, notes = check_resources(_spec(gpu=0.25), _launcher_types(), embedded=False)
    assert resources == {"cpu": 1, "gpu": 0.25} and notes == []


def test_without_an_autoscaler_the_live_nodes_decide():
    with pytest.raises(JobError, match=r"^resources.gpu: trials ask for 0.25 GPU but no node of the cluster has a GPU"):
        check_resources(_spec(gpu=0.25), CPU_HEAD_ONLY, embedded=False)


def test_a_worker_no_node_type_can_hold_is_refused_naming_the_types():
    with pytest.raises(JobError) as caught:
        check_resources(_spec(cpu=64, gpu=1), _launcher_types(), embedded=False)
    message = str(caught.value)
    assert message.startswith("resources: a trial worker asks for 64 CPU and 1 GPU; no node type of the cluster")
    assert "gpu_worker {CPU: 8, GPU: 1} x4" in message and "gpu_worker_4x {CPU: 48, GPU: 4} x1" in message


def test_a_gpu_ask_on_an_autoscaler_without_gpu_types_is_refused():
    cpu_only = Capacity([NodeType("head", {"CPU": 8.0}, 1), NodeType("cpu_worker", {"CPU": 16.0}, 10)], True)
    with pytest.raises(JobError, match="no node type of the cluster has a GPU"):
        check_resources(_spec(gpu=0.5), cpu_only, embedded=False)


def test_data_parallel_trials_count_what_the_cluster_can_grow_to():
    capacity = _launcher_types()  # 4 one-GPU workers and one four-GPU worker: 8 GPUs at most
    resources, _ = check_resources(_spec(cpu=4, gpu=1, workers=4), capacity, embedded=False)
    assert concurrent_groups(_spec(cpu=4, gpu=1, workers=4), resources, capacity) == 2
    with pytest.raises(JobError, match=r"a trial asks for 16 GPUs \(16 x 1\); the cluster has 8 at its largest"):
        check_resources(_spec(cpu=1, gpu=1, workers=16), capacity, embedded=False)


def test_unreadable_node_types_wait_for_the_autoscaler_with_a_note():
    resources, notes = check_resources(_spec(gpu=1), Capacity(None, autoscaling=True), embedded=False)
    assert resources["gpu"] == 1
    assert notes == [
        "note: an autoscaler runs on this cluster but its node types cannot be read from here; "
        "trials wait for the nodes it launches"
    ]


def test_the_embedded_mode_falls_back_to_cpu_when_this_machine_has_no_gpu():
    here = Capacity([NodeType("127.0.0.1", {"CPU": 2.0}, 1)], autoscaling=False)
    resources, notes = check_resources(_spec(gpu=0.5), here, embedded=True)
    assert resources["gpu"] == 0
    assert notes == ["warning: resources.gpu=0.5 but this machine has no GPU; running trials on CPU"]
