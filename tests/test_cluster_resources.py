"""What a job may ask of a cluster: checked against the nodes alive, or on an autoscaling
cluster against the node types the autoscaler may launch (GPU workers start from zero)."""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, SPECS, assert_exit, ray_cluster, run_cli
from tests.test_spec import BASE
from tuning_platform._compat import ray as ray_compat
from tuning_platform.cluster import autoscaler
from tuning_platform.cluster.autoscaler import NodeType, autoscaler_running, autoscaler_status
from tuning_platform.cluster.capacity import Capacity, check_resources, cluster_capacity, concurrent_groups
from tuning_platform.errors import JobError
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


# ---------------------------------------------------------------------------------------------
# Whether the cluster can grow: what Ray's monitor writes to the GCS

# The status Ray's monitor writes on a cluster started without an autoscaling config (a plain
# `ray start`, `ray.cluster_utils.Cluster`): the read-only provider names each node's type after
# its id (ray/autoscaler/_private/readonly/node_provider.py), trimmed to what is read here.
READ_ONLY_STATUS = {
    "monitor_pid": 4034,
    "autoscaler_report": {
        "active_nodes": {"node_cc2c": 1, "node_71be": 1},
        "pending_nodes": [],
        "pending_launches": {},
        "node_type_mapping": {"cc2c": "node_cc2c", "71be": "node_71be"},
        "legacy": True,
    },
    "load_metrics_report": {"resource_demand": [], "pg_demand": []},
}
# The same from Ray's fake multi-node autoscaler (tests/test_autoscaling.py): its config's types.
LAUNCHER_STATUS = {
    "monitor_pid": 5120,
    "autoscaler_report": {
        "active_nodes": {"ray.head.default": 1},
        "pending_nodes": [],
        "pending_launches": {"gpu_worker": 1},
        "node_type_mapping": {"fffffffffffffffffffffffffffffffffffffffffffffffffff00000": "ray.head.default"},
        "legacy": True,
    },
    "load_metrics_report": {"resource_demand": [], "pg_demand": [[{"GPU": 0.25}, 1]]},
}


# What Ray's monitor writes before its first update, on any cluster: no report yet.
NO_REPORT_YET = {"monitor_pid": 1, "load_metrics_report": {}}


@pytest.mark.parametrize(
    ("statuses", "running"),
    [
        ([None], False),
        ([READ_ONLY_STATUS], False),  # a static cluster: nothing launches nodes
        ([LAUNCHER_STATUS], True),
        # A young cluster's monitor: its first report decides, whichever it is.
        ([NO_REPORT_YET, NO_REPORT_YET, READ_ONLY_STATUS], False),
        ([NO_REPORT_YET, LAUNCHER_STATUS], True),
        # One that never reports is no evidence of an autoscaler (it used to count as one, and a
        # static cluster of three nodes printed that an autoscaler ran there).
        ([NO_REPORT_YET] * 50, False),
    ],
)
def test_only_a_status_of_node_types_that_can_be_launched_is_an_autoscaler(monkeypatch, statuses, running):
    written = iter(statuses)
    last = [statuses[0]]

    def status():
        last[0] = next(written, last[0])
        return last[0]

    monkeypatch.setattr(autoscaler, "autoscaler_status", status)
    monkeypatch.setattr(autoscaler, "FIRST_REPORT_POLL_S", 0.001)
    assert autoscaler_running(wait_s=0.5) is running


def test_a_ray_api_change_at_the_status_read_surfaces_instead_of_reading_as_no_autoscaler(monkeypatch):
    from ray._private import ray_constants

    monkeypatch.delattr(ray_constants, "DEBUG_AUTOSCALING_STATUS")  # a renamed constant
    with pytest.raises(AttributeError, match="DEBUG_AUTOSCALING_STATUS"):
        autoscaler_status()


def test_only_a_gcs_that_does_not_answer_reads_as_no_status(monkeypatch):
    import ray.experimental.internal_kv as internal_kv
    from ray.exceptions import RpcError

    monkeypatch.setattr(internal_kv, "global_gcs_client", None)  # not connected
    assert autoscaler_status() is None

    class Gcs:
        def __init__(self, error: Exception):
            self.error = error

        def internal_kv_get(self, key, namespace):
            raise self.error

    monkeypatch.setattr(internal_kv, "global_gcs_client", Gcs(RpcError("GCS unavailable", rpc_code=14)))
    assert autoscaler_status() is None
    monkeypatch.setattr(internal_kv, "global_gcs_client", Gcs(AttributeError("'GcsClient' has no 'internal_kv_get'")))
    with pytest.raises(AttributeError):
        autoscaler_status()


def _sleeping_script(path: Path, *args: str) -> subprocess.Popen:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("import time\ntime.sleep(60)\n")
    return subprocess.Popen([sys.executable, str(path), *args])


def test_the_head_monitor_is_told_from_the_log_monitors_that_share_its_gcs_address(tmp_path):
    # Every node runs `log_monitor.py --gcs-address=...` too. Started before the monitor here, it
    # comes first in pid order, as a worker's does on a head whose process ids have wrapped: CI
    # once read the autoscaling cluster as a static one that way.
    gcs = "192.0.2.77:6379"
    config = {"cluster_name": "c", "available_node_types": {"gpu_worker": {"resources": {"GPU": 1}}}}
    (tmp_path / "autoscaling.yaml").write_text(yaml.safe_dump(config))
    read = ray_compat.monitor_reader()
    log_monitor = _sleeping_script(tmp_path / "ray/_private/log_monitor.py", f"--gcs-address={gcs}")
    try:
        assert read(gcs) == (False, None)
        monitor = _sleeping_script(
            tmp_path / "ray/autoscaler/_private/monitor.py",
            f"--gcs-address={gcs}", f"--autoscaling-config={tmp_path / 'autoscaling.yaml'}",
        )  # fmt: skip
        try:
            if monitor.pid < log_monitor.pid:
                pytest.skip("process ids wrapped between the two starts")
            assert read(gcs) == (True, config)
            assert read("192.0.2.77:6380") == (False, None)
        finally:
            monitor.kill()
            monitor.wait()
    finally:
        log_monitor.kill()
        log_monitor.wait()


@pytest.fixture(scope="module")
def static_cluster():
    """Two nodes of 2 CPUs and no GPU, without an autoscaling config: `ray start` on machines
    of one's own or under Slurm. Ray runs its monitor there all the same (over a read-only node
    provider), which writes an autoscaling status to the GCS."""
    with ray_cluster({"num_cpus": 2, "num_gpus": 0}, {"num_cpus": 2, "num_gpus": 0}) as cluster:
        yield cluster


@pytest.mark.slow
def test_a_worker_no_node_of_a_static_cluster_can_hold_is_refused_not_waited_for(static_cluster, tmp_path, store_uri):
    spec = str(SPECS / "mlp.yaml")
    try:
        result = run_cli(
            spec, "--address", static_cluster.address,
            "--tracking-uri", store_uri, "--storage-path", str(tmp_path / "rr"),
            "--set", "resources.cpu=8", "--set", "resources.gpu=0",
            cwd=tmp_path, timeout=90,
        )  # fmt: skip
    except subprocess.TimeoutExpired as waited:
        pytest.fail(f"the job waited for a node no one will launch: {(waited.stderr or b'')[-2000:]!r}")
    output = result.stdout + result.stderr
    assert_exit(result, 2)
    assert "an autoscaler runs on this cluster" not in output and "Traceback" not in output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"error: {spec}: resources: a trial worker asks for 8 CPU and 0 GPU; no node of the cluster has that much ("
    ), last
    assert last.count("{CPU: 2}") == 2, last


@pytest.mark.slow
def test_the_status_ray_writes_on_a_static_cluster_is_no_autoscaler(static_cluster, monkeypatch):
    import ray

    ray.init(address=static_cluster.address)
    try:
        deadline = time.time() + 60
        status = autoscaler_status()
        while not (status or {}).get("autoscaler_report") and time.time() < deadline:
            time.sleep(0.5)  # the monitor's first update
            status = autoscaler_status()
        assert status and status["autoscaler_report"], status  # the GCS holds a status all the same
        assert autoscaler_running() is False
        # A head this driver cannot ask (Ray Client, one without the head marker): the status decides.
        monkeypatch.setattr(autoscaler, "head_monitor", lambda: None)
        capacity = cluster_capacity(embedded=False)
        assert capacity.autoscaling is False
        assert sorted(t.resources["CPU"] for t in capacity.node_types) == [2.0, 2.0]
    finally:
        ray.shutdown()
