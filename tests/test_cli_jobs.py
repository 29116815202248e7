"""What a team asks a store from the command line: `jobs` (a store's jobs, newest first, from
their parent runs), `show JOB` (a job's summary again) and `--version`.

The fast tests read a store whose parent runs the job's own code wrote (`open_parent_run`,
`log_outcome`), with versions in a real registry; one real job (marked slow) checks that `show`
prints what the job printed at its end and that `jobs` lists it, by the real command too.
"""

from __future__ import annotations

import getpass
import importlib.metadata
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import SPECS, assert_exit, assert_ok, job_runs, new_store, run_cli, run_main, write_spec
from tuning_platform.cli import main
from tuning_platform.outcome import Registration, TrialRow, TuneResult, best_trial
from tuning_platform.parent_run import log_outcome, open_parent_run
from tuning_platform.records import PARENT_RUN_ID_TAG, RUN_NAME_TAG, TRIAL_ID_TAG, TRIAL_STATUS_TAG, TrialStatus
from tuning_platform.registry.champion import CHAMPION_ALIAS
from tuning_platform.request import JobRequest
from tuning_platform.spec import load_spec
from tuning_platform.tracking.parent import JobTracker


def _spec(name: str, samples: int):
    raw = {
        "name": name,
        "trainable": "toy:bowl",
        "metric": "loss",
        "mode": "min",
        "search": {
            "num_samples": samples,
            "space": {"x": {"type": "uniform", "low": 0.0, "high": 1.0}},
            "fixed": {"epochs": 3},
        },
    }
    spec, _, text = load_spec(raw)
    return spec, text


def _open_job(uri: str, experiment: str, run_name: str, samples: int) -> tuple[JobTracker, object]:
    """A job's parent run, opened by the job's own code."""
    spec, text = _spec(experiment, samples)
    request = JobRequest(
        spec=spec, spec_file="spec.yaml", spec_text=text, trainable=None, data={}, tracking_uri=uri, storage_path="/x"
    )
    tracker = JobTracker(uri, spec.name)
    open_parent_run(request, tracker, run_name, "/x", None)
    time.sleep(0.01)  # the next job starts later: newest first is by start time
    return tracker, spec


def _finish_job(tracker: JobTracker, spec, rows: list[TrialRow], version: str | None, champion: str | None) -> None:
    """The end of a job, by the job's own code: its version registered (as `register_best`
    does: logged from the parent run), the figures and the registration on the parent run."""
    uri, experiment_id, run_id = tracker.tracking_uri, tracker.experiment_id, tracker.parent_run_id
    result = TuneResult("loss", "min", uri, spec.name, experiment_id, run_id, "")
    result.rows, result.best = rows, best_trial(rows, "min")
    if version is not None:
        made = tracker.client.create_model_version(MODEL, "file:///nowhere/model", run_id=tracker.parent_run_id)
        assert str(made.version) == version
        result.registration = Registration(MODEL, version, champion)
    log_outcome(tracker, spec, result)
    tracker.finish("FINISHED")


MODEL = "bowl-model"


@dataclass
class Store:
    uri: str
    ids: dict[str, str]  # job name -> parent run id


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    """Four jobs, oldest first: one recorded before parent runs kept what they registered and
    who ran them, two of experiment `alpha` (the second took the champion alias from the first)
    and one of `beta` still running; the first `alpha` job has trial runs too."""
    uri = new_store(tmp_path_factory.mktemp("store"))
    client = MlflowClient(uri)
    ids = {}

    legacy = JobTracker(uri, "legacy")
    legacy.start("legacy-1", {RUN_NAME_TAG: "legacy-1", "budget_num_samples": "5"}, {"metric": "loss"}, {})
    legacy.log_to_parent(metrics={"best_loss": 0.25}, tags={"trials_completed": "5"})
    client.create_registered_model("old-model")
    client.create_model_version("old-model", "file:///nowhere/model", run_id=legacy.parent_run_id)
    legacy.finish("FINISHED")
    ids["legacy-1"] = legacy.parent_run_id
    time.sleep(0.01)

    client.create_registered_model(MODEL)
    first, spec = _open_job(uri, "alpha", "alpha-1", 8)
    for n in range(3):  # trial runs: never a job of their own
        tags = {PARENT_RUN_ID_TAG: first.parent_run_id, TRIAL_ID_TAG: f"t{n}", TRIAL_STATUS_TAG: "completed"}
        client.set_terminated(client.create_run(first.experiment_id, run_name=f"t{n:02d}", tags=tags).info.run_id)
    rows = [
        TrialRow("t0", TrialStatus.COMPLETED, 3, 0.2, {"x": 0.4}),
        TrialRow("t1", TrialStatus.EARLY_STOPPED, 1, 0.5, {"x": 0.9}),
        TrialRow("t2", TrialStatus.FAILED, 0, None, {"x": 0.1}, error="boom"),
    ]
    _finish_job(first, spec, rows, "1", "1")
    ids["alpha-1"] = first.parent_run_id

    second, spec = _open_job(uri, "alpha", "alpha-2", 2)
    rows = [
        TrialRow("u0", TrialStatus.COMPLETED, 3, 0.1, {"x": 0.3}),
        TrialRow("u1", TrialStatus.DIVERGED, 2, None, {"x": 0.8}),
    ]
    _finish_job(second, spec, rows, "2", "2")
    client.set_registered_model_alias(MODEL, CHAMPION_ALIAS, "2")
    ids["alpha-2"] = second.parent_run_id

    running, _ = _open_job(uri, "beta", "beta-1", 8)
    ids["beta-1"] = running.parent_run_id
    return Store(uri, ids)


def table(text: str) -> list[dict[str, str]]:
    """The rows of `jobs`' table by its header; cells hold single spaces at most."""
    lines = text.strip().splitlines()
    header = re.split(r"\s{2,}", lines[0])
    return [dict(zip(header, re.split(r"\s{2,}", line), strict=True)) for line in lines[1:]]


def started(client: MlflowClient, run_id: str) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(client.get_run(run_id).info.start_time / 1000))


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_jobs_lists_every_job_newest_first_from_its_parent_run(store, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, out, err = run(capsys, "jobs", "--tracking-uri", store.uri)
    assert code == 0, err
    client = MlflowClient(store.uri)
    user = getpass.getuser()
    assert table(out) == [
        {
            "started": started(client, store.ids["beta-1"]),
            "experiment": "beta",
            "job": "beta-1",
            "status": "RUNNING",
            "trials": "-/8",  # counted at the job's end
            "best": "-",
            "model": "-",
            "champion": "-",
            "user": user,
        },
        {
            "started": started(client, store.ids["alpha-2"]),
            "experiment": "alpha",
            "job": "alpha-2",
            "status": "FINISHED",
            "trials": "2/2",
            "best": "loss=0.1000",
            "model": f"{MODEL} v2",
            "champion": "yes",
            "user": user,
        },
        {
            "started": started(client, store.ids["alpha-1"]),
            "experiment": "alpha",
            "job": "alpha-1",
            "status": "FINISHED",
            "trials": "3/8",
            "best": "loss=0.2000",
            "model": f"{MODEL} v1",
            "champion": "no (v2)",  # it was, until alpha-2 took the alias
            "user": user,
        },
        {
            "started": started(client, store.ids["legacy-1"]),
            "experiment": "legacy",
            "job": "legacy-1",
            "status": "FINISHED",
            "trials": "5/5",
            "best": "loss=0.2500",
            "model": "old-model v1",  # the registry's link from the version to its run
            "champion": "no",
            "user": "unknown",
        },
    ]


def test_jobs_of_one_experiment_and_the_newest_only(store, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)  # as --tracking-uri
    code, out, err = run(capsys, "jobs", "--experiment", "alpha")
    assert code == 0, err
    assert [row["job"] for row in table(out)] == ["alpha-2", "alpha-1"]
    code, out, err = run(capsys, "jobs", "--limit", "2")
    assert code == 0, err
    assert [row["job"] for row in table(out)] == ["beta-1", "alpha-2"]


def test_an_unknown_experiment_or_job_is_one_line_and_exit_2(store, capsys):
    code, out, err = run(capsys, "jobs", "--experiment", "gamma", "--tracking-uri", store.uri)
    assert (code, out) == (2, "")
    assert err == f"error: --experiment: no experiment 'gamma' in {store.uri}\n"
    code, out, err = run(capsys, "show", "alpha-3", "--tracking-uri", store.uri)
    assert (code, out) == (2, "")
    assert err == f"error: no job 'alpha-3' in {store.uri} (see: tuning-platform jobs)\n"
    code, out, err = run(capsys, "show", "t00", "--tracking-uri", store.uri)  # a trial run is no job
    assert code == 2 and "no job 't00'" in err


def test_show_a_job_that_has_not_ended_by_name_or_parent_run_id(store, capsys):
    """What the store holds of it so far: no trial has ended, nothing registered."""
    code, by_name, err = run(capsys, "show", "beta-1", "--tracking-uri", store.uri)
    assert code == 0, err
    run_id = store.ids["beta-1"]
    lines = by_name.splitlines()
    assert re.fullmatch(r"0 trials in \d+s: 0 completed, 0 stopped early by ASHA, 0 diverged, 0 failed", lines[1])
    experiment_id = MlflowClient(store.uri).get_run(run_id).info.experiment_id
    assert f"MLflow: experiment 'beta' (id {experiment_id}), parent run {run_id}" in lines
    assert "Search insight: importances need 2 or more trials that reported loss" in lines
    assert f"  this job:   http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{run_id}" in by_name
    code, by_id, err = run(capsys, "show", run_id, "--tracking-uri", store.uri)
    assert code == 0, err
    assert re.sub(r"in \d+s", "", by_id) == re.sub(r"in \d+s", "", by_name)


@pytest.mark.parametrize(
    "args, error",
    [
        (["jobs"], "error: no MLflow store at sqlite:///mlflow.db in this folder"),
        (["show", "some-job"], "error: no MLflow store at sqlite:///mlflow.db in this folder"),
        (["jobs", "--tracking-uri", "sqlite:///elsewhere.db"], "error: --tracking-uri: no MLflow store at"),
        (["jobs", "--tracking-uri", "http://127.0.0.1:{port}"], "error: --tracking-uri: MLflow tracking server not"),
    ],
)
def test_no_store_is_one_line_exit_2_and_creates_nothing(tmp_path, monkeypatch, capsys, args, error):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, out, err = run(capsys, *[arg.format(port=port) for arg in args])
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1 and err.startswith(error), err
    assert list(tmp_path.iterdir()) == []


def test_an_empty_store_has_no_jobs(tmp_path, capsys):
    uri = new_store(tmp_path)
    code, out, _ = run(capsys, "jobs", "--tracking-uri", uri)
    assert (code, out) == (0, f"No jobs in {uri}\n")


def test_a_spec_file_named_jobs_still_runs_as_a_spec(tmp_path, monkeypatch, capsys):
    """`jobs` and `show` are forms of the command only where no file has that name."""
    monkeypatch.chdir(tmp_path)
    write_spec(tmp_path, "name: [unclosed\n", name="jobs")
    code, _, err = run(capsys, "jobs")
    assert code == 2 and err.startswith("error: jobs: not valid YAML at line"), err
    (tmp_path / "show").mkdir()  # a folder is no spec
    code, _, err = run(capsys, "show", "a-job")
    assert code == 2 and err.startswith("error: no MLflow store at sqlite:///mlflow.db"), err


def test_version_is_the_installed_distributions(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"tuning-platform {importlib.metadata.version('tuning-platform')}\n"


def test_help_names_the_store_commands(capsys):
    for args in (["--help"], ["jobs", "--help"], ["show", "--help"]):
        with pytest.raises(SystemExit) as done:
            main(args)
        assert done.value.code == 0
        shown = capsys.readouterr().out
        assert "jobs" in shown and "show" in shown and "--tracking-uri" in shown


# --- One real job --------------------------------------------------------------------------------


@dataclass
class RealJob:
    folder: Path
    uri: str
    result: object
    run_id: str
    name: str


@pytest.fixture(scope="module")
def real_job(tmp_path_factory) -> RealJob:
    """A small real job into a new SQLite store, run as the command runs it: mlp, --smoke-test
    of 3 trials, whose 2 best configurations `selection` trains again with 2 new seeds each."""
    folder = tmp_path_factory.mktemp("real-job")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    args = [str(SPECS / "mlp.yaml"), "--smoke-test", "--tracking-uri", uri]
    args += ["--set", "search.num_samples=3", "--set", "selection.top_k=2", "--set", "selection.seeds=2"]
    result = run_main(*args, "--storage-path", str(folder / "ray_results"), cwd=folder)
    assert_ok(result)
    parents, _ = job_runs(uri, "mlp-breast-cancer")
    return RealJob(folder, uri, result, parents[0].info.run_id, parents[0].info.run_name)


def summary(output: str) -> str:
    """The summary at the end of a command's output (from its last `N trials in` line), with
    the time blanked: `show` knows the parent run's, not the job's own clock."""
    start = [m.start() for m in re.finditer(r"^\d+ trials in \d+s:", output, flags=re.M)][-1]
    return re.sub(r"^(\d+ trials in )\d+s", r"\1Ns", output[start:], flags=re.M)


@pytest.mark.slow
def test_show_prints_the_summary_the_job_printed_at_its_end(real_job):
    printed = summary(real_job.result.stdout)
    assert "Registered model: mlp-breast-cancer-smoke version 1; champion is version 1" in printed
    assert "Most important for val_roc_auc (fANOVA)" in printed and "note: --smoke-test" in printed
    assert "Robust champion: the top 2 configurations trained again with new seeds:" in printed
    assert "<- chosen" in printed
    for job in (real_job.name, real_job.run_id):
        shown = run_main("show", job, "--tracking-uri", real_job.uri, cwd=real_job.folder)
        assert_ok(shown)
        assert shown.stderr == ""
        assert summary(shown.stdout) == printed


@pytest.mark.slow
def test_jobs_lists_the_real_job_from_the_real_command(real_job):
    """`python -m platform.tune jobs`, in a new process, as a user types it."""
    best = re.search(r"^Best trial \w+: val_roc_auc=(\d\.\d{4})", real_job.result.stdout, flags=re.M)
    assert best is not None
    listed = run_cli("jobs", cwd=real_job.folder, env={"MLFLOW_TRACKING_URI": real_job.uri}, timeout=120)
    assert_exit(listed, 0)
    (row,) = table(listed.stdout)
    assert row == {
        "started": started(MlflowClient(real_job.uri), real_job.run_id),
        "experiment": "mlp-breast-cancer",
        "job": real_job.name,
        "status": "FINISHED",
        "trials": "3/3",  # the search's: `selection`'s reseeded runs are no trials of it
        "best": f"val_roc_auc={best.group(1)}",
        "model": "mlp-breast-cancer-smoke v1",
        "champion": "yes",
        "user": getpass.getuser(),
    }
