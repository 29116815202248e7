"""The cluster configurations, checked offline: Ray's own schema, and what the project promises."""

from __future__ import annotations

import importlib.metadata
import re
import shlex
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from packaging.requirements import Requirement

from tests.helpers import ROOT

CLUSTER_YAML = ROOT / "cluster.yaml"
KUBERAY = ROOT / "deploy" / "kuberay"
CLUSTER_DOC = ROOT / "docs" / "cluster.md"


def pinned(name: str):
    """The version range the project allows for a dependency, such as `>=2.60,<2.61`."""
    # The installed project's metadata: pyproject.toml's dependencies as pip enforces them.
    requirements = [Requirement(r) for r in importlib.metadata.requires("tuning-platform")]
    (requirement,) = [r for r in requirements if r.name == name and not r.marker]
    return requirement.specifier


def test_ray_mlflow_and_optuna_are_bounded_above_and_ci_pins_them():
    constraints = dict(
        line.split("==", 1) for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line
    )
    for name in ("ray", "mlflow", "optuna"):
        assert any(spec.operator == "<" for spec in pinned(name)), name
        assert constraints[name] in pinned(name), (name, constraints[name])


def _ray_version(image: str) -> str:
    """`rayproject/ray:2.60.0-py311-gpu` -> `2.60.0`."""
    return image.split(":", 1)[1].split("-", 1)[0]


@pytest.fixture(scope="module")
def cluster_config():
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_passes_rays_own_schema(cluster_config):
    from ray.autoscaler._private.util import prepare_config, validate_config

    # What `ray up` does before anything else: fill in defaults, then validate.
    validate_config(prepare_config(cluster_config))


def test_ray_schema_check_is_real(cluster_config):
    from jsonschema import ValidationError
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = {**cluster_config, "available_node_types": {"head": {"resources": {}, "node_config": {}, "gpus": 1}}}
    with pytest.raises(ValidationError, match="'gpus' was unexpected"):
        validate_config(prepare_config(broken))


def test_gpu_workers_scale_from_zero_and_the_head_has_no_gpu(cluster_config):
    types = cluster_config["available_node_types"]
    head = types[cluster_config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    gpu_types = [t for name, t in types.items() if t.get("resources", {}).get("GPU", 0) >= 1]
    assert gpu_types, "a GPU worker type"
    assert all(t["min_workers"] == 0 for t in gpu_types)


def test_every_node_installs_the_mounted_project(cluster_config):
    mounted = [remote for remote, local in cluster_config["file_mounts"].items() if local == "."]
    assert len(mounted) == 1
    assert any("pip install" in c and mounted[0] in c for c in cluster_config["setup_commands"])
    # One image for all nodes, with a Ray version the project's pinned range allows.
    docker = cluster_config["docker"]
    for image in (docker["image"], docker["head_image"]):
        assert image.startswith("rayproject/ray:") and "-py311" in image
        assert _ray_version(image) in pinned("ray"), image
    assert _ray_version(docker["image"]) == _ray_version(docker["head_image"])


def test_head_runs_mlflow_and_nothing_listens_publicly(cluster_config):
    commands = " ".join(cluster_config["head_start_ray_commands"])
    mlflow = re.search(r"mlflow server .*", commands)
    assert mlflow and "--host 127.0.0.1" in mlflow.group(0)
    assert "--dashboard-host=127.0.0.1" in commands
    # As the tests' server runs (tests/servers.py), which checks that MLflow honours it.
    assert "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false nohup mlflow server" in commands
    assert "0.0.0.0" not in CLUSTER_YAML.read_text()


def test_every_node_runs_ray_with_token_auth_and_no_usage_stats(cluster_config):
    commands = cluster_config["head_start_ray_commands"] + cluster_config["worker_start_ray_commands"]
    starts = [c for c in commands if "ray start" in c]
    assert len(starts) == 2
    for command in starts:
        assert "RAY_AUTH_MODE=token " in command.split("ray start")[0] and "--disable-usage-stats" in command
    # One token, made once on the user's machine, where Ray looks on every node.
    assert cluster_config["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"
    # `ray job stop` waits for the graceful stop before its SIGKILL (Ray's default: 3 s).
    assert "RAY_JOB_STOP_WAIT_TIME_S=120 ray start --head" in " ".join(cluster_config["head_start_ray_commands"])


def _documents(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_rayjob_runs_the_platform_with_gpu_workers():
    (job,) = _documents(KUBERAY / "rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert "python -m platform.tune search_spaces/" in spec["entrypoint"]
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] in pinned("ray")
    dockerfile = (KUBERAY / "Dockerfile").read_text()
    assert _ray_version(re.search(r"^FROM (\S+)", dockerfile, re.M).group(1)) == cluster["rayVersion"]
    assert cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    gpu_groups = [
        group
        for group in cluster["workerGroupSpecs"]
        if any(c["resources"]["limits"].get("nvidia.com/gpu", 0) >= 1 for c in group["template"]["spec"]["containers"])
    ]
    assert gpu_groups and all(g["minReplicas"] == 0 for g in gpu_groups)
    assert cluster["authOptions"] == {"mode": "token"}
    containers = [cluster["headGroupSpec"]["template"]["spec"]["containers"][0]] + [
        g["template"]["spec"]["containers"][0] for g in cluster["workerGroupSpecs"]
    ]
    for container in containers:
        assert {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"} in container["env"]
    # The image the job runs is built from this repository.
    assert "pip install" in (KUBERAY / "Dockerfile").read_text()


def test_mlflow_on_kubernetes_stays_inside_the_cluster():
    documents = {d["kind"]: d for d in _documents(KUBERAY / "mlflow.yaml")}
    assert documents["Service"]["spec"]["type"] == "ClusterIP"
    (server,) = documents["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert {"name": "MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "value": "false"} in server["env"]
    (job,) = _documents(KUBERAY / "rayjob.yaml")
    name, port = documents["Service"]["metadata"]["name"], documents["Service"]["spec"]["ports"][0]["port"]
    assert f"--tracking-uri http://{name}:{port}" in job["spec"]["entrypoint"]


def server_options(arguments: list[str], monkeypatch, env: dict[str, str] | None = None) -> dict:
    """What the installed `mlflow server` makes of these arguments (after `mlflow server`), with
    only `env` of the variables its options read: click's own parsing, nothing started."""
    import mlflow.cli

    for param in mlflow.cli.server.params:
        for name in [param.envvar] if isinstance(param.envvar, str) else param.envvar or []:
            monkeypatch.delenv(name, raising=False)
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    return mlflow.cli.server.make_context("server", list(arguments)).params


def _bucket(uri: str) -> str:
    assert uri.startswith("s3://"), uri
    return urlsplit(uri).netloc


def _storage_buckets(text: str) -> set[str]:
    """The buckets of the jobs' `--storage-path s3://BUCKET/...` in a command or a page."""
    return set(re.findall(r"--storage-path s3://([^/\s]+)/", text))


def test_head_tracking_server_keeps_records_in_postgres_on_the_head_and_artifacts_in_the_bucket(
    cluster_config, monkeypatch
):
    """As tests/test_team_server.py runs it: PostgreSQL as the store, the artifacts proxied to a
    folder of the bucket the jobs' storage path names (docs/cluster.md's commands)."""
    starts = cluster_config["head_start_ray_commands"]
    (line,) = [c for c in starts if "mlflow server --" in c]
    words = shlex.split(line)
    arguments = words[words.index("server") + 1 : words.index(">")]
    options = server_options(arguments, monkeypatch)
    assert options["host"] == "127.0.0.1" and options["port"] == 5000
    assert options["serve_artifacts"] is True and options["default_artifact_root"] is None
    destination = options["artifacts_destination"]
    assert destination.endswith("/mlflow") and {_bucket(destination)} == _storage_buckets(CLUSTER_DOC.read_text())
    # The head's own PostgreSQL over its socket, with peer authentication: no password anywhere.
    store = urlsplit(options["backend_store_uri"])
    assert store.scheme == "postgresql" and store.password is None and not store.hostname
    socket = parse_qs(store.query)["host"][0]
    role, database = store.username, store.path.lstrip("/")
    setup = cluster_config["head_setup_commands"]
    assert any("apt-get install" in c and "postgresql" in c.split("apt-get install", 1)[1] for c in setup)
    assert any(f"createuser {role}" in c for c in setup) and any(f"createdb -O {role} {database}" in c for c in setup)
    assert any("listen_addresses = ''" in c for c in setup), "PostgreSQL listens on no TCP port"
    assert socket == "/var/run/postgresql"  # where Debian's and Ubuntu's PostgreSQL put it
    # It is started (again, after a stopped node) before the server, which needs its drivers.
    started = [i for i, c in enumerate(starts) if "service postgresql start" in c]
    assert started and started[0] < starts.index(line)
    assert any("[postgres]" in c and "boto3" in c and "pip install" in c for c in setup)
    # The extra as pyproject.toml declares it (an installed copy's metadata may predate it).
    pyproject = (ROOT / "pyproject.toml").read_text()
    extras = re.search(r"^\[project.optional-dependencies\]$(.*?)^\[", pyproject, re.M | re.S)
    assert re.search(r"^postgres = \[.*psycopg", extras.group(1), re.M)


def test_kubernetes_tracking_server_names_its_database_in_one_variable_and_uses_the_jobs_bucket(monkeypatch):
    documents = {d["kind"]: d for d in _documents(KUBERAY / "mlflow.yaml")}
    pod = documents["Deployment"]["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    assert server["command"][:2] == ["mlflow", "server"]
    assert not any(a.startswith("--backend-store-uri") for a in server["command"]), "the password stays off it"
    (variable,) = [e for e in server["env"] if e["name"] == "MLFLOW_BACKEND_STORE_URI"]
    assert set(variable["valueFrom"]["secretKeyRef"]) == {"name", "key"}
    # `mlflow server` itself reads the variable as its --backend-store-uri.
    managed = "postgresql://mlflow:secret@db.example.internal:5432/mlflow"
    options = server_options(server["command"][2:], monkeypatch, env={"MLFLOW_BACKEND_STORE_URI": managed})
    assert options["backend_store_uri"] == managed
    assert options["serve_artifacts"] is True and options["default_artifact_root"] is None
    (job,) = _documents(KUBERAY / "rayjob.yaml")
    destination = options["artifacts_destination"]
    assert destination.endswith("/mlflow") and {_bucket(destination)} == _storage_buckets(job["spec"]["entrypoint"])
    # Nothing of it on the pod's disk; the bucket through the pod's service account.
    assert "volumes" not in pod and "volumeMounts" not in server
    assert pod["serviceAccountName"] == documents["ServiceAccount"]["metadata"]["name"]
    assert "sqlite" not in (KUBERAY / "mlflow.yaml").read_text()
    install = re.search(r"^RUN pip install .*", (KUBERAY / "Dockerfile").read_text(), re.M).group(0)
    assert "[postgres]" in install and "boto3" in install
