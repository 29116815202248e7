"""Trial records on a real SQLite MLflow store: params, metrics, and a fresh store opened by many jobs."""

from __future__ import annotations

import mlflow
import pytest

from tests.helpers import ROOT, assert_ok
from tuning_platform.records import trial_params
from tuning_platform.tracking.callback import result_metrics


def test_trial_params_leave_out_the_data_block():
    assert trial_params({"lr": 0.1, "optimizer": "adam", "data": {"dataset": "digits"}}) == {
        "lr": "0.1",
        "optimizer": "adam",
    }


def test_result_metrics_keep_the_trainables_numbers_only():
    result = {
        "epoch": 3,
        "val_accuracy": 0.9,
        "train_loss": 0.2,
        "time_this_iter_s": 0.1,
        "training_iteration": 3,
        "done": False,
        "trial_id": "abc",
        "config": {"lr": 1},
        "node_ip": "1.2.3.4",
    }
    assert result_metrics(result) == {"epoch": 3.0, "val_accuracy": 0.9, "train_loss": 0.2}


# Four jobs reaching a fresh store at the same instant: MLflow creates a SQLite store's tables
# without a lock, and all four would create the one experiment. The jobs are forks of one
# process that imported MLflow (no thread runs yet): four processes, each opening the store
# itself, for one import of MLflow instead of four on the same cores.
_OPEN_AT_ONCE = """
import os, pathlib, sys, time, traceback
from tuning_platform.tracking.parent import JobTracker
uri, folder, jobs = sys.argv[1], pathlib.Path(sys.argv[2]), int(sys.argv[3])

def job():
    tracker = JobTracker(uri, "shared")
    (folder / f"ready-{os.getpid()}").touch()
    while len(list(folder.glob("ready-*"))) < jobs:  # every job has started: all go at once
        time.sleep(0.001)
    tracker.start(run_name="job", tags={}, params={"a": "1"}, artifacts={})
    tracker.finish("FINISHED")

pids = []
for _ in range(jobs):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            job()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    pids.append(pid)
codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
print(codes)
sys.exit(1 if any(codes) else 0)
"""


@pytest.mark.slow  # four processes racing for a new store (6-9 s here): the fast set stays under a minute
def test_jobs_opening_a_fresh_sqlite_store_at_once_all_get_their_parent_run(tmp_path):
    import os
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # no store yet: the four jobs make it
    (tmp_path / "ready").mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", _OPEN_AT_ONCE, uri, str(tmp_path / "ready"), "4"]
    ran = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert_ok(ran)
    assert ran.stdout.strip() == "[0, 0, 0, 0]", ran.stdout  # each job's exit status
    client = mlflow.tracking.MlflowClient(uri)
    experiment = client.get_experiment_by_name("shared")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 4 and all(run.info.status == "FINISHED" for run in runs)


def test_a_run_ends_as_mlflow_s_own_client_ends_it(store_uri):
    """`QuietEndClient.set_terminated` skips MLflow's read-back and printing over HTTP
    (tests/test_mlflow_server.py shows it) and writes the end through the store's
    `update_run_info`, an MLflow internal: this fails when that changes, and checks the run
    ends as MLflow's client ends it."""
    from tuning_platform.tracking.client import QuietEndClient, open_client

    ours, theirs = open_client(store_uri), mlflow.tracking.MlflowClient(store_uri)
    assert isinstance(ours, QuietEndClient)
    experiment = ours.create_experiment("end")
    for status, end_time in (("KILLED", 1_700_000_000_123), ("FINISHED", None)):
        runs = [client.create_run(experiment).info.run_id for client in (ours, theirs)]
        for client, run_id in zip((ours, theirs), runs, strict=True):
            client.set_terminated(run_id, status, end_time=end_time)
        ended = [theirs.get_run(run_id).info for run_id in runs]
        assert ended[0].status == ended[1].status == status
        if end_time:
            assert ended[0].end_time == ended[1].end_time == end_time
        else:
            assert abs(ended[0].end_time - ended[1].end_time) < 10_000


def test_a_bulk_history_answer_that_is_not_mlflow_s_json_reads_run_by_run(monkeypatch):
    """A proxy in front of the tracking server may answer the UI's bulk route with a page of its
    own (200, HTML): the histories are then read one run per call, not lost to a JSON error.
    The server's other answers are in tests/test_mlflow_server.py, on a real server."""
    import mlflow.utils.rest_utils
    from mlflow.tracking import MlflowClient

    from tuning_platform.tracking import queries

    class ProxyPage:
        status_code = 200

        def json(self):
            raise ValueError("Expecting value: line 1 column 1 (char 0)")

    client = MlflowClient("http://127.0.0.1:9")  # never reached: both reads are replaced
    asked = []
    monkeypatch.setattr(mlflow.utils.rest_utils, "http_request", lambda *args, **kwargs: ProxyPage())
    monkeypatch.setattr(queries, "_histories_per_run", lambda c, ids, m: asked.extend(ids) or {i: [] for i in ids})
    assert queries.metric_histories(client, ["a", "b"], "score") == {"a": [], "b": []}
    assert asked == ["a", "b"]


def test_metric_histories_read_in_bulk_from_a_sql_store_equal_the_per_run_reads(store_uri, monkeypatch):
    """The bulk read is an MLflow internal (`SqlAlchemyStore.get_metric_history_bulk`): this
    fails when it changes, and checks it gives what the public per-run call gives."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from tuning_platform.tracking import queries

    client = MlflowClient(store_uri)
    experiment = client.create_experiment("bulk")
    runs = [client.create_run(experiment).info.run_id for _ in range(5)]
    for n, run_id in enumerate(runs):
        metrics = [Metric("val", float(n * 10 + step), 1000 + step, step) for step in range(1, n + 1)]
        client.log_batch(run_id, metrics=metrics + [Metric("other", 1.0, 1000, 1)])
    assert callable(client._tracking_client.store.get_metric_history_bulk)
    monkeypatch.setattr(queries, "HISTORY_CHUNK", 2)  # three queries, across chunk edges
    bulk = queries.metric_histories(client, runs, "val")
    one_by_one = {run_id: client.get_metric_history(run_id, "val") for run_id in runs}
    assert {r: [(m.step, m.value) for m in ms] for r, ms in bulk.items()} == {
        r: [(m.step, m.value) for m in ms] for r, ms in one_by_one.items()
    }
    assert [len(bulk[r]) for r in runs] == [0, 1, 2, 3, 4]


def test_trial_runs_read_lean_from_a_sql_store_equal_what_search_runs_finds(store_uri, monkeypatch):
    """The lean read queries MLflow's tables (`SqlRun`, `SqlTag`, `SqlParam`) through the store's
    sessions: this fails when they change, and checks it finds exactly the runs, clocks, tags and
    params that the public `search_runs` path finds: a job's trial runs, not its reseeded runs,
    not a deleted run, not another job's."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    from tuning_platform._compat.mlflow import sql_store
    from tuning_platform.records import PARENT_RUN_ID_TAG, TrialStatus
    from tuning_platform.tracking import queries

    client = MlflowClient(store_uri)
    experiment = client.create_experiment("lean")
    parent, other = (client.create_run(experiment).info.run_id for _ in range(2))

    def child(of: str, trial_id: str, status: str = "completed") -> str:
        tags = {PARENT_RUN_ID_TAG: of, "trial_id": trial_id, "trial_status": status}
        run_id = client.create_run(experiment, tags=tags).info.run_id
        client.log_batch(run_id, params=[Param("lr", f"0.{trial_id}"), Param("layers", "2")])
        return run_id

    kept = [child(parent, "1"), child(parent, "2", "early_stopped")]
    client.set_terminated(kept[0], "FINISHED")
    child(parent, "3", TrialStatus.RESEED.value)
    client.delete_run(child(parent, "4"))
    child(other, "5")
    client.create_run(experiment, tags={PARENT_RUN_ID_TAG: parent})  # not a trial run

    def as_found(records: list) -> dict:
        return {r.run_id: (r.start_ms, r.end_ms, r.tags, r.params) for r in records}

    assert sql_store(client) is not None
    lean = as_found(queries.trial_run_records(client, experiment, parent))
    monkeypatch.setattr(queries, "sql_store", lambda client: None)
    searched = as_found(queries.trial_run_records(client, experiment, parent))
    assert set(lean) == set(kept)
    assert lean == searched
    assert lean[kept[0]][1] is not None and lean[kept[1]][1] is None  # ended, still running
    assert lean[kept[1]][3] == {"lr": "0.2", "layers": "2"}


def test_a_sqlite_store_named_by_path_keeps_its_artifacts_beside_it(store_uri, tmp_path, monkeypatch):
    """A job run from another folder: its experiment's artifacts (the specs, the pictures, the
    registered model) go to `mlartifacts/` beside `mlflow.db`, not to ./mlruns of the job's
    working folder, as MLflow alone puts them."""
    from tuning_platform.tracking.parent import JobTracker

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    tracker = JobTracker(store_uri, "beside")
    tracker.start(run_name="job", tags={}, params={}, artifacts={"spec.yaml": "name: beside\n"})
    tracker.finish("FINISHED")
    experiment = tracker.client.get_experiment(tracker.experiment_id)
    assert experiment.artifact_location == str(tmp_path / "mlartifacts" / tracker.experiment_id)
    run = tracker.client.get_run(tracker.parent_run_id)
    assert (tmp_path / "mlartifacts" / tracker.experiment_id / run.info.run_id / "artifacts" / "spec.yaml").is_file()
    assert list(elsewhere.iterdir()) == []
    # Opened again from a third folder, the store still finds them where they are.
    monkeypatch.chdir(tmp_path)
    path = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="spec.yaml", tracking_uri=store_uri, dst_path=str(tmp_path / "got")
    )
    assert open(path).read() == "name: beside\n"
