"""The trial callback's MLflow writes, off Tune's event loop: nothing lost, order kept, batched.

The callback is driven here as Tune drives it (start, results, complete, experiment end) on a
real SQLite store; a slow store is a real client whose writes are made to wait.
"""

from __future__ import annotations

import pickle
import threading
import time
from types import SimpleNamespace

import pytest
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.tracking import MlflowClient

from tuning_platform.tracking import writer
from tuning_platform.tracking.callback import TrialRunsCallback
from tuning_platform.tracking.parent import JobTracker


class FakeTrial(SimpleNamespace):
    def __str__(self) -> str:
        return f"train_{self.trial_id}"


def _job(tmp_path) -> tuple[JobTracker, TrialRunsCallback]:
    tracker = JobTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "writer-test")
    tracker.start(run_name="job", tags={}, params={}, artifacts={})
    callback = tracker.trial_callback("score", max_t=3)
    callback.setup()
    return tracker, callback


def _run_trial(callback: TrialRunsCallback, trial_id: str, epochs: int = 3, first: int = 1) -> None:
    trial = FakeTrial(trial_id=trial_id, config={"lr": 0.1, "data": {"x": 1}}, last_result={})
    callback.on_trial_start(0, [], trial)
    for epoch in range(first, epochs + 1):
        result = {"epoch": epoch, "score": epoch / 10, "loss": 1.0 / epoch, "timestamp": time.time()}
        callback.on_trial_result(0, [], trial, result)
        trial.last_result = result
    callback.on_trial_complete(0, [], trial)


def _slow_writes(client: MlflowClient, seconds: float, calls: list[str]) -> None:
    """Every write of this client waits `seconds`, as over a slow network, and is counted."""
    for name in ("create_run", "log_batch", "set_terminated"):
        original = getattr(client, name)

        def slow(*args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            time.sleep(seconds)
            return _original(*args, **kwargs)

        setattr(client, name, slow)


def test_every_result_lands_in_order_after_the_experiment_ends(tmp_path):
    tracker, callback = _job(tmp_path)
    calls: list[str] = []
    _slow_writes(callback.writer.client, 0, calls)
    for trial_id in ("a", "b", "c"):
        _run_trial(callback, trial_id)
    callback.on_experiment_end([])
    # Short trials cost a tracking server three requests each: params, results and end tags
    # go in one batch.
    assert sorted(calls) == ["create_run"] * 3 + ["log_batch"] * 3 + ["set_terminated"] * 3, calls
    client = MlflowClient(tracker.tracking_uri)
    runs = client.search_runs([tracker.experiment_id], filter_string="tags.trial_id != ''")
    children = {run.data.tags["trial_id"]: run for run in runs}
    assert sorted(children) == ["a", "b", "c"]
    for run in children.values():
        assert run.info.status == "FINISHED"
        assert run.data.tags["trial_status"] == "completed" and run.data.tags["epochs_run"] == "3"
        assert run.data.params == {"lr": "0.1"}
        history = client.get_metric_history(run.info.run_id, "score")
        assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(1, 0.1), (2, 0.2), (3, 0.3)]


def test_a_resumed_trial_that_mlflow_saw_finish_logs_each_epoch_once(tmp_path):
    """After a kill, the state Ray saved last can be older than a trial's end: the resumed job
    runs the trial's last epochs again, from its checkpoint of epoch 1."""
    tracker, callback = _job(tmp_path)
    _run_trial(callback, "a")
    callback.on_experiment_end([])
    resumed = tracker.trial_callback("score", max_t=3)
    resumed.setup()
    _run_trial(resumed, "a", first=2)
    resumed.on_experiment_end([])
    client = MlflowClient(tracker.tracking_uri)
    (run,) = client.search_runs([tracker.experiment_id], filter_string="tags.trial_id != ''")
    assert run.info.status == "FINISHED" and run.data.tags["trial_status"] == "completed"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "score")) == [1, 2, 3]


def test_a_resumed_trial_gets_the_epochs_a_killed_driver_had_not_yet_written_from_ray_s_record(tmp_path):
    """A driver killed while a trial's results waited in its writer: Ray had saved the trial's
    checkpoint of epoch 3, MLflow has epoch 1 only. The resumed trial goes on at epoch 4; epochs
    2 and 3 come from the trial's `result.json` (the last report of an epoch counts; a line the
    kill cut short is skipped), so the run has every epoch once, in order."""
    import json

    tracker, callback = _job(tmp_path)
    trial = FakeTrial(trial_id="a", config={"lr": 0.1}, last_result={}, local_path=str(tmp_path / "trial_a"))
    callback.on_trial_start(0, [], trial)
    callback.writer.flush(timeout=30)
    # The killed driver wrote epoch 1 ten seconds ago, with its millisecond clock; Ray's
    # `timestamp` is whole seconds: epoch 2 came in the same second, epoch 3 five seconds later.
    reported = int(time.time()) - 10
    epoch_1 = Metric("score", 0.1, reported * 1000 + 500, 1)
    MlflowClient(tracker.tracking_uri).log_batch(callback.writer.run_ids["a"], metrics=[epoch_1])
    (tmp_path / "trial_a").mkdir()
    # Epoch 2 reported twice: an earlier restore.
    reports = [(1, 0.1, reported), (2, 0.15, reported), (2, 0.2, reported), (3, 0.3, reported + 5)]
    lines = [json.dumps({"epoch": e, "score": v, "timestamp": t}) for e, v, t in reports]
    (tmp_path / "trial_a" / "result.json").write_text("\n".join(lines) + '\n{"epoch": 4, "sco')

    resumed = tracker.trial_callback("score", max_t=5)
    resumed.setup()
    resumed.on_trial_start(0, [], trial)
    for epoch in (4, 5):
        result = {"epoch": epoch, "score": epoch / 10, "timestamp": time.time()}
        resumed.on_trial_result(0, [], trial, result)
        trial.last_result = result
    resumed.on_trial_complete(0, [], trial)
    resumed.on_experiment_end([])
    client = MlflowClient(tracker.tracking_uri)
    (run,) = client.search_runs([tracker.experiment_id], filter_string="tags.trial_id = 'a'")
    history = client.get_metric_history(run.info.run_id, "score")  # MLflow's order: by time
    assert [(m.step, m.value) for m in history] == [(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.4), (5, 0.5)]
    assert history[1].timestamp == epoch_1.timestamp + 1  # kept after epoch 1
    assert history[2].timestamp == (reported + 5) * 1000  # when the trial reported it, from Ray's record


def test_a_slow_store_does_not_hold_up_the_callback_and_results_are_merged(tmp_path):
    tracker, callback = _job(tmp_path)
    calls: list[str] = []
    _slow_writes(callback.writer.client, 0.2, calls)

    started = time.perf_counter()
    _run_trial(callback, "slow", epochs=20)
    queued_s = time.perf_counter() - started
    # 23 writes of 0.2 s each if done in line: about 4.6 s
    assert queued_s < 0.5, queued_s

    callback.on_experiment_end([])
    # create_run + params, then the 20 results waiting behind it in one batch, then the end.
    assert calls.count("log_batch") <= 4, calls
    run = MlflowClient(tracker.tracking_uri).search_runs(
        [tracker.experiment_id], filter_string="tags.trial_id = 'slow'"
    )[0]
    assert run.info.status == "FINISHED"
    steps = [m.step for m in MlflowClient(tracker.tracking_uri).get_metric_history(run.info.run_id, "score")]
    assert sorted(steps) == list(range(1, 21))


def test_a_flush_does_not_wait_for_writes_to_gather(tmp_path, monkeypatch):
    # The writer lets a trial's epochs gather for LINGER_S; the end of a job must not wait it out.
    monkeypatch.setattr(writer, "LINGER_S", 60.0)
    tracker, callback = _job(tmp_path)
    trial = FakeTrial(trial_id="quick", config={"lr": 0.1}, last_result={})
    callback.on_trial_start(0, [], trial)
    callback.on_trial_result(0, [], trial, {"epoch": 1, "score": 0.5})
    started = time.perf_counter()
    assert callback.writer.flush(timeout=30)
    assert time.perf_counter() - started < 30
    run = MlflowClient(tracker.tracking_uri).search_runs(
        [tracker.experiment_id], filter_string="tags.trial_id = 'quick'"
    )[0]
    assert run.data.metrics["score"] == 0.5


def test_writes_that_waited_behind_slow_requests_go_at_once(tmp_path, monkeypatch):
    """A busy tracking server: while one request takes 0.75 s, the next trial's run waits in the
    queue longer than the writer lets writes gather; it is sent right after, not LINGER_S later."""
    monkeypatch.setattr(writer, "LINGER_S", 0.5)
    tracker, callback = _job(tmp_path)
    client = callback.writer.client
    original = client.create_run
    spans: list[tuple[float, float]] = []

    def slow_create(*args, **kwargs):
        started = time.monotonic()
        time.sleep(0.75)
        try:
            return original(*args, **kwargs)
        finally:
            spans.append((started, time.monotonic()))

    client.create_run = slow_create
    callback.on_trial_start(0, [], FakeTrial(trial_id="first", config={"lr": 0.1}, last_result={}))
    time.sleep(0.6)  # the first run is being made now
    callback.on_trial_start(0, [], FakeTrial(trial_id="second", config={"lr": 0.2}, last_result={}))
    deadline = time.monotonic() + 30
    while len(spans) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    (_, first_done), (second_sent, _) = spans
    assert second_sent - first_done < 0.25  # it had waited 0.65 s already: no more gathering
    callback.on_experiment_end([])


@pytest.mark.parametrize("server", [False, True])
def test_on_a_tracking_server_trials_are_written_side_by_side_each_in_order(tmp_path, monkeypatch, server):
    """Over HTTP a write is mostly a wait for the server, so four trials' writes go at once; a SQL
    store (here the real SQLite one) takes them one at a time."""
    if server:  # this store, as the writer sees a tracking server's
        monkeypatch.setattr(writer, "sql_store", lambda client: None)
    tracker, callback = _job(tmp_path)
    client = callback.writer.client
    in_flight, most = [0], [0]
    lock = threading.Lock()
    for name in ("create_run", "log_batch", "set_terminated"):
        original = getattr(client, name)

        def slow(*args, _original=original, **kwargs):
            with lock:
                in_flight[0] += 1
                most[0] = max(most[0], in_flight[0])
            time.sleep(0.1)
            try:
                return _original(*args, **kwargs)
            finally:
                with lock:
                    in_flight[0] -= 1

        setattr(client, name, slow)
    trials = ["a", "b", "c", "d"]
    for trial_id in trials:
        _run_trial(callback, trial_id, epochs=4)  # each: create, one batch, end
    started = time.monotonic()
    callback.on_experiment_end([])
    took = time.monotonic() - started
    assert most[0] == (writer.PARALLEL_WRITES if server else 1)
    assert took < 0.85 if server else took > 1.0, took  # 12 writes of 0.1 s, 4 at a time or 1
    mlflow = MlflowClient(tracker.tracking_uri)
    for trial_id in trials:
        (run,) = mlflow.search_runs([tracker.experiment_id], filter_string=f"tags.trial_id = '{trial_id}'")
        assert [m.step for m in mlflow.get_metric_history(run.info.run_id, "score")] == [1, 2, 3, 4]
        assert run.info.status == "FINISHED" and run.data.params["lr"] == "0.1"


def test_a_trial_run_has_the_trial_s_start_and_end_times_not_the_writer_s(tmp_path):
    tracker, callback = _job(tmp_path)
    _slow_writes(callback.writer.client, 0.3, [])  # each write sent 0.3 s late
    trial = FakeTrial(trial_id="timed", config={"lr": 0.1}, last_result={})
    started_ms = time.time() * 1000
    callback.on_trial_start(0, [], trial)
    callback.on_trial_result(0, [], trial, {"epoch": 1, "score": 0.5})
    trial.last_result = {"epoch": 1, "score": 0.5}
    ended_ms = time.time() * 1000
    callback.on_trial_complete(0, [], trial)
    callback.on_experiment_end([])
    (run,) = MlflowClient(tracker.tracking_uri).search_runs(
        [tracker.experiment_id], filter_string="tags.trial_id = 'timed'"
    )
    assert 0 <= run.info.start_time - int(started_ms) < 250
    assert 0 <= run.info.end_time - int(ended_ms) < 250


def test_the_job_sees_every_queued_write_before_it_closes_the_trial_runs(tmp_path):
    # A second Ctrl-C: Tune never calls on_experiment_end, the job closes the runs itself.
    tracker, callback = _job(tmp_path)
    _slow_writes(callback.writer.client, 0.1, [])
    trial = FakeTrial(trial_id="cut", config={"lr": 0.1}, last_result={})
    callback.on_trial_start(0, [], trial)
    callback.on_trial_result(0, [], trial, {"epoch": 1, "score": 0.5})
    tracker.close_trial_runs({})
    run = MlflowClient(tracker.tracking_uri).search_runs(
        [tracker.experiment_id], filter_string="tags.trial_id = 'cut'"
    )[0]
    assert run.info.status == "KILLED" and run.data.tags["trial_status"] == "interrupted"
    assert run.data.metrics["score"] == 0.5


def test_refused_writes_are_counted_and_named_at_the_end(tmp_path, caplog):
    tracker, callback = _job(tmp_path)

    def refuse(*args, **kwargs):
        raise MlflowException("metric value too long", error_code=INVALID_PARAMETER_VALUE)

    callback.writer.client.log_batch = refuse
    _run_trial(callback, "lost")
    callback.on_experiment_end([])
    assert callback.writer.failures and "metric value too long" in callback.writer.failures[0]
    err = caplog.text
    assert "MLflow writes failed (first: MlflowException: metric value too long)" in err


def test_the_final_flush_is_bounded_and_names_what_was_not_written(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(writer, "FINAL_FLUSH_TIMEOUT_S", 1.0)
    _, callback = _job(tmp_path)

    def never(*args, **kwargs):
        raise ConnectionError("connection refused")

    callback.writer.client.log_batch = never
    _run_trial(callback, "stuck")
    started = time.monotonic()
    callback.on_experiment_end([])
    assert time.monotonic() - started < 5
    err = caplog.text
    assert (
        "took no writes for 1s at the end of the job; not written: 3 results of trials stuck; "
        "3 run updates of trials stuck"
    ) in err


def test_the_final_flush_waits_for_a_slow_store_while_it_writes_and_says_how_much_is_left(
    tmp_path, caplog, monkeypatch
):
    """A tracking server behind the trials (a large job of short trials) takes longer than
    FINAL_FLUSH_TIMEOUT_S to catch up, writing all the while: nothing is given up on."""
    monkeypatch.setattr(writer, "FINAL_FLUSH_TIMEOUT_S", 0.3)
    monkeypatch.setattr(writer, "FLUSH_PROGRESS_EVERY_S", 0.3)
    tracker, callback = _job(tmp_path)
    calls: list[str] = []
    _slow_writes(callback.writer.client, 0.12, calls)  # 12 writes one after another: 1.44 s
    trials = ["a", "b", "c", "d"]
    for trial_id in trials:
        _run_trial(callback, trial_id)
    started = time.monotonic()
    with caplog.at_level("INFO", logger="tuning_platform.tracking.writer"):
        callback.on_experiment_end([])
    assert time.monotonic() - started > 0.6 and len(calls) == 12
    assert "not written" not in caplog.text and callback.writer.failures == []
    assert "note: writing the trial runs to MLflow" in caplog.text and "writes left" in caplog.text
    client = MlflowClient(tracker.tracking_uri)
    runs = client.search_runs([tracker.experiment_id], filter_string="tags.trial_id != ''")
    assert sorted(run.data.tags["trial_id"] for run in runs if run.info.status == "FINISHED") == trials


def test_the_callback_pickles_without_its_thread_after_use(tmp_path):
    # Tune saves the callback with the job's state while trials run, and --resume loads it.
    _, callback = _job(tmp_path)
    _run_trial(callback, "p")
    writers = sum(t.name == "mlflow-run-writer" for t in threading.enumerate())
    assert writers >= 1
    copy = pickle.loads(pickle.dumps(callback))
    assert copy._writer is None and copy._known == set()
    assert (copy.tracking_uri, copy.parent_run_id) == (callback.tracking_uri, callback.parent_run_id)
    callback.on_experiment_end([])  # the thread ends with the experiment
    assert sum(t.name == "mlflow-run-writer" for t in threading.enumerate()) == writers - 1


def test_a_write_that_is_a_bug_is_counted_at_once_not_retried_for_minutes(tmp_path, caplog):
    """A TypeError in a queued write (a bug, not an unreachable store) fails that write and the
    job goes on; only a store that does not answer is waited for (RETRY_FOR_S)."""
    _, callback = _job(tmp_path)
    original = callback.writer.client.log_batch

    def broken(*args, **kwargs):
        if kwargs.get("metrics"):
            raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")
        return original(*args, **kwargs)

    callback.writer.client.log_batch = broken
    _run_trial(callback, "bug")
    # Retried, the write would hold the flush until it gives up after 5 s of no writes.
    assert callback.writer.flush(timeout=5)
    assert callback.writer.failures == ["TypeError: unsupported operand type(s) for +: 'int' and 'str'"]
    callback.on_experiment_end([])
    assert "1 MLflow writes failed (first: TypeError: unsupported operand" in caplog.text


def test_a_store_that_is_away_is_waited_out_on_the_writer_s_clock(tmp_path, caplog):
    """The writer's retries and stall warnings run on its clock: a store away for two minutes
    is waited out, warned about and written to once it answers, in no real time at all."""
    from tuning_platform.tracking.writer import RETRY_FOR_S, STALL_WARNING_S, Clock

    class ManualClock(Clock):
        """Time moves only when the writer sleeps between retries."""

        def __init__(self) -> None:
            self.at = 0.0

        def now(self) -> float:
            return self.at

        def sleep(self, seconds: float) -> None:
            self.at += seconds

    tracker, callback = _job(tmp_path)
    clock = ManualClock()
    callback.writer.clock = clock
    client = callback.writer.client
    original = client.log_batch
    away_until = 120.0  # more than STALL_WARNING_S, less than RETRY_FOR_S
    assert STALL_WARNING_S < away_until < RETRY_FOR_S

    def away(*args, **kwargs):
        if clock.now() < away_until:
            raise ConnectionError("connection refused")
        return original(*args, **kwargs)

    client.log_batch = away
    started = time.monotonic()
    _run_trial(callback, "patient")
    _run_trial(callback, "late", epochs=1)  # queued while the store is away
    callback.on_experiment_end([])
    assert time.monotonic() - started < 10  # two minutes of the store's absence took no real time
    assert callback.writer.failures == []
    assert clock.now() >= away_until
    assert "warning: the MLflow tracking store" in caplog.text and "has not answered for" in caplog.text
    assert "note: the MLflow tracking store answers again" in caplog.text
    mlflow = MlflowClient(tracker.tracking_uri)
    for trial_id, epochs in (("patient", 3), ("late", 1)):
        (run,) = mlflow.search_runs([tracker.experiment_id], filter_string=f"tags.trial_id = '{trial_id}'")
        assert [m.step for m in mlflow.get_metric_history(run.info.run_id, "score")] == list(range(1, epochs + 1))
        assert run.info.status == "FINISHED"


def test_trials_wait_for_a_writer_that_falls_behind_so_the_end_of_the_job_stays_short(tmp_path, monkeypatch, caplog):
    """Trials that end faster than the store takes their records wait once the writes are
    MAX_BEHIND_S behind: the end of the job then waits for those seconds of writes, not for
    everything the trials got ahead by, and nothing is lost."""
    monkeypatch.setattr(writer, "MAX_BEHIND_S", 0.2)
    monkeypatch.setattr(writer, "LINGER_S", 0.05)
    tracker, callback = _job(tmp_path)
    calls: list[str] = []
    _slow_writes(callback.writer.client, 0.03, calls)  # 3 requests a trial: 0.09 s, 2.2 s for 24
    trials = [f"t{i:02d}" for i in range(24)]
    started = time.monotonic()
    with caplog.at_level("INFO", logger="tuning_platform.tracking.writer"):
        for trial_id in trials:  # a trial ends every 30 ms, three times the writer's pace
            _run_trial(callback, trial_id)
            time.sleep(0.03)
        queued_s = time.monotonic() - started
        left = callback.writer.writes_left()
        flush_started = time.monotonic()
        callback.on_experiment_end([])
        flush_s = time.monotonic() - flush_started
    # Unpaced, the trials would be queued in 0.7 s and the end would wait about 1.5 s.
    assert queued_s > 1.2, queued_s
    assert flush_s < 0.8, (flush_s, left)
    assert "note: trials end faster than MLflow" in caplog.text and "0.2s behind" in caplog.text
    runs = MlflowClient(tracker.tracking_uri).search_runs([tracker.experiment_id], filter_string="tags.trial_id != ''")
    assert sorted(run.data.tags["trial_id"] for run in runs if run.info.status == "FINISHED") == trials
    assert callback.writer.failures == []


def test_a_store_that_does_not_answer_does_not_hold_up_the_trials(tmp_path, monkeypatch):
    """No write done for WRITING_S is a store that is away, not a slow one: its writes queue up
    (to ride out the outage) however long they would take at the writer's pace (here 10 trials,
    30 writes: 0.6 s), and the trials go on."""
    monkeypatch.setattr(writer, "MAX_BEHIND_S", 0.2)
    monkeypatch.setattr(writer, "WRITING_S", 0.2)
    monkeypatch.setattr(writer, "LINGER_S", 0.05)
    tracker, callback = _job(tmp_path)
    calls: list[str] = []
    _slow_writes(callback.writer.client, 0.02, calls)  # the writer's pace: 50 writes a second
    _run_trial(callback, "first")
    assert callback.writer.flush(timeout=5)
    client = callback.writer.client
    original = client.log_batch
    went_away = threading.Event()
    away_until = [float("inf")]

    def away(*args, **kwargs):
        if not went_away.is_set():
            away_until[0] = time.monotonic() + 0.9  # the writer's first retry, 1 s on, finds it back
            went_away.set()
        if time.monotonic() < away_until[0]:
            raise ConnectionError("connection refused")
        return original(*args, **kwargs)

    client.log_batch = away
    _run_trial(callback, "second")
    assert went_away.wait(timeout=10)  # its run is made, its results wait for the store
    time.sleep(writer.WRITING_S + 0.2)
    started = time.monotonic()
    for i in range(10):
        _run_trial(callback, f"t{i}")
    assert time.monotonic() - started < 0.3  # paced, they would wait for the store's return
    callback.on_experiment_end([])
    assert callback.writer.failures == []
    runs = MlflowClient(tracker.tracking_uri).search_runs([tracker.experiment_id], filter_string="tags.trial_id != ''")
    assert sum(run.info.status == "FINISHED" for run in runs) == 12
