"""The strings a job writes to MLflow are a contract with the stores that exist: a job is
resumed, extended and warm-started from them, and users filter the runs table by them."""

from __future__ import annotations

from tuning_platform import records
from tuning_platform.records import TrialStatus, finished_status, trial_run_name


def test_the_names_written_to_mlflow_are_the_ones_existing_stores_hold():
    assert {status.value for status in TrialStatus} == {
        "completed",
        "early_stopped",
        "diverged",
        "failed",
        "interrupted",
        "running",
        "reseed",
    }
    assert (records.PARENT_RUN_ID_TAG, records.TRIAL_ID_TAG, records.TRIAL_STATUS_TAG) == (
        "mlflow.parentRunId",
        "trial_id",
        "trial_status",
    )
    assert (records.RAY_RUN_TAG, records.RESEED_OF_TAG, records.OUTCOME_TAG, records.EPOCHS_RUN_TAG) == (
        "ray_run",
        "reseed_of",
        "outcome",
        "epochs_run",
    )
    assert (records.RUN_NAME_TAG, records.STORAGE_TAG, records.SPEC_HASH_TAG, records.SETTINGS_HASH_TAG) == (
        "ray_run_name",
        "ray_storage_path",
        "spec_hash",
        "settings_hash",
    )
    assert {status.value: run_status for status, run_status in records.RUN_STATUS.items()} == {
        "completed": "FINISHED",
        "early_stopped": "FINISHED",
        "diverged": "FINISHED",
        "failed": "FAILED",
        "interrupted": "KILLED",
    }


def test_a_status_is_its_string_wherever_it_is_written():
    status = TrialStatus.EARLY_STOPPED
    assert status == "early_stopped" and str(status) == "early_stopped" and f"{status}" == "early_stopped"
    assert f"{status:>15}" == "  early_stopped"
    assert TrialStatus("failed") is TrialStatus.FAILED


def test_how_a_trial_ended_follows_its_last_result():
    assert finished_status({"score": 1.0, "epoch": 4}, "score", max_t=4) == TrialStatus.COMPLETED
    assert finished_status({"score": 1.0, "epoch": 2}, "score", max_t=4) == TrialStatus.EARLY_STOPPED
    assert finished_status({"score": 1.0, "epoch": 2}, "score", max_t=None) == TrialStatus.COMPLETED
    assert finished_status({"loss": 1.0, "epoch": 4}, "score", max_t=4) == TrialStatus.FAILED
    assert finished_status({"score": 1.0, "diverged": True}, "score", max_t=4) == TrialStatus.DIVERGED


def test_a_trial_run_is_named_by_its_number_and_first_parameters():
    config = {"lr": 0.0051, "optimizer": "adamw", "batch_size": 64, "dropout": 0.1}
    assert (
        trial_run_name(7, config, ("lr", "optimizer", "batch_size", "dropout")) == "t07 lr=5.1e-3 adamw batch_size=64"
    )
