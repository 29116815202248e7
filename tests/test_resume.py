"""A real driver killed (SIGKILL), interrupted (SIGINT) or stopped (SIGTERM), then `--resume`d:
finished trials kept, unfinished ones continued from their checkpoints, one MLflow run each;
on a local storage path and on S3 (a real S3-compatible server on 127.0.0.1)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from tests.helpers import assert_exit, assert_ok, job_runs, popen_cli, run_cli, slow_mlp, write_spec
from tests.servers import s3_server
from tuning_platform.records import RUN_NAME_TAG, STORAGE_TAG

pytestmark = pytest.mark.slow

EPOCHS = 8
SAMPLES = 5

# The built-in MLP, slowed down (tests/helpers.py), noting the epoch each trial (re)starts from.
TRAINABLE = (
    slow_mlp(0.4)
    + """
from pathlib import Path

from ray import tune

from trainables.loop import load_state


def train(config, data=None):
    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            start = load_state(folder)["epoch"]
    with open(Path(config["log_dir"]) / "starts.txt", "a") as handle:
        handle.write(f"{tune.get_context().get_trial_id()} {start}\\n")
    run_trial(TASK, config, data)
"""
)

SPEC = f"""
name: resumable
trainable: slow_mlp:train
metric: val_accuracy
mode: max
search:
  num_samples: {SAMPLES}
  seed: 1
  space:
    lr: {{{{type: loguniform, low: 1.0e-3, high: 1.0e-1}}}}
    optimizer: {{{{type: choice, values: [sgd, adam]}}}}
    momentum: {{{{type: uniform, low: 0.5, high: 0.95, when: {{{{optimizer: sgd}}}}}}}}
  fixed: {{{{epochs: {EPOCHS}, batch_size: 64, log_dir: "{{log_dir}}"}}}}
scheduler: {{{{type: fifo}}}}
"""


def _start_job(tmp_path: Path, uri: str, extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, list[str]]:
    (tmp_path / "slow_mlp.py").write_text(TRAINABLE)
    (tmp_path / "log").mkdir(exist_ok=True)
    spec = write_spec(tmp_path, SPEC.format(log_dir=tmp_path / "log"))
    args = [str(spec.name), "--tracking-uri", uri, *extra]
    return popen_cli(tmp_path, args), args


def _wait_until_mid_job(client: MlflowClient, process: subprocess.Popen, tmp_path: Path, starts: int = 0) -> str:
    """Until one trial has finished and another is mid-way with a checkpoint in the state Ray
    saved, after more than `starts` trial starts; returns the id of that unfinished trial.

    The saved state is what `--resume` restores, and Ray writes it at most every 10 s or after
    a trial's second checkpoint since the last write: a trial MLflow shows at epoch 2 may not
    have a checkpoint there yet, and would rightly start again from scratch.
    """
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        time.sleep(0.3)
        parents, children = job_runs(client, "resumable", missing_ok=True)
        parent = parents[0] if parents else None
        # Four epochs left as MLflow shows it, which is up to a second (the run writer's
        # gathering) behind the trial: a Ctrl-C lands before the trial ends on its own.
        mid_way = {
            r.data.tags["trial_id"]
            for r in children
            if r.info.status == "RUNNING" and 1 <= r.data.metrics.get("epoch", 0) <= EPOCHS - 4
        }
        if parent is None or not mid_way or not any(r.info.status == "FINISHED" for r in children):
            continue
        if sum(len(epochs) for epochs in _starts(tmp_path).values()) <= starts:
            continue  # a resumed job: wait until it runs trials again
        try:  # no snapshot yet, or one being copied into place
            saved = _saved_trials(parent)
        except ValueError:
            continue
        for trial in saved:  # a trial loaded from the saved state is PENDING until it runs again
            if trial.trial_id in mid_way and trial.status == "PENDING" and trial.checkpoint is not None:
                return trial.trial_id
    process.kill()
    raise AssertionError("the job never reached the middle:\n" + process.communicate()[0][-3000:])


def _starts(tmp_path: Path) -> dict[str, list[int]]:
    starts: dict[str, list[int]] = {}
    log = tmp_path / "log" / "starts.txt"
    for line in log.read_text().splitlines() if log.exists() else []:
        trial_id, epoch = line.split()
        starts.setdefault(trial_id, []).append(int(epoch))
    return starts


def _saved_trials(parent: Run) -> list:
    """The trials as Ray's saved state of the job has them: what `--resume` restores."""
    from ray.tune import ExperimentAnalysis

    tags = parent.data.tags
    return ExperimentAnalysis(f"{tags[STORAGE_TAG].rstrip('/')}/{tags[RUN_NAME_TAG]}").trials


def _saved_checkpoint(client: MlflowClient, trial_id: str) -> Path:
    """The checkpoint that Ray's saved state names as the trial's latest."""
    experiment = client.get_experiment_by_name("resumable")
    (parent,) = client.search_runs([experiment.experiment_id], f"tags.{RUN_NAME_TAG} != ''")
    return Path(next(trial for trial in _saved_trials(parent) if trial.trial_id == trial_id).checkpoint.path)


def _check_one_complete_record(client: MlflowClient, resumed: int = 1) -> None:
    """One FINISHED parent; one run per trial, every epoch logged once; the champion registered."""
    parents, children = job_runs(client, "resumable")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["resumed"] == str(resumed)
    trial_ids = [c.data.tags["trial_id"] for c in children]
    assert len(trial_ids) == len(set(trial_ids)), "a trial has two child runs"
    assert all(c.info.status != "RUNNING" for c in children)
    completed = [c for c in children if c.data.tags["trial_status"] == "completed"]
    # A trial Ray had not yet saved when the driver died is run again under a new id; its first
    # run is marked interrupted, never left RUNNING.
    assert len(completed) == SAMPLES
    assert all(c.data.tags["trial_status"] == "interrupted" for c in children if c not in completed)
    for child in completed:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_accuracy")]
        assert steps == list(range(1, EPOCHS + 1)), (child.data.tags["trial_id"], steps)
        # The space is conditional: the searcher Tune saved and restored still draws momentum for sgd only.
        assert ("momentum" in child.data.params) == (child.data.params["optimizer"] == "sgd"), child.data.params
    champion = client.get_model_version_by_alias("resumable", "champion")
    assert champion.tags["parent_run_id"] == parents[0].info.run_id


def _kill_mid_job(tmp_path: Path, uri: str) -> tuple[list[str], str]:
    """Start a job, SIGKILL its driver mid-way; the job's arguments and the mid-way trial."""
    client = MlflowClient(uri)
    process, args = _start_job(tmp_path, uri)
    try:
        mid_trial = _wait_until_mid_job(client, process, tmp_path)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:  # Ray's processes share the driver's fate; anything left goes too
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.stdout.close()
    experiment = client.get_experiment_by_name("resumable")
    assert [r.info.status for r in client.search_runs([experiment.experiment_id], "tags.ray_run_name != ''")] == [
        "RUNNING"
    ]
    return args, mid_trial


def test_a_killed_driver_is_resumed_without_losing_or_duplicating_anything(tmp_path, store_uri):
    args, mid_trial = _kill_mid_job(tmp_path, store_uri)

    result = run_cli(*args, "--resume", cwd=tmp_path, timeout=400)
    assert_ok(result)
    assert "Resuming job resumable-" in result.stdout
    _check_one_complete_record(MlflowClient(store_uri))
    # Ray had saved a checkpoint of it when stopped: it goes on from there, not from scratch.
    starts = _starts(tmp_path)
    assert starts[mid_trial][0] == 0 and starts[mid_trial][-1] > 0, starts


def test_a_trial_whose_saved_checkpoint_was_deleted_goes_on_from_one_that_exists(tmp_path, store_uri):
    """Retention deletes a trial's older checkpoints at once, Ray saves its state every few
    seconds: a driver killed in between leaves a state naming a deleted checkpoint."""
    from trainables.loop import load_state

    args, mid_trial = _kill_mid_job(tmp_path, store_uri)
    named = _saved_checkpoint(MlflowClient(store_uri), mid_trial)
    deleted_epoch = load_state(str(named))["epoch"]
    shutil.rmtree(named)

    result = run_cli(*args, "--resume", cwd=tmp_path, timeout=400)
    assert_ok(result)
    assert f"note: trial {mid_trial}: its last checkpoint was deleted before the driver stopped" in result.stderr
    _check_one_complete_record(MlflowClient(store_uri))  # the trial completed instead of failing
    starts = _starts(tmp_path)
    assert starts[mid_trial][-1] < deleted_epoch, starts


def test_ctrl_c_then_sigterm_on_object_storage_each_stop_the_job_and_resume_finishes_it(
    tmp_path, store_uri, monkeypatch
):
    """Ctrl-C, then `kill` (SIGTERM, as `ray job stop` or a deleted pod sends) of the resumed
    job; Ray keeps the job's state and checkpoints in S3 only, and `--resume` finishes it."""
    client = MlflowClient(store_uri)
    with s3_server(tmp_path) as s3:
        for key, value in s3.items():  # the driver inherits them, and this process reads the state
            monkeypatch.setenv(key, value)
        process, args = _start_job(tmp_path, store_uri, ("--storage-path", "s3://tuning/ray_results"))
        mid_trial = _wait_until_mid_job(client, process, tmp_path)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=180)
        assert_exit(process, 130, output)
        assert re.search(r"trials in \d+s: .*, [1-9] interrupted\n", output), output[-3000:]
        _check_stopped(client)
        command = output.rsplit("continue with: ", 1)[1].splitlines()[0]
        assert command == "python -m platform.tune " + shlex.join([*args, "--resume"])

        started = sum(len(epochs) for epochs in _starts(tmp_path).values())
        process = popen_cli(tmp_path, shlex.split(command)[3:])
        _wait_until_mid_job(client, process, tmp_path, starts=started)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=180)
        assert_exit(process, 143, output)
        assert "stopped by SIGTERM: Ray saved the job's state under s3://tuning/ray_results/resumable-" in output, (
            output[-3000:]
        )
        _check_stopped(client)

        result = run_cli(*shlex.split(command)[3:], cwd=tmp_path, timeout=400)
        assert_ok(result)
        assert not (tmp_path / "ray_results").exists(), "nothing was kept on the local disk"
    _check_one_complete_record(client, resumed=2)
    starts = _starts(tmp_path)
    assert starts[mid_trial][0] == 0 and starts[mid_trial][-1] > 0, starts

    # Finished: nothing to resume, and to extend it the budget must grow.
    again = run_cli(*args, "--resume", cwd=tmp_path, timeout=120)
    assert_exit(again, 2)
    line = again.stderr.strip()
    assert line.startswith("error: spec.yaml: --resume: nothing to resume: job resumable-"), line
    assert line.endswith(
        f"has finished its {SAMPLES} trials; to extend it, raise search.num_samples above {SAMPLES} "
        "(or budget.time_s) with --set"
    ), line


def _check_stopped(client: MlflowClient) -> None:
    """A stopped job: its parent KILLED, no run left RUNNING, some trial interrupted."""
    parents, children = job_runs(client, "resumable")
    assert all(run.info.status != "RUNNING" for run in parents + children)
    assert [r.info.status for r in parents] == ["KILLED"]
    assert any(r.data.tags.get("trial_status") == "interrupted" for r in children)
