"""A tracking server with users and permissions (`mlflow server --app-name basic-auth`), as a
team runs it: an admin who owns the experiment and the registered model, a user who may only
read them, and a user who may write runs but not register versions of the model."""

from __future__ import annotations

import os
import shutil

import pytest
from mlflow.tracking import MlflowClient

from tests import servers
from tests.helpers import ROOT, assert_exit, assert_ok, job_runs, run_cli

pytestmark = pytest.mark.slow

EXPERIMENT, MODEL = "team-exp", "team-model"
READER = ("reader", "reader-password-1")
WRITER = ("writer", "writer-password-1")
JOB = [
    "mlp.yaml",
    "--set", f"name={EXPERIMENT}",
    "--set", f"tracking.register_model={MODEL}",
    "--set", "search.num_samples=2",
    "--set", "search.fixed.epochs=3",
]  # fmt: skip


def as_user(user: tuple[str, str] | None) -> dict[str, str | None]:
    """MLflow's own credential variables for a CLI run (None: removed)."""
    name, password = user or (None, None)
    return {"MLFLOW_TRACKING_USERNAME": name, "MLFLOW_TRACKING_PASSWORD": password, "MLFLOW_TRACKING_TOKEN": None}


@pytest.fixture(scope="module")
def team_server(tmp_path_factory):
    """The server, with the experiment and the model made by the admin; the reader keeps
    MLflow's default READ on both, the writer gets EDIT on the experiment only."""
    from mlflow.server.auth.client import AuthServiceClient

    with servers.auth_mlflow_server(tmp_path_factory.mktemp("auth")) as server:
        before = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = servers.ADMIN
        try:
            admin = AuthServiceClient(server.uri)
            for name, password in (READER, WRITER):
                admin.create_user(name, password)
            client = MlflowClient(server.uri)
            experiment_id = client.create_experiment(EXPERIMENT)
            client.create_registered_model(MODEL)
            admin.grant_user_permission(WRITER[0], "experiment", experiment_id, "EDIT")
        finally:
            for key, value in before.items():
                os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        yield server


def admin_client(server) -> MlflowClient:
    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = (
        servers.ADMIN
    )  # put back by conftest
    return MlflowClient(server.uri)


@pytest.mark.parametrize(
    "user, expected",
    [
        (None, "the MLflow tracking server requires a user: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"),
        (
            (READER[0], "wrong"),
            "the MLflow tracking server refused user 'reader' and its password: check MLFLOW_TRACKING",
        ),
        (
            READER,
            "user 'reader' has READ on experiment 'team-exp'; a job writes runs there and needs EDIT: ask an MLflow",
        ),
    ],
    ids=["no-credentials", "wrong-password", "read-only"],
)
def test_credentials_or_permissions_the_server_refuses_are_one_line_before_ray_starts(
    team_server, tmp_path, user, expected
):
    shutil.copy(ROOT / "search_spaces" / "mlp.yaml", tmp_path)
    result = run_cli(*JOB, "--tracking-uri", team_server.uri, cwd=tmp_path, env=as_user(user))
    assert_exit(result, 2)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: mlp.yaml: --tracking-uri: "), result.stderr
    assert expected in lines[0]
    assert not (tmp_path / "ray_results").exists()  # Ray never started
    assert job_runs(admin_client(team_server), EXPERIMENT) == ([], [])  # and nothing was written


def test_a_user_who_may_not_register_gets_the_trials_recorded_and_a_warning(team_server, tmp_path):
    shutil.copy(ROOT / "search_spaces" / "mlp.yaml", tmp_path)
    result = run_cli(*JOB, "--tracking-uri", team_server.uri, cwd=tmp_path, env=as_user(WRITER))
    assert_ok(result)
    err = result.stderr
    assert (
        "warning: MLflow user 'writer' has READ on registered model 'team-model', and registering a version needs EDIT"
        in err
    )  # said before anything runs
    assert "warning: registry: user 'writer' may not register versions of 'team-model' (PERMISSION_DENIED)" in err
    assert "Traceback" not in err and "Registered model:" not in result.stdout
    client = admin_client(team_server)
    parents, children = job_runs(client, EXPERIMENT)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["mlflow.user"] == "writer"
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    assert client.search_model_versions(f"name = '{MODEL}'") == []


def test_the_pre_flight_judges_by_what_the_server_would_allow(team_server, monkeypatch):
    """An admin may write anywhere, whatever the permission API says of them; a model that does
    not exist yet is its registering user's (the creator gets MANAGE); an existing one the user
    may only read is reported before the job runs."""
    from tuning_platform.tracking.server_access import check_server_access

    def as_env(user: tuple[str, str]) -> None:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user[0])
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", user[1])

    as_env(WRITER)
    MlflowClient(team_server.uri).create_experiment("writers-own")
    assert check_server_access(team_server.uri, "writers-own", "nobody-made-it").model_permission_missing is None
    assert check_server_access(team_server.uri, EXPERIMENT, MODEL).model_permission_missing == "READ"
    as_env(servers.ADMIN)  # no grant on the writer's experiment, and none needed
    access = check_server_access(team_server.uri, "writers-own", MODEL)
    assert access.username == "admin" and access.model_permission_missing is None
    as_env(READER)  # a read-only command (`jobs`, `show`) only needs to be let in
    check_server_access(team_server.uri, None)
