"""PostgreSQL as the tracking store, as a team runs it: a real server on 127.0.0.1 with password
authentication (tests/servers.py), each of the two drivers people install, two jobs at once on
one database, the database restarted mid-job, and the URIs people get wrong."""

from __future__ import annotations

import subprocess
import sys
import time

import psycopg2
import pytest
from mlflow.tracking import MlflowClient

from tests import servers
from tests.helpers import STEADY_SPEC, STEADY_TRAINABLE, assert_exit, assert_ok, cli_env, job_runs, run_cli, write_spec
from tuning_platform.errors import SpecError
from tuning_platform.request import check_tracking_uri
from tuning_platform.tracking import database
from tuning_platform.tracking.client import store_uri


@pytest.fixture(scope="module")
def postgres():
    with servers.postgres_server() as server:
        yield server


@pytest.fixture
def no_driver(monkeypatch):
    """A Python without `psycopg` or `psycopg2` (None in sys.modules: importing it fails)."""
    database.with_installed_driver.cache_clear()
    for module in ("psycopg", "psycopg2"):
        monkeypatch.setitem(sys.modules, module, None)
    yield
    database.with_installed_driver.cache_clear()


def _refused(uri: str) -> str:
    with pytest.raises(SpecError) as caught:
        check_tracking_uri(uri, "--tracking-uri", "spec.yaml")
    message = str(caught.value)
    assert "\n" not in message and "secret" not in message, message  # one line, no password
    return message


def test_a_database_the_job_cannot_use_is_one_line_before_anything_starts(postgres):
    check_tracking_uri(postgres.uri(), "--tracking-uri", "spec.yaml")  # the good one passes
    started = time.time()
    assert "database not usable: Connection refused; is the database server running" in _refused(
        f"postgresql://admin:secret@127.0.0.1:{servers.free_port()}/mlflow"
    )
    assert 'password authentication failed for user "admin"; check the user and password' in _refused(
        postgres.uri(password="secret")
    )
    nobody = postgres.uri(user="nobody", password="secret")
    assert 'password authentication failed for user "nobody"' in _refused(nobody)
    assert 'database "missing" does not exist; create the database first' in _refused(
        postgres.uri(database="missing", password="secret").replace(":secret@", ":admin@")
    )
    assert "write the URI as postgresql://" in _refused("postgres://admin:secret@127.0.0.1/mlflow")
    assert time.time() - started < 30  # MLflow itself retried each for about two minutes


def test_postgresql_uri_takes_whichever_driver_is_installed(postgres, no_driver, monkeypatch):
    uri = postgres.uri(password="secret")
    message = _refused(uri)
    assert "no PostgreSQL driver is installed: pip install 'tuning-platform[postgres]'" in message
    assert "postgresql://admin@127.0.0.1" in message  # the URI as given, less its password
    monkeypatch.setitem(sys.modules, "psycopg2", psycopg2)  # only psycopg2, as most people have
    database.with_installed_driver.cache_clear()
    assert store_uri(uri) == uri.replace("postgresql://", "postgresql+psycopg2://")
    check_tracking_uri(postgres.uri(), "--tracking-uri", "spec.yaml")
    assert database.printable(uri) == f"postgresql://admin@127.0.0.1:{postgres.port}/mlflow"
    command = f"tuning-platform s.yaml --set tracking.uri={uri}?password=secret&sslmode=require"
    assert database.printable(command) == (
        f"tuning-platform s.yaml --set tracking.uri=postgresql://admin@127.0.0.1:{postgres.port}/mlflow?sslmode=require"
    )


@pytest.mark.slow
def test_two_jobs_on_one_database_through_a_restart_lose_nothing(postgres, tmp_path):
    """Two jobs at once on one new database, one with psycopg 3 and one with only psycopg2
    installed; the database goes away for 20 s while both run trials. Both finish, print the
    writer's `warning:` line, and every trial run holds each epoch once."""
    database_uri = postgres.create_database("team")
    (tmp_path / "steady.py").write_text(STEADY_TRAINABLE)
    hidden = tmp_path / "without_psycopg" / "psycopg"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('psycopg is not installed here')\n")
    jobs = {}
    for name, extra_path in (("psycopg3", ""), ("psycopg2", f"{hidden.parent}:")):
        write_spec(tmp_path, STEADY_SPEC.replace("NAME", name), f"{name}.yaml")
        env = cli_env()
        env["PYTHONPATH"] = extra_path + env["PYTHONPATH"]
        jobs[name] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "platform.tune",
                f"{name}.yaml",
                "--tracking-uri",
                database_uri,
                # One trial at a time on one CPU each: the two jobs share this machine's two.
                "--set",
                "search.max_concurrent=1",
                "--set",
                "resources.cpu=1",
            ],  # fmt: skip
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
    outputs = {}
    try:
        client = MlflowClient(database_uri)
        deadline = time.time() + 240
        while time.time() < deadline:  # until both jobs' results flow
            flowing = [job_runs(client, name, missing_ok=True)[1] for name in jobs]
            if all(any(r.data.metrics.get("epoch", 0) >= 1 for r in children) for children in flowing):
                break
            time.sleep(0.5)
        postgres.stop()
        time.sleep(20)
        postgres.start()  # same data, same port
        for name, job in jobs.items():
            outputs[name] = job.communicate(timeout=400)
    finally:
        for job in jobs.values():
            servers.stop_group(job)
    client = MlflowClient(store_uri(database_uri))
    for name, job in jobs.items():
        out, err = outputs[name]
        assert_ok(subprocess.CompletedProcess(job.args, job.returncode, out, err))
        assert "warning: the MLflow tracking store postgresql://admin@127.0.0.1:" in err, err[-3000:]
        assert "has not answered for" in err and "MLflow writes failed" not in err
        # One warning line, not MLflow's traceback per retried write (a Ray worker may still print
        # its own at shutdown).
        assert "SQLAlchemy database error" not in err and "OperationalError" not in err, err[-3000:]
        assert ":admin@" not in out + err  # the password is never printed
        parents, children = job_runs(client, name)
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        assert len(children) == 6
        for child in children:
            assert child.info.status == "FINISHED" and child.data.tags["trial_status"] == "completed"
            steps = [m.step for m in client.get_metric_history(child.info.run_id, "score")]
            assert steps == list(range(1, 13)), steps
        _sql_reads_match_mlflow_client(client, parents[0])


def _sql_reads_match_mlflow_client(client: MlflowClient, parent) -> None:
    """What the platform reads straight from MLflow's tables on a SQL store (a job's trial runs,
    the bulk metric histories) is what MLflow's own client gives on PostgreSQL too."""
    from tuning_platform._compat.mlflow import sql_store
    from tuning_platform.tracking.queries import metric_histories, search_trial_runs, trial_run_records

    assert sql_store(client) is not None  # the SQL reads, not the fallback, are what is checked
    experiment, parent_id = parent.info.experiment_id, parent.info.run_id
    records = {r.run_id: r for r in trial_run_records(client, experiment, parent_id)}
    runs = search_trial_runs(client, experiment, parent_id)
    assert len(records) == len(runs) == 6
    for run in runs:
        record = records[run.info.run_id]
        assert (record.start_ms, record.end_ms) == (run.info.start_time, run.info.end_time)
        assert record.tags == run.data.tags and record.params == run.data.params
    histories = metric_histories(client, list(records), "score")
    for run_id, history in histories.items():
        expected = client.get_metric_history(run_id, "score")
        assert [(m.step, m.value) for m in history] == [(m.step, m.value) for m in expected]


@pytest.mark.slow
def test_a_bad_database_uri_is_exit_2_from_the_command_line(postgres, tmp_path):
    (tmp_path / "steady.py").write_text(STEADY_TRAINABLE)
    write_spec(tmp_path, STEADY_SPEC.replace("NAME", "bad"))
    result = run_cli("spec.yaml", "--tracking-uri", postgres.uri(password="secret"), cwd=tmp_path)
    assert_exit(result, 2)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: spec.yaml: --tracking-uri: database not usable: password authentication")
    assert "Traceback" not in result.stderr and "secret" not in result.stderr + result.stdout
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "ray_results").exists()
