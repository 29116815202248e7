"""A job that tracks to a real `mlflow server` over HTTP, as on a cluster's head node, also
through an outage of that server."""

from __future__ import annotations

import subprocess
import sys
import time

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tests import servers
from tests.helpers import SPECS, STEADY_SPEC, STEADY_TRAINABLE, assert_ok, cli_env, job_runs, run_cli, write_spec

pytestmark = pytest.mark.slow


@pytest.fixture
def mlflow_server(tmp_path):
    """`mlflow server` on 127.0.0.1 with a SQLite store and a local artifact folder it serves."""
    with servers.mlflow_server(tmp_path) as server:
        yield server


def test_job_tracks_and_registers_over_http(mlflow_server, tmp_path):
    # The server runs as cluster.yaml starts it: without MLflow's job execution, whose 8 more
    # processes would hold 1.8 GiB. This fails if MLflow stops honouring the variable.
    commands = servers.group_commands(mlflow_server.process)
    assert any("uvicorn" in c for c in commands) and not any("huey" in c or "job_runner" in c for c in commands)
    mlflow_server = mlflow_server.uri
    result = run_cli(
        str(SPECS / "mlp.yaml"),
        "--smoke-test",
        "--tracking-uri",
        mlflow_server,
        "--storage-path",
        str(tmp_path / "ray_results"),
        cwd=tmp_path,
        timeout=300,
    )
    assert_ok(result)
    assert not (tmp_path / "mlflow.db").exists(), "nothing may fall back to a local store"
    # MLflow's `set_terminated` prints two links per run over HTTP: none for the 4 trial runs
    # (the summary has the links), one for the parent run that registration's `log_model` opens.
    links = [line for line in (result.stdout + result.stderr).splitlines() if "View run" in line]
    assert len(links) <= 1 and all("View run mlp-breast-cancer-" in line for line in links), links
    client = MlflowClient(mlflow_server)  # the REST client
    experiment = client.get_experiment_by_name("mlp-breast-cancer")
    parents, children = job_runs(client, "mlp-breast-cancer")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED" and len(children) == 4
    assert "spec.yaml" in {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    version = client.get_model_version_by_alias("mlp-breast-cancer-smoke", "champion")
    assert version.tags["parent_run_id"] == parents[0].info.run_id
    # The artifacts went to the server's destination, and load back through it.
    assert any((tmp_path / "artifacts").rglob("MLmodel"))
    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pyfunc.load_model("models:/mlp-breast-cancer-smoke@champion")
    assert len(model.predict(model.input_example)) == len(model.input_example)
    check_server_histories(client, experiment.experiment_id, [r.info.run_id for r in children])


def check_server_histories(client, experiment_id, trial_runs):
    """The job's study reads metric histories from a server through the MLflow UI's bulk route
    (`_compat.mlflow.BULK_HISTORY_PATH`, an internal of `mlflow server`): this fails when the route
    changes. Whatever way it reads, it gets what the public per-run call gets: a run with no
    value, an epoch logged twice (a resumed trial), across requests; a request that may have
    been cut, and a server without the route, read one run per call."""
    from mlflow.entities import Metric

    from tuning_platform._compat import mlflow as mlflow_compat
    from tuning_platform.tracking import queries

    made = [client.create_run(experiment_id).info.run_id for _ in range(3)]
    for n, run_id in enumerate(made):
        client.log_batch(run_id, metrics=[Metric("val_roc_auc", 0.1 * step, 1000 + step, step) for step in range(n)])
    client.log_batch(made[2], metrics=[Metric("val_roc_auc", 0.9, 3000, 1)])
    run_ids = trial_runs + made

    def per_run(*args):
        raise AssertionError("read one run per call")

    def values(histories):
        return {run_id: sorted((m.step, m.timestamp, m.value) for m in found) for run_id, found in histories.items()}

    expected = values({run_id: client.get_metric_history(run_id, "val_roc_auc") for run_id in run_ids})
    assert len(expected[made[2]]) == 3 and all(expected[run_id] for run_id in trial_runs)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(queries, "_histories_per_run", per_run)
        patch.setattr(mlflow_compat, "BULK_HISTORY_RUNS", 3)  # three requests
        assert values(queries.metric_histories(client, run_ids, "val_roc_auc")) == expected
    for setting, value in (("BULK_HISTORY_VALUES", 3), ("BULK_HISTORY_PATH", "/ajax-api/2.0/mlflow/no-such-route")):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(mlflow_compat, setting, value)
            assert values(queries.metric_histories(client, run_ids, "val_roc_auc")) == expected, setting


def test_a_tracking_server_down_for_20_seconds_mid_job_loses_nothing(tmp_path):
    (tmp_path / "steady.py").write_text(STEADY_TRAINABLE)
    write_spec(tmp_path, STEADY_SPEC.replace("NAME", "outage"))
    with servers.mlflow_server(tmp_path) as server:
        job = subprocess.Popen(
            [sys.executable, "-m", "platform.tune", "spec.yaml", "--tracking-uri", server.uri],
            cwd=tmp_path,
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            client = MlflowClient(server.uri)
            deadline = time.time() + 180
            while time.time() < deadline:  # until results flow
                _, children = job_runs(client, "outage", missing_ok=True)
                if any(r.data.metrics.get("epoch", 0) >= 1 for r in children):
                    break
                time.sleep(0.3)
            server.stop()
            time.sleep(20)
            server.start()  # same port, same store
            out, err = job.communicate(timeout=400)
        finally:
            servers.stop_group(job)
        assert_ok(subprocess.CompletedProcess(job.args, job.returncode, out, err))
        assert "warning: the MLflow tracking store http://127.0.0.1:" in err and "has not answered for" in err
        assert "MLflow writes failed" not in err
        parents, children = job_runs(client, "outage")
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        assert sorted(c.data.tags["trial_id"] for c in children) == sorted({c.data.tags["trial_id"] for c in children})
        assert len(children) == 6
        for child in children:
            assert child.info.status == "FINISHED" and child.data.tags["trial_status"] == "completed"
            steps = [m.step for m in client.get_metric_history(child.info.run_id, "score")]
            assert steps == list(range(1, 13)), steps
