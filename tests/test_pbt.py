"""Population-based training: Ray's PBT from the spec, each exploit on the trial's MLflow run, the
best trial's schedule (replayable by Ray) and the population's picture on the parent run, the
perturbed hyperparameters really used after a copy, and the registered champion."""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.helpers import SPECS, assert_ok, job_runs, run_main
from trainables.loop import load_optimizer_state, load_state, make_optimizer
from tuning_platform.records import (
    PBT_COPIED_EPOCH_METRIC,
    PBT_EXPLOITS_ARTIFACT,
    PBT_EXPLOITS_TAG,
    PBT_LAST_EXPLOIT_TAG,
    PBT_PICTURE,
    PBT_SCHEDULE_TAG,
)

EPOCHS = 12
INTERVAL = 3
SPACE = "{lr: {type: loguniform, low: 1.0e-4, high: 1.0e-1}, hidden_size: {type: int, low: 16, high: 64}}"
SCHEDULER = (
    f"{{type: pbt, perturbation_interval: {INTERVAL}, quantile_fraction: 0.25, resample_probability: 0.25, "
    "mutations: {lr: {type: loguniform, low: 1.0e-4, high: 1.0e-1}}}"
)


# --- Without Ray's run ---------------------------------------------------------------------------


def test_the_optimizer_goes_on_with_the_configs_hyperparameters_after_a_restore():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    donor = make_optimizer(model.parameters(), {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9})
    model(torch.randn(8, 4)).sum().backward()
    donor.step()
    state = {"optimizer": donor.state_dict(), "config": {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9}}

    perturbed = make_optimizer(model.parameters(), {"optimizer": "sgd", "lr": 0.012, "momentum": 0.9})
    load_optimizer_state(perturbed, state, {"optimizer": "sgd", "lr": 0.012, "momentum": 0.9})
    assert perturbed.param_groups[0]["lr"] == 0.012, "a PBT copy trains with its own, perturbed lr"
    for p in model.parameters():  # the donor's momentum goes on
        assert torch.equal(perturbed.state[p]["momentum_buffer"], donor.state[p]["momentum_buffer"])

    same = make_optimizer(model.parameters(), state["config"])
    load_optimizer_state(same, state, state["config"])
    assert same.state_dict() == donor.state_dict() or str(same.state_dict()) == str(donor.state_dict())

    other = make_optimizer(model.parameters(), {"optimizer": "adam", "lr": 0.001})
    load_optimizer_state(other, state, {"optimizer": "adam", "lr": 0.001})
    assert not other.state, "another optimizer's state does not fit: it starts fresh"


def test_a_schedule_reads_as_replay_reads_it_and_prints_briefly():
    from tuning_platform.execution.pbt import schedule, schedule_policy, schedule_text

    first = {"lr": 0.01, "seed": 0}
    lines = [
        ["t2", "t1", 4, 4, first, {"lr": 0.012, "seed": 0}],
        ["t3", "t2", 8, 8, {"lr": 0.012, "seed": 0}, {"lr": 0.0096, "seed": 0}],
    ]
    segments = schedule(lines, ["lr"])
    assert [(s.first, s.last, s.values["lr"]) for s in segments] == [(1, 4, 0.01), (5, 8, 0.012), (9, None, 0.0096)]
    assert schedule_text(segments, 12) == "lr 0.01 (epochs 1-4) -> 0.012 (5-8) -> 9.6e-3 (9-12)"
    alone = schedule_policy([], "t9", first)
    assert schedule_text(schedule(alone, ["lr"]), 12) == "lr 0.01 (epochs 1-12)"


def test_an_exploit_is_one_line_naming_the_donor_run_and_the_change():
    from tuning_platform.execution.pbt import Exploit

    exploit = Exploit("a_00001", "a_00003", 8, 6, {"lr": 0.01}, {"lr": 0.012})
    assert exploit.line("t04") == "epoch 8: copied trial t04 at epoch 6, lr 0.01 -> 0.012"


def test_a_mutation_stays_in_its_range_and_a_choice_steps_through_its_values():
    from tuning_platform.execution.pbt import WithinBounds, build_pbt, perturbation_interval
    from tuning_platform.spec import validate_spec

    raw = {
        "name": "p",
        "trainable": "mlp",
        "metric": "val_accuracy",
        "mode": "max",
        "search": {
            "algorithm": "random",
            "num_samples": 4,
            "space": {
                "lr": {"type": "loguniform", "low": 1e-4, "high": 1e-1},
                "batch_size": {"type": "choice", "values": [16, 32, 64]},
            },
            "fixed": {"epochs": 10},
        },
        "scheduler": {
            "type": "pbt",
            "mutations": {
                "lr": {"type": "loguniform", "low": 1e-4, "high": 1e-1},
                "batch_size": {"type": "choice", "values": [16, 32, 64]},
            },
        },
    }
    spec = validate_spec(raw, "spec.yaml")
    assert perturbation_interval(spec) == 2  # a quarter of 10 epochs
    scheduler = build_pbt(spec)
    assert scheduler._hyperparam_mutations["batch_size"] == [16, 32, 64]
    assert scheduler._time_attr == "epoch" and scheduler._perturbation_interval == 2
    assert WithinBounds({"lr": (1e-4, 1e-1)})({"lr": 0.12, "batch_size": 16}) == {"lr": 0.1, "batch_size": 16}


def test_a_donor_whose_saved_checkpoint_its_retention_deleted_is_copied_from_its_latest(tmp_path):
    """Ray copies the checkpoint PBT saved at the donor's last perturbation; retention (the best 2
    and the latest) deletes it once the donor trains two better epochs: its latest is copied."""
    from ray.train._internal.session import _TrainingResult
    from ray.tune import Checkpoint
    from ray.tune.schedulers.pbt import _PBTTrialState

    from tuning_platform.execution.pbt import _keep_a_checkpoint_to_copy, build_pbt
    from tuning_platform.spec import validate_spec

    class Donor:
        trial_id, experiment_tag = "d_00001", "1_lr=0.01"
        latest_checkpoint_result: _TrainingResult | None = None

    scheduler = build_pbt(validate_spec(_pbt_spec(), "spec.yaml"))
    donor = Donor()
    state = scheduler._trial_state[donor] = _PBTTrialState(donor)
    (tmp_path / "checkpoint_000005").mkdir()
    latest = Checkpoint(str(tmp_path / "checkpoint_000005"))
    donor.latest_checkpoint_result = _TrainingResult(checkpoint=latest, metrics={"epoch": 6, "val_loss": 0.1})

    saved = Checkpoint(str(tmp_path / "checkpoint_000002"))
    state.last_checkpoint, state.last_result = saved, {"epoch": 3, "val_loss": 0.3}
    _keep_a_checkpoint_to_copy(scheduler, donor)
    assert state.last_checkpoint.path == latest.path and state.last_result["epoch"] == 6, "deleted: the latest"

    (tmp_path / "checkpoint_000002").mkdir()
    state.last_checkpoint, state.last_result = saved, {"epoch": 3, "val_loss": 0.3}
    _keep_a_checkpoint_to_copy(scheduler, donor)
    assert state.last_checkpoint is saved and state.last_result["epoch"] == 3, "still there: Ray's choice"


def test_a_new_copy_replaces_the_trials_earlier_copies_and_nothing_else(tmp_path):
    import pyarrow.fs

    from tuning_platform.execution.pbt import _delete_earlier_copies

    for name in ("pbt_copy_at_3_of_a_epoch_3", "pbt_copy_at_6_of_b_epoch_5", "checkpoint_000007"):
        (tmp_path / name).mkdir()
    (tmp_path / "pbt_copy_notes.txt").write_text("a file is not a copy")
    _delete_earlier_copies(pyarrow.fs.LocalFileSystem(), str(tmp_path), keep="pbt_copy_at_6_of_b_epoch_5")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint_000007",
        "pbt_copy_at_6_of_b_epoch_5",
        "pbt_copy_notes.txt",
    ]


def _pbt_spec() -> dict:
    return {
        "name": "p",
        "trainable": "mlp",
        "metric": "val_loss",
        "mode": "min",
        "search": {
            "algorithm": "random",
            "num_samples": 4,
            "space": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-1}},
            "fixed": {"epochs": 12},
        },
        "scheduler": {"type": "pbt", "mutations": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-1}}},
    }


def test_a_resumed_pbt_run_goes_on_from_the_epoch_it_copied():
    from mlflow.entities import Metric

    from tuning_platform.tracking.callback import lineage_epoch

    history = [Metric("m", 0.5, 1000 + step, step) for step in range(1, 9)]
    assert lineage_epoch(history, []) == 8
    assert lineage_epoch(history, [Metric(PBT_COPIED_EPOCH_METRIC, 6.0, 2000, 8)]) == 6  # copied after epoch 8
    later = [*history, Metric("m", 0.6, 3000, 7)]
    assert lineage_epoch(later, [Metric(PBT_COPIED_EPOCH_METRIC, 6.0, 2000, 8)]) == 7


def test_the_pbt_internals_the_platform_uses_are_there():
    """_compat/ray.py names them; a Ray that changes them fails here, not in a job."""
    from ray.train._internal.checkpoint_manager import _CheckpointManager
    from ray.tune.schedulers import pbt

    from tuning_platform._compat.ray import PBT_EXPLOIT, PBT_TRIAL_STATE

    exploit = getattr(pbt.PopulationBasedTraining, PBT_EXPLOIT)
    assert list(inspect.signature(exploit).parameters) == ["self", "tune_controller", "trial", "trial_to_clone"]
    assert "checkpoint_manager._latest_checkpoint_result" in inspect.getsource(exploit)
    assert f"self.{PBT_TRIAL_STATE}" in inspect.getsource(pbt.PopulationBasedTraining.__init__)
    assert "self.last_result" in inspect.getsource(pbt._PBTTrialState.__init__)
    assert "self.last_score" in inspect.getsource(pbt._PBTTrialState.__init__)
    assert hasattr(_CheckpointManager(None), "_latest_checkpoint_result")


def test_the_population_picture_draws_the_exploits():
    from tuning_platform.insight.pbt import lineage_segments, plot_population

    logged = [(10, 1, 0.5), (20, 2, 0.6), (30, 3, 0.55), (40, 3, 0.7), (50, 4, 0.72)]
    a = lineage_segments(logged, [35])  # copied at epoch 3 the donor's epoch 2, went on at 3
    assert a == [[(1, 0.5), (2, 0.6), (3, 0.55)], [(3, 0.7), (4, 0.72)]]
    same_epoch = lineage_segments([(10, 1, 0.5), (20, 2, 0.6), (40, 3, 0.7)], [30])  # copied at 2 the donor's 2
    assert same_epoch == [[(1, 0.5), (2, 0.6)], [(3, 0.7)]]
    curves = {"a": a, "b": [[(1, 0.6), (2, 0.7), (3, 0.75)]]}
    png = plot_population("val_accuracy", curves, [("a", "b", 3, 2)], {"a": "t01", "b": "t02"}, "a")
    assert png is not None and png.startswith(b"\x89PNG")


# --- One PBT job, read by every test below --------------------------------------------------------


@pytest.fixture(scope="module")
def pbt_job(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pbt")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    result = run_main(
        str(SPECS / "mlp.yaml"),
        "--tracking-uri",
        uri,
        "--storage-path",
        str(folder / "ray_results"),
        "--set",
        "metric=val_loss",  # the smoke set's roc auc ties at its top: a loss ranks the population
        "--set",
        "mode=min",
        "--set",
        "search.algorithm=random",
        "--set",
        "search.num_samples=4",
        "--set",
        "search.max_concurrent=",  # the whole population alive; 2 CPUs train 2 at once
        "--set",
        f"search.space={SPACE}",
        "--set",
        f"search.fixed={{epochs: {EPOCHS}, batch_size: 32, optimizer: sgd}}",
        "--set",
        f"scheduler={SCHEDULER}",
        "--set",
        "data.smoke=true",
        cwd=folder,
    )
    assert_ok(result)
    print(result.stdout)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    (parent,), children = job_runs(client, "mlp-breast-cancer")
    return {"result": result, "uri": uri, "client": client, "parent": parent, "children": children, "folder": folder}


@pytest.mark.slow
def test_a_trial_copied_another_and_its_run_shows_the_new_lr_from_that_epoch(pbt_job):
    client, children = pbt_job["client"], pbt_job["children"]
    copied = [run for run in children if run.data.tags.get(PBT_EXPLOITS_TAG)]
    assert copied, "no trial of the population copied another"
    run = copied[0]
    assert run.data.tags[PBT_LAST_EXPLOIT_TAG].startswith("epoch ")
    assert " copied trial t0" in run.data.tags[PBT_LAST_EXPLOIT_TAG]
    copy = client.get_metric_history(run.info.run_id, PBT_COPIED_EPOCH_METRIC)[0]
    lrs = sorted(client.get_metric_history(run.info.run_id, "config.lr"), key=lambda m: (m.timestamp, m.step))
    before = [m for m in lrs if m.timestamp < copy.timestamp]
    after = [m for m in lrs if m.timestamp > copy.timestamp]
    assert before and after, "config.lr is logged at every epoch, before and after the copy"
    assert before[-1].step == copy.step, "the copy happened at the trial's epoch then"
    assert after[0].step == int(copy.value) + 1, "after the copy the trial goes on from the donor's epoch"
    assert after[0].value != before[-1].value, "the perturbed lr takes over at that epoch"
    lines = Path(client.download_artifacts(run.info.run_id, PBT_EXPLOITS_ARTIFACT, str(pbt_job["folder"])))
    assert run.data.tags[PBT_LAST_EXPLOIT_TAG] in lines.read_text().splitlines()
    # The study still reads a last value at the last epoch for every trial.
    from tuning_platform.search.study import recorded_trials

    parent = pbt_job["parent"]
    trials = recorded_trials(client, parent.info.experiment_id, parent.info.run_id, "val_loss")
    assert all(t.history[-1][0] == EPOCHS and math.isfinite(t.last_value or math.nan) for t in trials)


@pytest.mark.slow
def test_each_trial_trained_its_last_epochs_with_the_lr_of_its_config(pbt_job):
    """A copy restores the donor's optimizer state, lr included: the loop sets it back."""
    checkpoints = [p for p in (pbt_job["folder"] / "ray_results").glob("*/*/checkpoint_*") if p.is_dir()]
    latest: dict[str, Path] = {}
    for path in checkpoints:
        trial = path.parent.name
        if trial not in latest or path.name > latest[trial].name:
            latest[trial] = path
    assert len(latest) == 4
    (exploits,) = (pbt_job["folder"] / "ray_results").glob("*/pbt_global.txt")
    copies = len(exploits.read_text().splitlines())
    assert 1 <= copies <= 4 * (EPOCHS // INTERVAL - 1), "a trial copies at most at each perturbation before its end"
    for trial in latest.values():  # a trial keeps its latest copy of another's checkpoint only
        assert len(list(trial.parent.glob("pbt_copy_at_*"))) <= 1
    assert len(list((pbt_job["folder"] / "ray_results").glob("*/*/pbt_copy_at_*"))) >= 1
    for trial, path in latest.items():
        state = load_state(str(path))
        assert state["epoch"] == EPOCHS
        assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(state["config"]["lr"])
        policy = path.parent.parent / f"pbt_policy_{trial.removeprefix('train_')}.txt"
        if policy.exists():  # it copied another: the loop got the perturbed config of its last copy
            last = json.loads(policy.read_text().splitlines()[-1])
            assert state["config"]["lr"] == pytest.approx(last[5]["lr"])


@pytest.mark.slow
def test_the_parent_has_the_best_schedule_replayable_by_ray_and_the_picture(pbt_job, tmp_path):
    from ray.tune.schedulers import PopulationBasedTrainingReplay

    client, parent = pbt_job["client"], pbt_job["parent"]
    names = [a.path for a in client.list_artifacts(parent.info.run_id, "pbt")]
    assert PBT_PICTURE in names
    schedules = [name for name in names if name.startswith("pbt/pbt_policy_")]
    assert len(schedules) == 1
    path = client.download_artifacts(parent.info.run_id, schedules[0], str(tmp_path))
    replay = PopulationBasedTrainingReplay(path)
    assert "lr" in replay.config and replay.config["epochs"] == EPOCHS
    for line in Path(path).read_text().splitlines():
        assert len(json.loads(line)) == 6
    out = pbt_job["result"].stdout
    assert "trials of population-based training" in out
    assert "PBT schedule of trial" in out and "lr " in out.split("PBT schedule of trial", 1)[1]


@pytest.mark.slow
def test_show_prints_the_configuration_each_trial_ended_with_as_the_job_did(pbt_job, capsys):
    """A trial's params are those it started with; `show` reads the end from `pbt_config`."""
    from tuning_platform.records import PBT_CONFIG_TAG

    copied = [run for run in pbt_job["children"] if run.data.tags.get(PBT_EXPLOITS_TAG)]
    assert copied and all(json.loads(run.data.tags[PBT_CONFIG_TAG]).keys() == {"lr", "hidden_size"} for run in copied)
    from tuning_platform.cli import main

    assert main(["show", pbt_job["parent"].info.run_id, "--tracking-uri", pbt_job["uri"]]) == 0
    shown = capsys.readouterr().out
    (job_line,) = [line for line in pbt_job["result"].stdout.splitlines() if "config at its end:" in line]
    assert job_line.strip() in [line.strip() for line in shown.splitlines()], shown[-2000:]


@pytest.mark.slow
def test_the_champion_is_the_best_trials_checkpoint_and_names_its_schedule(pbt_job):
    import mlflow
    import pandas as pd

    client = pbt_job["client"]
    mlflow.set_tracking_uri(pbt_job["uri"])
    version = client.get_model_version_by_alias("mlp-breast-cancer", "champion")
    assert version.tags[PBT_SCHEDULE_TAG].startswith(f"runs:/{pbt_job['parent'].info.run_id}/pbt/pbt_policy_")
    model = mlflow.pyfunc.load_model("models:/mlp-breast-cancer@champion")
    example = model.input_example
    frame = example if isinstance(example, pd.DataFrame) else pd.DataFrame(example)
    predicted = model.predict(frame)
    assert len(predicted) == len(frame)


# --- A PBT job stopped by SIGTERM mid-way, then resumed -------------------------------------------

SLOW_SPEC = f"""
name: pbt-resumable
trainable: slow_mlp:train
metric: val_loss
mode: min
data: {{smoke: true}}
search:
  algorithm: random
  num_samples: 4
  seed: 3
  space:
    lr: {{type: loguniform, low: 1.0e-4, high: 1.0e-1}}
  fixed: {{epochs: {EPOCHS}, batch_size: 32, optimizer: sgd}}
scheduler: {SCHEDULER}
"""


@pytest.mark.slow
def test_a_pbt_job_stopped_by_sigterm_after_an_exploit_is_resumed_to_its_end(tmp_path):
    import os
    import shlex
    import signal
    import time

    from mlflow.tracking import MlflowClient

    from tests.helpers import assert_exit, popen_cli, run_cli, slow_mlp, write_spec

    (tmp_path / "slow_mlp.py").write_text(slow_mlp(0.3))
    spec = write_spec(tmp_path, SLOW_SPEC)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [spec.name, "--tracking-uri", uri]
    process = popen_cli(tmp_path, args)
    client = MlflowClient(uri)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None:
            time.sleep(0.3)
            _, children = job_runs(client, "pbt-resumable", missing_ok=True)
            # Stopped after a copy, while every trial still has epochs to train.
            if any(r.data.tags.get(PBT_EXPLOITS_TAG) for r in children) and all(
                r.info.status == "RUNNING" and r.data.metrics.get("epoch", 0) < EPOCHS - 1 for r in children
            ):
                break
        assert process.poll() is None, "the job ended before it could be stopped after an exploit"
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=180)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert_exit(process, 143, output)
    command = output.rsplit("continue with: ", 1)[1].splitlines()[0]
    result = run_cli(*shlex.split(command)[3:], cwd=tmp_path, timeout=400)
    assert_ok(result)

    (parent,), children = job_runs(client, "pbt-resumable")
    assert parent.info.status == "FINISHED" and parent.data.tags["resumed"] == "1"
    trial_ids = [c.data.tags["trial_id"] for c in children]
    assert len(trial_ids) == len(set(trial_ids)) == 4, "one run per trial, resumed or not"
    from tuning_platform.search.study import recorded_trials

    trials = recorded_trials(client, parent.info.experiment_id, parent.info.run_id, "val_loss")
    assert all(t.status == "completed" and t.history[-1][0] == EPOCHS for t in trials), [
        (t.trial_id, t.status, t.history[-1:]) for t in trials
    ]
    for child in children:  # every epoch of the lineage it ended with is in MLflow
        steps = {m.step for m in client.get_metric_history(child.info.run_id, "val_loss")}
        assert steps == set(range(1, EPOCHS + 1)), (child.data.tags["trial_id"], sorted(steps))
    names = [a.path for a in client.list_artifacts(parent.info.run_id, "pbt")]
    assert PBT_PICTURE in names and any(n.startswith("pbt/pbt_policy_") for n in names)
    champion = client.get_model_version_by_alias("pbt-resumable", "champion")
    assert champion.tags[PBT_SCHEDULE_TAG].startswith(f"runs:/{parent.info.run_id}/pbt/pbt_policy_")
