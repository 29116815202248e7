"""Trials that crash, crash once, diverge, or never report the metric, in real jobs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from ray import cloudpickle

from tests.helpers import assert_exit, assert_ok, job_runs, new_store, run_cli, write_spec

pytestmark = pytest.mark.slow

# Each trial's fate follows from its sampled x, so the test can tell what each run should say.
TRAINABLE = '''
import json
import math
import tempfile
from pathlib import Path

from ray import tune


def _start_epoch():
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as folder:
        return json.loads(Path(folder, "state.json").read_text())["epoch"]


def fragile(config):
    """x < 0.2 always crashes at epoch 2; 0.2 <= x < 0.4 diverges at epoch 2; the rest crash
    once at epoch 3 and must go on from the epoch-2 checkpoint."""
    x, log = config["x"], Path(config["log_dir"])
    trial_id = tune.get_context().get_trial_id()
    start = _start_epoch()
    with open(log / "starts.txt", "a") as handle:
        handle.write(f"{trial_id} {start}\\n")
    for epoch in range(start + 1, config["epochs"] + 1):
        if x < 0.2 and epoch == 2:
            raise RuntimeError("sensor offline")
        crashed_once = log / f"{trial_id}.crashed"
        if x >= 0.4 and epoch == 3 and not crashed_once.exists():
            crashed_once.write_text("")
            raise RuntimeError("node lost")
        loss = math.nan if (0.2 <= x < 0.4 and epoch >= 2) else 1.0 / epoch
        with tempfile.TemporaryDirectory() as folder:
            Path(folder, "state.json").write_text(json.dumps({"epoch": epoch}))
            tune.report(
                {"epoch": epoch, "loss": loss, "score": 0.5 - (x - 0.6) ** 2 + 0.01 * epoch},
                checkpoint=tune.Checkpoint.from_directory(folder),
            )


def lost_helper(config):
    """x < 0.7: every attempt loses the helper actor it depends on, a crash that is an actor's
    death (as when a node goes); the rest complete."""
    import os

    import ray

    @ray.remote(num_cpus=0)
    class Helper:
        def die(self):
            os._exit(1)

    tune.report({"epoch": 1, "loss": 1.0, "score": config["x"]})
    if config["x"] < 0.7:
        ray.get(Helper.remote().die.remote())
    tune.report({"epoch": 2, "loss": 0.5, "score": config["x"]})


def no_score(config):
    for epoch in range(1, config["epochs"] + 1):
        tune.report({"epoch": epoch, "loss": 1.0 / epoch})
'''

SPEC = """
name: failures-{function}
trainable: my_trainables:{function}
metric: score
mode: max
search:
  algorithm: optuna
  num_samples: {samples}
  seed: 3
  space:
    x: {{type: uniform, low: 0.0, high: 1.0}}
  fixed: {{epochs: {epochs}, log_dir: "{log_dir}"}}
scheduler: {{type: fifo}}
failure: {{max_failures: 1}}
"""


def _job(tmp_path: Path, function: str, samples: int, epochs: int = 4):
    (tmp_path / "my_trainables.py").write_text(TRAINABLE)
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    spec = write_spec(tmp_path, SPEC.format(function=function, samples=samples, epochs=epochs, log_dir=log_dir))
    uri = new_store(tmp_path)
    result = run_cli(str(spec), "--tracking-uri", uri, cwd=tmp_path, timeout=400)
    client = MlflowClient(uri)
    parents, children = job_runs(client, f"failures-{function}")
    return result, client, parents, children, log_dir


def _steps(client, run, key):
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, key))


def test_crashes_retries_and_divergence_are_told_apart(tmp_path):
    result, client, parents, children, log_dir = _job(tmp_path, "fragile", samples=10)
    assert_ok(result)
    by_fate = {"failed": [], "diverged": [], "completed": []}
    for child in children:
        x = float(child.data.params["x"])
        by_fate["failed" if x < 0.2 else "diverged" if x < 0.4 else "completed"].append(child)
    assert all(by_fate.values()), {k: len(v) for k, v in by_fate.items()}  # the seed gives each fate
    assert len(children) == 10 and len(parents) == 1 and parents[0].info.status == "FINISHED"

    # A crash on every attempt: FAILED, the error's last line, and a warning naming the count.
    for child in by_fate["failed"]:
        assert child.info.status == "FAILED"
        assert child.data.tags["trial_status"] == "failed"
        assert child.data.tags["error"].endswith("RuntimeError: sensor offline")
    failed = len(by_fate["failed"])
    assert f"warning: {failed} of 10 trials failed (first: RuntimeError: sensor offline)" in result.stderr

    # Divergence: stopped cleanly at the epoch the loss became NaN, not a crash, not retried.
    starts = (log_dir / "starts.txt").read_text().split()
    for child in by_fate["diverged"]:
        assert child.info.status == "FINISHED" and child.data.tags["trial_status"] == "diverged"
        assert child.data.tags["epochs_run"] == "2"
        assert "error" not in child.data.tags
        assert math.isnan(client.get_metric_history(child.info.run_id, "loss")[-1].value)
        assert _steps(client, child, "score") == [1]  # the search got the worst value; MLflow no fake one
        assert starts.count(child.data.tags["trial_id"]) == 1

    # A crash once: retried from the epoch-2 checkpoint, one child run, each epoch logged once.
    for child in by_fate["completed"]:
        trial_id = child.data.tags["trial_id"]
        assert child.info.status == "FINISHED" and child.data.tags["trial_status"] == "completed"
        assert [starts[i + 1] for i, word in enumerate(starts) if word == trial_id] == ["0", "2"]
        assert _steps(client, child, "score") == [1, 2, 3, 4]

    # Optuna heard the worst possible value for each diverged trial, as a complete trial (a
    # failed one it would ignore), through Tune's saved searcher state.
    state = next((tmp_path / "ray_results").glob("*/searcher-state-*.pkl"))
    study = cloudpickle.loads(state.read_bytes())["_ot_study"]
    assert sum(trial.values == [-math.inf] for trial in study.trials) == len(by_fate["diverged"])

    # The best trial is a completed one, and the summary counts each fate.
    best = max(by_fate["completed"], key=lambda run: run.data.metrics["score"])
    assert f"Best trial {best.data.tags['trial_id']}:" in result.stdout
    assert f"{len(by_fate['diverged'])} diverged, {failed} failed" in result.stdout


def test_trials_whose_last_attempt_dies_with_an_actor_are_failed_not_interrupted(tmp_path):
    # Tune's last saved state can still say RUNNING for such a trial: it drops the dead actor
    # before it handles the failure, and then does not snapshot the trial again.
    result, client, parents, children, _ = _job(tmp_path, "lost_helper", samples=6, epochs=2)
    output = result.stdout + result.stderr
    assert_ok(result)
    assert "interrupted" not in output
    lost = [child for child in children if float(child.data.params["x"]) < 0.7]
    assert 0 < len(lost) < 6, "the seed gives both fates"
    assert f"warning: {len(lost)} of 6 trials failed (first: " in result.stderr
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    for child in children:
        expected = ("FAILED", "failed") if child in lost else ("FINISHED", "completed")
        assert (child.info.status, child.data.tags["trial_status"]) == expected


def test_a_trainable_that_never_reports_the_metric_is_stopped_after_one_result(tmp_path):
    result, client, parents, children, _ = _job(tmp_path, "no_score", samples=2)
    assert_exit(result, 1)
    message = "the trainable never reported the metric 'score'; it reported: epoch, loss"
    assert result.stderr.strip().splitlines()[-1] == f"error: no trial produced the metric 'score': {message}"
    assert "Traceback" not in result.stderr
    assert len(parents) == 1 and parents[0].info.status == "FAILED"
    assert len(children) == 2
    for child in children:
        assert child.info.status == "FAILED" and child.data.tags["trial_status"] == "failed"
        assert child.data.tags["error"] == message
        assert child.data.tags["epochs_run"] == "1"
        assert _steps(client, child, "loss") == [1]
