"""The cluster path as users run it: a Ray head with token authentication and an autoscaler whose
GPU workers start from zero, jobs sent with `ray job submit --working-dir .`, stopped with
`ray job stop` and resumed, tracking to a real `mlflow server`.

Ray's fake multi-node provider launches each "node" as real raylet processes on this machine;
its node types are `cluster.yaml`'s worker types with a quarter of their CPUs. The GPUs are
declared, not real: Ray schedules fractions of them as on a real cluster.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.helpers import ROOT, assert_exit, assert_ok, cli_env, job_runs, packing_trainable, run_cli
from tests.servers import RAY, autoscaling_ray_head, mlflow_server

pytestmark = pytest.mark.slow

# `packed` waits until 4 trials run at once; `steady` trains one epoch a second, with a
# checkpoint a resumed trial goes on from.
TRAINABLES = (
    packing_trainable(together=4).replace("def train(", "def packed(")
    + """
import tempfile
from pathlib import Path


def steady(config):
    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            start = int((Path(folder) / "epoch").read_text())
    for epoch in range(start + 1, config["epochs"] + 1):
        time.sleep(1)
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "epoch").write_text(str(epoch))
            result = {"epoch": epoch, "score": config["x"] * epoch}
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))
"""
)

SPEC = """
name: {name}
trainable: cluster_trainables:{function}
metric: score
mode: max
search:
  algorithm: random
  num_samples: {samples}
  seed: 0
  space:
    x: {{type: uniform, low: 0.0, high: 1.0}}
  fixed: {{epochs: {epochs}}}
scheduler: {{type: fifo}}
resources: {{cpu: 0.5, gpu: 0.25, workers: 1}}
tracking: {{register_model: false}}
"""


def _worker_types() -> dict:
    """cluster.yaml's worker types, a quarter of their CPUs each, starting from zero."""
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    types = {}
    for name, node_type in config["available_node_types"].items():
        if name == config["head_node_type"]:
            continue
        resources = dict(node_type["resources"])
        resources["CPU"] = max(1, resources["CPU"] // 4)
        types[name] = {"resources": resources, "node_config": {}, "min_workers": 0, "max_workers": 1}
    return types


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cluster")
    # Ray's default is 3 s between `ray job stop`'s SIGTERM and its SIGKILL; cluster.yaml sets this.
    with (
        autoscaling_ray_head(folder, _worker_types(), head_cpus=2, env={"RAY_JOB_STOP_WAIT_TIME_S": "60"}) as head,
        mlflow_server(folder) as tracking,
    ):
        yield head, tracking.uri, folder


@pytest.fixture(scope="module")
def project(cluster):
    """A user's project folder: the platform, their trainables and specs; what `--working-dir .` ships."""
    _, _, folder = cluster
    project = folder / "project"
    for package in ("platform", "trainables"):
        shutil.copytree(ROOT / package, project / package, ignore=shutil.ignore_patterns("__pycache__"))
    (project / "cluster_trainables.py").write_text(TRAINABLES)
    (project / "packed.yaml").write_text(SPEC.format(name="packed", function="packed", samples=4, epochs=3))
    (project / "steady.yaml").write_text(SPEC.format(name="steady", function="steady", samples=6, epochs=8))
    return project


def _ray(head, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **head.env}
    return subprocess.run([RAY, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _submit(head, project: Path, *args: str, wait: bool = True, submission_id: str | None = None):
    """`ray job submit --working-dir . -- python -m platform.tune ARGS` from the project folder.

    The driver starts in the project folder itself rather than in Ray's unpacked copy of it:
    here every fake node shares one disk, and a node that unpacks the same working directory
    for its trials replaces that copy (`overwrite=True`, ray/_private/runtime_env/working_dir.py),
    leaving the driver in a deleted folder. The trials still import from Ray's copy.
    """
    options = ["--address", head.dashboard, "--working-dir", "."]
    if submission_id:
        options += ["--submission-id", submission_id]
    if not wait:
        options.append("--no-wait")
    command = f"cd {shlex.quote(str(project))} && exec {shlex.join([sys.executable, '-m', 'platform.tune', *args])}"
    return _ray(head, "job", "submit", *options, "--", "bash", "-c", command, cwd=project)


def test_a_submitted_job_gets_a_gpu_node_launched_and_packs_four_trials_on_its_gpu(cluster, project):
    head, uri, _ = cluster
    result = _submit(head, project, "packed.yaml", "--tracking-uri", uri, "--storage-path", str(project.parent / "rr"))
    output = result.stdout + result.stderr
    assert_ok(result, output, tail=4000)
    assert "Failed to merge the Job's runtime env" not in output
    assert "waiting for nodes: " in output and " of 4 trials running" in output
    parents, children = job_runs(uri, "packed")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 4
    nodes = {c.data.tags["node_id"] for c in children}
    assert len(nodes) == 1, "all four on the one GPU node the autoscaler launched"
    for child in children:
        assert child.data.metrics["gpu_share"] == 0.25 and child.data.metrics["together"] == 4
    assert len({c.data.params.get("x") for c in children}) == 4


def test_ray_job_stop_marks_the_runs_killed_and_resume_finishes_the_job(cluster, project):
    head, uri, _ = cluster
    args = ["steady.yaml", "--tracking-uri", uri, "--storage-path", str(project.parent / "rr")]
    started = _submit(head, project, *args, wait=False, submission_id="steady-1")
    assert_ok(started)
    deadline = time.time() + 240
    while time.time() < deadline:  # until trials are mid-way
        _, children = job_runs(uri, "steady", missing_ok=True)
        if sum(c.data.metrics.get("epoch", 0) >= 2 for c in children) >= 2:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(_ray(head, "job", "logs", "--address", head.dashboard, "steady-1", cwd=project).stdout)
    stop = _ray(head, "job", "stop", "--address", head.dashboard, "steady-1", cwd=project)
    assert_ok(stop)
    logs = _ray(head, "job", "logs", "--address", head.dashboard, "steady-1", cwd=project).stdout
    assert "stopped by SIGTERM: Ray saved the job's state" in logs, logs[-4000:]
    parents, children = job_runs(uri, "steady")
    assert [p.info.status for p in parents] == ["KILLED"]
    assert all(c.info.status != "RUNNING" for c in children)
    assert any(c.data.tags["trial_status"] == "interrupted" for c in children)

    resumed = _submit(head, project, *args, "--resume")
    assert_ok(resumed, tail=4000)
    client = MlflowClient(uri)
    parents, children = job_runs(client, "steady")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED" and parents[0].data.tags["resumed"] == "1"
    trial_ids = [c.data.tags["trial_id"] for c in children]
    assert len(trial_ids) == len(set(trial_ids))
    completed = [c for c in children if c.data.tags["trial_status"] == "completed"]
    assert len(completed) == 6
    for child in completed:
        assert [m.step for m in client.get_metric_history(child.info.run_id, "score")] == list(range(1, 9))


def test_on_the_head_address_auto_finds_the_cluster_as_ray_exec_runs_it(cluster, project):
    # `ray exec cluster.yaml "cd ~/tuning-platform && python -m platform.tune ... --address auto"`
    head, uri, folder = cluster
    result = run_cli(
        "packed.yaml", "--address", "auto", "--tracking-uri", uri, "--set", "name=packed-auto",
        "--storage-path", str(folder / "rr"), cwd=project, env=head.env, timeout=300,
    )  # fmt: skip
    assert_ok(result)
    parents, children = job_runs(uri, "packed-auto")
    assert [p.info.status for p in parents] == ["FINISHED"] and len(children) == 4
    assert all(c.data.metrics["gpu_share"] == 0.25 for c in children)


def test_address_from_outside_with_and_without_the_token(cluster, project):
    head, uri, folder = cluster
    common = ["packed.yaml", "--address", head.address, "--tracking-uri", uri]
    no_token = {"RAY_AUTH_MODE": None, "RAY_AUTH_TOKEN": None, "RAY_AUTH_TOKEN_PATH": None, "HOME": str(folder)}
    missing = run_cli(*common, cwd=project, env=no_token, timeout=120)
    assert_exit(missing, 2)
    assert missing.stderr.strip() == (
        "error: packed.yaml: --address: the Ray cluster requires an authentication token: set RAY_AUTH_TOKEN, "
        f"RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (`ray get-auth-token` on the head prints it) (got '{head.address}')"
    ), missing.stderr
    wrong = run_cli(*common, cwd=project, env={**no_token, "RAY_AUTH_TOKEN": "0" * 64}, timeout=120)
    assert_exit(wrong, 2)
    assert len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr
    assert "refused the authentication token from RAY_AUTH_TOKEN" in wrong.stderr
    assert "Traceback" not in missing.stderr + wrong.stderr
    # With the token, as Ray's CLI finds it: a request no node type can ever meet is one line.
    impossible = run_cli(*common, "--set", "resources.cpu=64", cwd=project, env={**no_token, **head.env}, timeout=120)
    assert_exit(impossible, 2)
    last = impossible.stderr.strip().splitlines()[-1]
    assert last.startswith("error: packed.yaml: resources: a trial worker asks for 64 CPU and 0.25 GPU; no node type")
    assert "gpu_worker {CPU: 2, GPU: 1}" in last


# Run on the head's cluster by a driver of its own: what `capacity.cluster_capacity` reads there.
CAN_GROW = """
import json, time
import ray
from tuning_platform.cluster import autoscaler as cluster

ray.init(address="auto")
found, config = cluster.head_monitor()
deadline = time.time() + 60
status = cluster.autoscaler_status()
while not (status or {}).get("autoscaler_report") and time.time() < deadline:
    time.sleep(0.5)  # the monitor's first update
    status = cluster.autoscaler_status()
print(json.dumps({
    "found": found, "types": sorted(config["available_node_types"]) if config else None,
    "mapping": sorted(set(status["autoscaler_report"]["node_type_mapping"].values())),
    "running": cluster.autoscaler_running(),
}))
"""


def test_the_autoscaler_reads_as_one_that_grows_from_its_status_and_from_its_monitor(cluster):
    # Ray's monitor also runs, and writes a status, on a cluster that cannot grow
    # (tests/test_cluster_resources.py): here both say what it launches.
    head, _, _ = cluster
    result = subprocess.run(
        [sys.executable, "-c", CAN_GROW], cwd=ROOT, env={**cli_env(), **head.env, "RAY_ADDRESS": head.address},
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert_ok(result)
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["found"] is True and seen["types"] == sorted(["ray.head.default", *_worker_types()])
    assert "ray.head.default" in seen["mapping"]  # the config's type names, not the read-only `node_<id>`
    assert seen["running"] is True
