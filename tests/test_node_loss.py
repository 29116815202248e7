"""Nodes that vanish mid-job (a crashed machine, a pre-empted spot node): the trials on them go on
from their last checkpoints elsewhere, no epoch is logged twice, the job finishes, and the loss is
not counted as the trial's failure, while its run says which node it moved from.

Ray counts such a loss against `FailureConfig.max_failures` (`_compat/ray.py` says where); the
platform does not, so these jobs run with `failure.max_failures: 0`: a trial that Ray's count had
ended would show here as failed.
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import assert_ok, cli_env, job_runs, new_store, ray_cluster, write_spec
from tuning_platform._compat import ray as ray_compat
from tuning_platform._compat.ray import LostNode, lost_node, node_losses_not_counted, take_lost_node
from tuning_platform.records import MOVED_FROM_NODE_IP_TAG, MOVED_FROM_NODE_TAG, NODE_ID_TAG, NODE_LOSSES_TAG
from tuning_platform.tracking.parent import JobTracker

# ---------------------------------------------------------------------------------------------
# How Ray counts a lost node, and how the platform keeps it from counting


def _trial(max_failures: int = 0) -> Any:
    """A Tune trial as the driver holds one, without a Ray (`stub`), which keeps no error file."""
    from ray.tune.experiment.trial import Trial

    class StubTrial(Trial):
        local_path = None  # no error file: Tune's own business

    trial = StubTrial("__fake", stub=True, max_failures=max_failures, config={"x": 0.5})
    trial.set_status(Trial.RUNNING)
    return trial


def _actor_lost() -> Exception:
    # What the driver gets when the node of a trial's actor crashed (raylet gone, GCS unaware yet).
    from ray.exceptions import ActorUnavailableError

    return ActorUnavailableError("The actor is temporarily unavailable: RpcError: Socket closed", b"\x01" * 16)


def test_ray_counts_a_trial_s_lost_node_against_its_max_failures():
    # Ray 2.60's rule (ray/tune/experiment/trial.py, `_handle_ray_actor_error`): an actor error
    # not flagged as a pre-emption is one failure. If Ray stops counting it, this fails, and the
    # platform's compensation (`node_losses_not_counted`) can go.
    from ray.exceptions import ActorDiedError

    for error in (_actor_lost(), ActorDiedError()):
        trial = _trial(max_failures=0)
        trial.handle_error(error)
        assert (trial.run_metadata.num_failures, trial.should_recover()) == (1, False)


def test_tune_decides_on_a_retry_right_after_handle_error():
    # What `node_losses_not_counted` wraps: Tune's failure path calls `trial.handle_error` and then
    # `trial.should_recover()` (ray/tune/execution/tune_controller.py, `_process_trial_failure`),
    # before any callback hears of the failure, and `on_trial_recover` after a retry is decided.
    from ray.tune.execution.tune_controller import TuneController

    source = inspect.getsource(TuneController._process_trial_failure)
    handled = source.index("trial.handle_error(exception)")
    decided = source.index("trial.should_recover()")
    recovered = source.index("self._callbacks.on_trial_recover(")
    assert handled < decided < recovered


def test_a_lost_node_keeps_the_trial_s_failure_count_and_its_own_errors_still_count(monkeypatch):
    from ray.tune.experiment.trial import Trial

    original = Trial.handle_error
    node = LostNode("ab" * 28, "10.0.0.7")
    verdicts: list[LostNode | None] = [node, None]
    monkeypatch.setattr(ray_compat, "lost_node", lambda error, known=frozenset(): verdicts.pop(0))
    trial = _trial(max_failures=0)
    with node_losses_not_counted():
        trial.handle_error(_actor_lost())  # its node was lost: not the trial's failure
        assert (trial.run_metadata.num_failures, trial.should_recover()) == (0, True)
        assert take_lost_node(trial) == node and take_lost_node(trial) is None  # read once
        trial.handle_error(_actor_lost())  # its process died on a node that is still there
        assert (trial.run_metadata.num_failures, trial.should_recover()) == (1, False)
        assert take_lost_node(trial) is None
        wrapped = Trial.handle_error
        with node_losses_not_counted():  # a run inside a run: one wrapper, put back once
            assert Trial.handle_error is wrapped
        assert Trial.handle_error is wrapped
    assert Trial.handle_error is original  # put back for other Tune runs of the process


def test_an_error_of_the_trial_s_own_code_is_never_a_lost_node():
    # A trainable that raised (also because a helper actor of its own died) is the trial's
    # failure; `lost_node` tells so without asking the cluster.
    from ray.exceptions import ActorDiedError, RayTaskError

    raised = RayTaskError("train", "Traceback ...", ValueError("bad batch"))
    helper_died = RayTaskError("train", "Traceback ...", ActorDiedError()).as_instanceof_cause()
    assert isinstance(helper_died, ActorDiedError)
    assert lost_node(raised) is None and lost_node(helper_died) is None
    assert lost_node(ValueError("x")) is None and lost_node(None) is None


class _Trial:
    """What the MLflow callback reads of a trial, with the temporary state Tune gives it."""

    def __init__(self, trial_id: str):
        from ray.tune.experiment.trial import _TemporaryTrialState

        self.trial_id, self.config, self.last_result = trial_id, {"x": 0.5, "data": {}}, {}
        self.temporary_state = _TemporaryTrialState()


def _lose_node(trial: _Trial, node: LostNode, monkeypatch) -> None:
    """Tune's failure path for a trial whose node was lost, as `node_losses_not_counted` records it."""
    monkeypatch.setattr(ray_compat, "lost_node", lambda error, known=frozenset(): node)
    stub = _trial()
    stub.temporary_state = trial.temporary_state
    with node_losses_not_counted():
        stub.handle_error(_actor_lost())


def test_a_moved_trial_s_run_names_the_node_it_moved_from_and_keeps_each_epoch_once(tmp_path, monkeypatch):
    tracker = JobTracker(new_store(tmp_path), "moved")
    tracker.start(run_name="job", tags={}, params={}, artifacts={})
    callback = tracker.trial_callback("score", max_t=5)
    callback.setup()
    trial = _Trial("t1")
    first, second = LostNode("a1" * 28, "10.0.0.1"), LostNode("b2" * 28, "10.0.0.2")

    def report(epochs: range, node: str) -> None:
        for epoch in epochs:
            result = {"epoch": epoch, "score": epoch / 10, "node_id": node, "node_ip": "10.0.0.9"}
            callback.on_trial_result(0, [], trial, result)
            trial.last_result = result

    callback.on_trial_start(0, [], trial)
    report(range(1, 4), first.node_id)
    _lose_node(trial, first, monkeypatch)
    callback.on_trial_recover(0, [], trial)
    report(range(3, 5), second.node_id)  # from the checkpoint of epoch 2: epoch 3 again
    _lose_node(trial, second, monkeypatch)
    callback.on_trial_recover(0, [], trial)
    _lose_node(trial, second, monkeypatch)  # placed on the dying node once more
    callback.on_trial_recover(0, [], trial)
    report(range(5, 6), "c3" * 28)
    callback.on_trial_complete(0, [], trial)
    callback.on_experiment_end([])

    client = MlflowClient(tracker.tracking_uri)
    (run,) = job_runs(client, "moved")[1]
    assert run.info.status == "FINISHED" and run.data.tags["trial_status"] == "completed"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "score")] == [1, 2, 3, 4, 5]
    tags = run.data.tags
    assert (tags[MOVED_FROM_NODE_TAG], tags[MOVED_FROM_NODE_IP_TAG]) == (second.node_id, second.node_ip)
    assert tags[NODE_LOSSES_TAG] == "2"  # two nodes lost, whatever the retries on the second
    assert tags[NODE_ID_TAG] == "c3" * 28  # where it finished


# ---------------------------------------------------------------------------------------------
# Real jobs on clusters that lose a node

# Each trial reports where it runs; past epoch `hold_at` it waits for the test's `go` file (two
# minutes at most), so the test takes a node away while every trial is mid-way, whatever the
# speed of this machine. A trial goes on from its checkpoint and notes each start.
TRAINABLE = """
import tempfile
import time
from pathlib import Path

import ray
from ray import tune


def gated(config):
    log = Path(config["log_dir"])
    trial_id = tune.get_context().get_trial_id()
    node = ray.get_runtime_context().get_node_id()
    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            start = int((Path(folder) / "epoch").read_text())
    with open(log / "starts.txt", "a") as handle:
        handle.write(f"{trial_id} {start} {node}\\n")
    for epoch in range(start + 1, config["epochs"] + 1):
        deadline = time.time() + 120
        while epoch > config["hold_at"] and not (log / "go").exists() and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.2)
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "epoch").write_text(str(epoch))
            result = {"epoch": epoch, "score": config["x"] * epoch, "node_id": node}
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))
        (log / f"{trial_id}.at").write_text(f"{node} {epoch}")
"""

SPEC = """
name: {name}
trainable: lossy:gated
metric: score
mode: max
search:
  algorithm: random
  num_samples: 2
  seed: 0
  space:
    x: {{type: uniform, low: 0.0, high: 1.0}}
  fixed: {{epochs: {epochs}, hold_at: {hold_at}, log_dir: "{log_dir}"}}
scheduler: {{type: fifo}}
failure: {{max_failures: 0}}
resources: {{cpu: {cpu}, gpu: {gpu}}}
tracking: {{register_model: false}}
"""
EPOCHS, HOLD_AT = 5, 2


def _project(tmp_path: Path, name: str, cpu: float, gpu: float) -> tuple[Path, Path, Path, str]:
    """A user's folder with the trainable and the spec; (folder, spec, log folder, store URI)."""
    project, log = tmp_path / "project", tmp_path / "log"
    project.mkdir()
    log.mkdir()
    (project / "lossy.py").write_text(TRAINABLE)
    text = SPEC.format(name=name, epochs=EPOCHS, hold_at=HOLD_AT, log_dir=log, cpu=cpu, gpu=gpu)
    return project, write_spec(project, text), log, new_store(tmp_path)


def _start_job(project: Path, spec: Path, uri: str, address: str, output: Path, env: dict[str, str] | None = None):
    """The command as a user runs it against the cluster, in the background; all it prints goes to `output`."""
    args = [str(spec), "--address", address, "--tracking-uri", uri, "--storage-path", str(project.parent / "rr")]
    with output.open("w") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "platform.tune", *args],
            cwd=project,
            env={**cli_env(), **(env or {})},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


def _wait_for(what: str, ready: Callable[[], Any], job: subprocess.Popen, output: Path, timeout: float = 240) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = ready()
        if found:
            return found
        if job.poll() is not None:
            pytest.fail(f"the job ended (exit {job.returncode}) before {what}:\n{output.read_text()[-4000:]}")
        time.sleep(0.2)
    job.kill()
    job.wait()
    pytest.fail(f"no {what} in {timeout:.0f} s:\n{output.read_text()[-4000:]}")


def _trials_held(log: Path) -> dict[str, str] | None:
    """Trial id -> node id, once both trials have reported epoch `HOLD_AT` and wait there."""
    seen = {}
    for path in log.glob("*.at"):
        node, epoch = path.read_text().split()
        if int(epoch) >= HOLD_AT:
            seen[path.stem] = node
    return seen if len(seen) == 2 else None


def _finish(job: subprocess.Popen, output: Path, timeout: float = 400) -> str:
    try:
        job.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        job.kill()
        job.wait()
    text = output.read_text()
    assert_ok(job, text, tail=5000)
    return text


def _starts(log: Path) -> dict[str, list[tuple[int, str]]]:
    """Trial id -> the (epoch it started after, node) of each of its attempts."""
    starts: dict[str, list[tuple[int, str]]] = {}
    for line in (log / "starts.txt").read_text().splitlines():
        trial_id, start, node = line.split()
        starts.setdefault(trial_id, []).append((int(start), node))
    return starts


def _assert_moved_and_complete(uri: str, name: str, output: str, lost: str, moved: set[str]) -> dict[str, Any]:
    """Every trial completed with each epoch once; the `moved` trials name the `lost` node."""
    client = MlflowClient(uri)
    parents, children = job_runs(client, name)
    assert [p.info.status for p in parents] == ["FINISHED"] and len(children) == 2
    runs = {child.data.tags["trial_id"]: child for child in children}
    assert set(runs) >= moved
    for trial_id, run in runs.items():
        assert (run.info.status, run.data.tags["trial_status"]) == ("FINISHED", "completed"), trial_id
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "score")]
        assert steps == list(range(1, EPOCHS + 1)), (trial_id, steps)
        if trial_id in moved:
            assert run.data.tags[MOVED_FROM_NODE_TAG] == lost and run.data.tags[NODE_LOSSES_TAG] == "1"
            assert run.data.tags[NODE_ID_TAG] != lost  # it finished elsewhere
            assert f"note: trial {trial_id} lost its node {lost}" in output
        else:
            assert MOVED_FROM_NODE_TAG not in run.data.tags and NODE_LOSSES_TAG not in run.data.tags
    assert "2 completed" in output and "0 failed" in output and "trials failed" not in output
    return runs


@pytest.mark.slow
def test_a_worker_removed_mid_job_moves_its_trial_and_the_job_finishes(tmp_path):
    # Three nodes, the head running no trials, one trial on each worker; one worker goes.
    project, spec, log, uri = _project(tmp_path, "node-loss", cpu=1, gpu=0)
    output = tmp_path / "job.log"
    with ray_cluster({"num_cpus": 0}, {"num_cpus": 1}, {"num_cpus": 1}) as cluster:
        job = _start_job(project, spec, uri, cluster.address, output)
        try:
            held = _wait_for("both trials mid-way", lambda: _trials_held(log), job, output)
            assert len(set(held.values())) == 2, held  # one on each worker
            moved, lost = min(held.items())
            (node,) = [n for n in cluster.worker_nodes if n.node_id == lost]
            cluster.remove_node(node)
            (log / "go").write_text("")
            text = _finish(job, output)
        finally:
            if job.poll() is None:
                job.kill()
                job.wait()
    _assert_moved_and_complete(uri, "node-loss", text, lost, {moved})
    # It went on from its checkpoint, on the other worker; the other trial ran once.
    starts = _starts(log)
    assert [start for start, _ in starts[moved]] == [0, HOLD_AT] and starts[moved][1][1] != lost
    assert all(len(attempts) == 1 for trial_id, attempts in starts.items() if trial_id != moved)
    # A static cluster: no autoscaler is claimed (it was, on such a cluster, before).
    assert "an autoscaler runs on this cluster" not in text and "waiting for nodes" not in text


def _crash(node_id: str) -> None:
    """The node's machine goes away at once: SIGKILL, by process id, to each process of that fake
    node (its raylet and agents name the node on their command line) and to the workers under them."""
    import psutil

    flags = {f"--node_id={node_id}", f"--node-id={node_id}"}
    named = [p for p in psutil.process_iter(["cmdline"]) if flags & set(p.info.get("cmdline") or [])]
    assert any(f"--node_id={node_id}" in (p.info.get("cmdline") or []) for p in named), "no raylet of the node"
    doomed: dict[int, Any] = {}
    for process in named:
        doomed[process.pid] = process
        try:
            doomed.update({child.pid: child for child in process.children(recursive=True)})
        except psutil.NoSuchProcess:
            continue
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue


def _autoscaler_config(folder: Path, **worker_limits: int) -> None:
    """Rewrites the autoscaling config the head's autoscaler reads, with `max_workers` per worker
    type: Ray's v1 autoscaler reads its config file again at every update
    (`StandardAutoscaler.reset`, ray/autoscaler/_private/autoscaler.py line 1071)."""
    path = folder / "autoscaling.json"
    config = json.loads(path.read_text())
    for name, limit in worker_limits.items():
        config["available_node_types"][name]["max_workers"] = limit
    config["max_workers"] = sum(
        t.get("max_workers", 0) for n, t in config["available_node_types"].items() if n != config["head_node_type"]
    )
    written = path.with_suffix(".new")
    written.write_text(json.dumps(config))
    os.replace(written, path)  # never half a file for the autoscaler


def _autoscaler_knows(head: Any, node_id: str, project: Path) -> bool:
    """Whether the autoscaler's status (`ray status`) still lists the node; a status that could
    not be read counts as listing it."""
    from tests.servers import RAY

    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **head.env}
    try:
        status = subprocess.run(
            [RAY, "status", "--address", head.address], cwd=project, env=env, capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        return True
    return status.returncode != 0 or "Node status" not in status.stdout or node_id in status.stdout


@pytest.mark.slow
def test_the_autoscaler_replaces_a_gpu_node_that_crashed_and_the_job_finishes(tmp_path):
    from tests.servers import autoscaling_ray_head

    # One GPU worker type, one node at most: the trials can only finish on a node the autoscaler
    # launches in place of the one that crashed.
    types = {"gpu_worker": {"resources": {"CPU": 2, "GPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": 1}}
    project, spec, log, uri = _project(tmp_path, "gpu-node-loss", cpu=0.5, gpu=0.25)
    output = tmp_path / "job.log"
    with autoscaling_ray_head(tmp_path, types, head_cpus=1, env={}) as head:
        job = _start_job(project, spec, uri, head.address, output, env=head.env)
        try:
            held = _wait_for("both trials mid-way on a launched GPU node", lambda: _trials_held(log), job, output)
            (lost,) = set(held.values())  # both on the one GPU node
            _crash(lost)
            # A cloud drops a crashed or pre-empted instance from its list, and the autoscaler then
            # launches another for the trials that wait. Ray's fake provider never drops a node by
            # itself, and the v1 autoscaler ends it neither as unhealthy (that check skips nodes
            # whose status tag is not up to date, and the fake provider's stay `uninitialized`)
            # nor as idle (the waiting trials count on its resources). So the cloud's part is
            # played here: no gpu_worker for a moment, until the autoscaler has let the crashed
            # one go, then one again.
            _autoscaler_config(tmp_path, gpu_worker=0)
            _wait_for("the crashed node let go", lambda: not _autoscaler_knows(head, lost, project), job, output)
            _autoscaler_config(tmp_path, gpu_worker=1)
            (log / "go").write_text("")
            text = _finish(job, output)
        finally:
            if job.poll() is None:
                job.kill()
                job.wait()
    runs = _assert_moved_and_complete(uri, "gpu-node-loss", text, lost, set(held))
    assert len({run.data.tags[NODE_ID_TAG] for run in runs.values()}) == 1  # the replacement
    for attempts in _starts(log).values():
        assert [start for start, _ in attempts][0] == 0 and attempts[-1][0] == HOLD_AT, attempts
