"""A tracking server as a team runs it, and as `cluster.yaml` and deploy/kuberay/mlflow.yaml start
it: `mlflow server` over PostgreSQL, proxying artifacts to a bucket (`--artifacts-destination
s3://... --serve-artifacts`). Only the server holds the bucket's credentials: the job and
`mlflow models serve` talk to it over HTTP and have no AWS variable at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tests import servers
from tests.helpers import SPECS, assert_ok, cli_env, job_runs, run_main
from tuning_platform.insight import PICTURES

pytestmark = pytest.mark.slow

BUCKET = "tuning"
ARTIFACTS = f"s3://{BUCKET}/mlflow"  # as the cluster's: a folder of the bucket its storage path uses
EXPERIMENT = "mlp-breast-cancer"  # search_spaces/mlp.yaml
MODEL = f"{EXPERIMENT}-smoke"
# What an MLflow client may write to the working folder when it falls back to a local store or
# artifact location (`mlflow server` without a destination: ./mlartifacts).
LOCAL_RECORDS = ("mlruns", "mlartifacts", "artifacts", "mlflow.db")


def without_aws(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not k.startswith("AWS_")}


def bucket_keys(s3_env: dict[str, str]) -> list[str]:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=s3_env["AWS_ENDPOINT_URL"],
        aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"],
        region_name=s3_env["AWS_DEFAULT_REGION"],
    )
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def test_a_job_against_a_postgres_server_with_artifacts_in_a_bucket_is_served_from_there(tmp_path, monkeypatch):
    folders = {name: tmp_path / name for name in ("s3", "server", "job", "serve")}
    for folder in folders.values():
        folder.mkdir()
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)  # the job runs in this process (`run_main`): no credentials, no endpoint
    with (
        servers.postgres_server() as database,
        servers.s3_server(folders["s3"]) as s3_env,
    ):
        # The bucket's endpoint and credentials are in the server's environment only.
        server = servers.MlflowServer(
            folders["server"],
            servers.free_port(),
            env=s3_env,
            backend_store_uri=database.uri(database="mlflow"),
            artifacts_destination=ARTIFACTS,
            start_timeout_s=180,  # its first start makes MLflow's tables in PostgreSQL (about 10 s here)
        )
        try:
            server.start()
            result = run_main(
                str(SPECS / "mlp.yaml"), "--smoke-test", "--set", "search.num_samples=2",
                "--tracking-uri", server.uri,
                "--storage-path", str(tmp_path / "ray_results"),
                cwd=folders["job"],
            )  # fmt: skip
            assert_ok(result)
            serve = start_serving(server.uri, folders["serve"])
            try:
                # While the model server starts: what the job left, and where.
                check_the_bucket(server.uri, s3_env)
                for name, folder in folders.items():
                    found = [record for record in LOCAL_RECORDS if (folder / record).exists()]
                    assert not found, f"{name}: {found} written locally"
                mlflow.set_tracking_uri(server.uri)
                model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
                example = model.input_example
                expected = model.predict(example).to_dict(orient="records")
                # The JSON a user sends: the table, column by column names, no index.
                body = {"dataframe_split": json.loads(example.to_json(orient="split", index=False))}
                answered = predict_over_http(serve, body, folders["serve"] / "serve.log")
            finally:
                servers.stop_group(serve.process)
        finally:
            server.stop()
    assert len(answered) == len(example) > 0
    for got, want in zip(answered, expected, strict=True):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-7)


def check_the_bucket(uri: str, s3_env: dict[str, str]) -> None:
    """The parent run's files, its search pictures and the registered model's files are objects
    of the bucket, under the server's destination; clients see them only as the server's."""
    client = MlflowClient(uri)
    (parent,), children = job_runs(client, EXPERIMENT)
    assert parent.info.status == "FINISHED" and len(children) == 2
    # A proxied location: a client never learns of the bucket, so it needs no credentials.
    assert parent.info.artifact_uri.startswith("mlflow-artifacts:/"), parent.info.artifact_uri
    version = client.get_model_version_by_alias(MODEL, "champion")
    assert version.tags["parent_run_id"] == parent.info.run_id
    keys = bucket_keys(s3_env)
    assert all(key.startswith("mlflow/") for key in keys), keys
    run_files = {k.split(f"/{parent.info.run_id}/artifacts/", 1)[1] for k in keys if f"/{parent.info.run_id}/" in k}
    assert {"spec.yaml", "resolved_spec.yaml"} | {f"search/{name}" for name in PICTURES} <= run_files, run_files
    # The version's source is its logged model, `models:/m-...`: MLflow keeps its files apart from the run's.
    assert version.source.startswith("models:/m-"), version.source
    model_id = version.source.removeprefix("models:/")
    model_files = {k.split(f"/models/{model_id}/artifacts/", 1)[1] for k in keys if f"/models/{model_id}/" in k}
    # The table model's weights are in python_model.pkl (a TablePredictor); its code travels along.
    expected = {"MLmodel", "python_model.pkl", "requirements.txt", "serving_input_example.json"}
    expected.add("code/trainables/mlp.py")
    assert expected <= model_files, model_files


@dataclass
class Serving:
    process: subprocess.Popen
    port: int


def start_serving(uri: str, folder: Path) -> Serving:
    """`mlflow models serve -m models:/NAME@champion` as a user starts it against the team's
    server: MLFLOW_TRACKING_URI set, no AWS variable."""
    port = servers.free_port()
    command = ["mlflow", "models", "serve", "-m", f"models:/{MODEL}@champion", "--env-manager", "local"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    with (folder / "serve.log").open("w") as out:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / command[0]), *command[1:]],
            cwd=folder,
            env={**without_aws(cli_env()), "MLFLOW_TRACKING_URI": uri},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Serving(process, port)


def predict_over_http(serve: Serving, body: dict, log: Path) -> list:
    servers.wait_for_http(f"http://127.0.0.1:{serve.port}/ping", serve.process, log, timeout=180)
    request = urllib.request.Request(
        f"http://127.0.0.1:{serve.port}/invocations", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        assert answer.status == 200
        return json.loads(answer.read())["predictions"]
