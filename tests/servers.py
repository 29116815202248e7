"""Real servers on 127.0.0.1 that tests start and stop by their own process groups: an MLflow
tracking server, an S3-compatible object store (moto), and a Ray head with an autoscaler."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_group(process: subprocess.Popen, grace_s: float = 15) -> None:
    """SIGTERM the process group the test started, then SIGKILL what is left of it."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):  # children of an exited leader
        os.killpg(process.pid, signal.SIGKILL)


def wait_for_http(
    url: str, process: subprocess.Popen, log: Path, timeout: float = 90, headers: dict[str, str] | None = None
) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2):
                return
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"{url} never answered:\n{log.read_text()[-3000:]}") from None
            time.sleep(0.3)


# As `cluster.yaml` and deploy/kuberay/mlflow.yaml start it: without MLflow's job execution.
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def group_commands(process: subprocess.Popen) -> list[str]:
    """The command lines of the processes in the process group `process` leads."""
    commands = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            if entry.name.isdigit() and os.getpgid(int(entry.name)) == process.pid:
                commands.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip())
    return commands


@dataclass
class MlflowServer:
    folder: Path
    port: int
    process: subprocess.Popen | None = None
    app_name: str | None = None  # `basic-auth`: MLflow's users and permissions
    env: dict[str, str] | None = None  # added to this process's environment, for the server only
    backend_store_uri: str | None = None  # default: a SQLite file in `folder`
    artifacts_destination: str | None = None  # default: a folder in `folder`
    start_timeout_s: float = 90  # a first start on a new database also makes MLflow's tables there

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """`mlflow server` with its store and an artifact destination it serves (proxies); the
        same store and port again after `stop`, as a restarted server. It runs in `folder`, where
        a fallback to local artifacts would show."""
        log = self.folder / "server.log"
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "mlflow", "server",
                "--host", "127.0.0.1",
                "--port", str(self.port),
                "--workers", "1",
                "--backend-store-uri", self.backend_store_uri or f"sqlite:///{self.folder / 'server.db'}",
                "--artifacts-destination", self.artifacts_destination or str(self.folder / "artifacts"),
                "--serve-artifacts",  # MLflow's default, said as cluster.yaml says it
                *(["--app-name", self.app_name] if self.app_name else []),
            ],
            cwd=self.folder,
            stdout=log.open("a"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its worker processes go down with it
            env={**os.environ, **SERVER_ENV, **(self.env or {})},
        )  # fmt: skip
        wait_for_http(f"{self.uri}/health", self.process, log, timeout=self.start_timeout_s)

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process)
            self.process = None


@contextlib.contextmanager
def mlflow_server(folder: Path) -> Iterator[MlflowServer]:
    server = MlflowServer(folder, free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def s3_server(folder: Path) -> Iterator[dict[str, str]]:
    """moto's S3 server on 127.0.0.1 with one bucket, `tuning`; yields the environment a client
    needs (pyarrow, and so Ray, read the endpoint from AWS_ENDPOINT_URL)."""
    port = free_port()
    log = folder / "s3.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    try:
        wait_for_http(f"{env['AWS_ENDPOINT_URL']}/moto-api/", process, log)
        request = urllib.request.Request(f"{env['AWS_ENDPOINT_URL']}/tuning", method="PUT")
        urllib.request.urlopen(request, timeout=10).close()  # create the bucket
        yield env
    finally:
        stop_group(process)


@dataclass
class RayHead:
    address: str  # the GCS, HOST:PORT
    dashboard: str  # http://127.0.0.1:PORT, where `ray job submit` goes
    env: dict[str, str]  # what a client needs: the token and its mode


@contextlib.contextmanager
def autoscaling_ray_head(folder: Path, worker_types: dict, head_cpus: int, env: dict[str, str]) -> Iterator[RayHead]:
    """`ray start --head` with Ray's fake multi-node autoscaler, which launches each "node" as
    real raylet processes on this machine, and with token authentication.

    The provider joins its nodes to the GCS named in `provider.gcs_address`, so the head may
    listen on any free port (without it, the provider assumes 6379). Nodes are never removed for
    idleness: a removed fake node deletes files its siblings on this machine share (Ray's
    runtime_resources folder, holding a submitted job's working directory).
    """
    import ray._private.services

    ip = ray._private.services.get_node_ip_address()
    port, dashboard = free_port(), free_port()
    token = folder / "auth_token"
    token.write_text(secrets.token_hex(32))
    config = {
        "cluster_name": "fake",
        "max_workers": sum(t["max_workers"] for t in worker_types.values()),
        "idle_timeout_minutes": 60,
        "upscaling_speed": 1.0,
        "provider": {
            "type": "fake_multinode",
            "gcs_address": f"{ip}:{port}",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": head_cpus}, "node_config": {}, "max_workers": 0},
            **worker_types,
        },
        "head_node_type": "ray.head.default",  # the provider tags its head with this type
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }
    (folder / "autoscaling.json").write_text(json.dumps(config))
    client_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    head_env = {
        **{k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")},
        **client_env,
        **env,
        "RAY_FAKE_CLUSTER": "1",
        "AUTOSCALER_UPDATE_INTERVAL_S": "1",
    }
    log = folder / "head.log"
    # Short: Ray's socket paths under it must stay within AF_UNIX's 107 bytes.
    ray_temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    process = subprocess.Popen(
        [
            RAY, "start", "--head", "--block",
            f"--port={port}",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
            f"--autoscaling-config={folder / 'autoscaling.json'}",
            f"--num-cpus={head_cpus}", "--num-gpus=0",
            "--disable-usage-stats",
            f"--temp-dir={ray_temp}",
        ],
        env=head_env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # the head, its autoscaler and every node it launches
    )  # fmt: skip
    try:
        # The dashboard asks for the token too (Ray's HTTP token middleware).
        bearer = {"Authorization": f"Bearer {token.read_text()}"}
        wait_for_http(f"http://127.0.0.1:{dashboard}/api/version", process, log, timeout=120, headers=bearer)
        yield RayHead(f"{ip}:{port}", f"http://127.0.0.1:{dashboard}", client_env)
    finally:
        # `ray start --block` takes over 15 s to stop on SIGTERM; nothing of it is kept after the
        # tests, so 5 s of grace and then SIGKILL for the whole group.
        stop_group(process, grace_s=5)
        shutil.rmtree(ray_temp, ignore_errors=True)


def postgres_binary(name: str) -> str:
    """A PostgreSQL server program (`initdb`, `pg_ctl`): on PATH, else where Debian's
    `postgresql` package puts them (`.ci/run` installs it where it is missing)."""
    found = shutil.which(name)
    if found:
        return found
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (folder / name).exists():
            return str(folder / name)
    raise RuntimeError(f"PostgreSQL's {name} not found: install Debian's postgresql package")


@dataclass
class PostgresServer:
    """A PostgreSQL server in a folder of its own, on a free port of 127.0.0.1, with password
    authentication over TCP (as a team's database has it) and a superuser `admin` / `admin`.

    PostgreSQL refuses to run as root, so as root the server runs as Debian's `postgres` user
    (or `nobody`), which owns its folder; the folder is a new one under /tmp, since a test's
    tmp_path lies in a folder only root may enter (and the server's socket path must stay short)."""

    folder: Path
    port: int

    def uri(self, database: str = "mlflow", user: str = "admin", password: str = "admin", driver: str = "") -> str:
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{user}:{password}@127.0.0.1:{self.port}/{database}"

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def _run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        prefix: list[str] = []
        if os.geteuid() == 0:
            user = "postgres" if _user_exists("postgres") else "nobody"
            prefix = ["runuser", "-u", user, "--"]
        return subprocess.run([*prefix, *command], capture_output=True, text=True, check=check, timeout=120)

    def init(self) -> None:
        password = self.folder / "pwfile"
        password.write_text("admin\n")
        if os.geteuid() == 0:
            user = "postgres" if _user_exists("postgres") else "nobody"
            shutil.chown(self.folder, user)
            shutil.chown(password, user)
        result = self._run(
            postgres_binary("initdb"), "-D", str(self.data), "-U", "admin", f"--pwfile={password}",
            "--auth-host=scram-sha-256", "--auth-local=trust", "--no-sync", check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed: {result.stdout}{result.stderr}")

    def start(self) -> None:
        """Starts it (again, after `stop`: the same data and port, as a restarted database)."""
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} -c fsync=off -c max_connections=200"
        result = self._run(
            postgres_binary("pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "server.log"),
            "-o", options, "-w", "-t", "60", "start", check=False,
        )  # fmt: skip
        if result.returncode != 0:
            log = (self.folder / "server.log").read_text()[-3000:] if (self.folder / "server.log").exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {result.stdout}{result.stderr}\n{log}")

    def stop(self) -> None:
        self._run(postgres_binary("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Runs one statement as `admin` over the server's own socket; returns what psql printed."""
        return self._run(
            "psql", "-h", str(self.folder), "-p", str(self.port), "-U", "admin", "-d", database,
            "-v", "ON_ERROR_STOP=1", "-At", "-c", statement,
        ).stdout  # fmt: skip

    def create_database(self, name: str = "mlflow") -> str:
        self.sql(f'CREATE DATABASE "{name}"')
        return self.uri(name)


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A new PostgreSQL server with one database, `mlflow`; stopped and its folder removed after."""
    server = PostgresServer(Path(tempfile.mkdtemp(prefix="pg-", dir="/tmp")), free_port())
    try:
        server.init()
        server.start()
        server.create_database("mlflow")
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.folder, ignore_errors=True)


ADMIN = ("admin", "admin-password-1")


@contextlib.contextmanager
def auth_mlflow_server(folder: Path) -> Iterator[MlflowServer]:
    """`mlflow server --app-name basic-auth`, as a team runs it: users and permissions in a
    database of their own, the admin `ADMIN`, and users who get READ by default (MLflow's
    default_permission) on what they did not create. Add users and grants with
    `mlflow.server.auth.client.AuthServiceClient` and the admin's credentials."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "basic_auth.ini"
    config.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{folder / 'basic_auth.db'}\n"
        f"admin_username = {ADMIN[0]}\n"
        f"admin_password = {ADMIN[1]}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}
    server = MlflowServer(folder, free_port(), app_name="basic-auth", env=env)
    server.start()
    try:
        yield server
    finally:
        server.stop()
