"""The Ray a job runs on: reaching it (address, token), shipping the code to it, and sizing
trials against what it has or, on an autoscaling cluster, what it can launch.

Ray 2.60 offers no public view of an autoscaler's node types. They are read, in this order,
from the cluster config in the GCS (autoscaler v2 and KubeRay report it), then from the
autoscaling config file of the cluster launcher's monitor process on the head node (what
`ray up` and `ray start --autoscaling-config` run). Both are Ray internals, kept in this module
and held by `tests/test_autoscaling.py`, which fails when they change.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuning_platform.errors import JobError
from tuning_platform.spec import Spec


def trainables_folder() -> Path:
    """Where the built-in trainables this process imports live (installed, or the repository)."""
    import trainables

    return Path(trainables.__file__).resolve().parent


# Never shipped to a cluster with the code: local records, run outputs, environments, caches.
WORKING_DIR_EXCLUDES = [
    ".git",
    ".venv",
    "venv",
    "mlflow.db",
    "mlruns",
    "mlartifacts",
    "ray_results",
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    ".ruff_cache",
]

# Where Ray's own CLI finds a cluster's token (ray/_raylet AuthenticationTokenLoader).
TOKEN_SOURCES = "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token"
GCS_PROBE_TIMEOUT_S = 5


# ---------------------------------------------------------------------------------------------
# Reaching a cluster


def probe_cluster(address: str) -> str | None:
    """Ask the cluster's GCS one question before the job starts; the reason it cannot be used,
    or None. Ray itself would retry a missing token for 20 s and then end in a traceback.

    A cluster with token authentication is reached with the token where Ray's CLI finds it;
    Ray uses it for an explicit address only when `RAY_AUTH_MODE=token` (ray/_private/worker.py,
    `ray.init`: only address None or "auto" turns it on), so this sets that when needed.
    """
    if address.startswith("ray://") or address in ("auto", "local"):
        return None  # Ray Client, or found on this machine: Ray checks those itself
    from ray._raylet import AuthenticationTokenLoader, GcsClient
    from ray.exceptions import AuthenticationError

    def ask() -> None:
        with _native_stderr_hidden():  # Ray's C++ client logs each refusal there as well
            GcsClient(address=address).internal_kv_get(b"tuning-platform-probe", None, timeout=GCS_PROBE_TIMEOUT_S)

    try:
        ask()
        return None
    except AuthenticationError:
        pass
    except Exception as err:  # noqa: BLE001 - any other answer means no usable Ray there
        return f"Ray cluster not reachable: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
    if not AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True):
        return (
            f"the Ray cluster requires an authentication token: set {TOKEN_SOURCES} "
            "(`ray get-auth-token` on the head prints it)"
        )
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        _use_token_auth()
        try:
            ask()
            return None
        except AuthenticationError:
            pass
    return f"the Ray cluster refused the authentication token from {TOKEN_SOURCES}: it is not this cluster's"


@contextmanager
def _native_stderr_hidden() -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _use_token_auth() -> None:
    # What Ray does for a local cluster that has a token
    # (ray/_private/authentication/authentication_token_setup.py, `_enable_token_auth`).
    from ray._raylet import AuthenticationTokenLoader, Config

    os.environ["RAY_AUTH_MODE"] = "token"
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def connect_ray(
    address: str | None, cpu_per_trial: float, storage_path: str | None = None, data_parallel: bool = False
) -> bool:
    """Join the cluster at `address`, or start an embedded Ray of all local CPUs; returns
    whether this job started the connection (and so shuts it down at its end).

    On a cluster the code travels with the job: the working directory (where a user's own
    `module:function` trainable lives) and the `trainables` package are shipped in the
    runtime environment, so every node imports what this machine imports. A job started with
    `ray job submit --working-dir` already ships its working directory, and Ray refuses to merge
    a second one into it, so then only what it lacks is added.
    `address="local"` makes the embedded mode start its own Ray and never attach to a stray
    cluster that happens to run on this machine.
    """
    import ray

    if ray.is_initialized():  # a caller's Ray (a notebook, the benchmarks): used as it is, left running
        return False
    if address:
        ray.init(address=address, logging_level=logging.WARNING, runtime_env=cluster_runtime_env(storage_path))
        return True
    cpus = os.cpu_count() or 1
    if cpu_per_trial > cpus:  # all its workers together
        raise JobError(f"resources.cpu: a trial asks for {cpu_per_trial:g} CPUs but this machine has {cpus}")
    start_local_ray(cpus, dashboard=data_parallel)
    return True


def start_local_ray(cpus: int, dashboard: bool = False) -> None:
    """The embedded Ray of a job without `--address`: this machine only, never a stray cluster.

    Ray's default token authentication stays on; its usage statistics are off unless the user
    turned them on (`RAY_USAGE_STATS_ENABLED=1`): a tuning job does not call out by itself.
    So are its metrics (`RAY_enable_metrics_collection=1` turns them on): nothing reads them
    from a Ray that lives for one job, and Ray 2.60 leaves the driver's metrics exporter running
    after `ray.shutdown()` (it tries every 10 s, with a new thread, to reach the stopped
    cluster's agent; ray-project/ray#58952 mended part of it). A process that runs job after job
    (a notebook, the test suite) gathers one per Ray; the test suite's process, with several of
    them running, once died of a segmentation fault.
    """
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_enable_metrics_collection", "0")
    ray.init(
        address="local",
        num_cpus=cpus,
        # Ray Train V2 cleans up after a trial that ASHA stopped through the State API, which
        # the dashboard serves (on 127.0.0.1); other jobs save its start-up time.
        include_dashboard=dashboard,
        logging_level=logging.WARNING,
        # Workers run this Python, so they import `trainables` where this process does, and a
        # user's own module from this working directory (Ray adds it to their path).
        runtime_env=_local_runtime_env(),
    )


def _local_runtime_env() -> dict[str, Any] | None:
    """Nothing, unless this process found `trainables` where its workers will not: not installed
    (`pip install`, editable or not), not in the working directory, not on PYTHONPATH (which
    workers inherit). Then its folder is shipped to them as a module."""
    import importlib.metadata

    folder = trainables_folder()
    on_path = [Path(p).resolve() for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if folder.parent in (Path.cwd().resolve(), *on_path):
        return None
    try:
        importlib.metadata.distribution("tuning-platform")
        return None
    except importlib.metadata.PackageNotFoundError:
        return {"py_modules": [str(folder)]}


def submitted_job_runtime_env() -> dict[str, Any] | None:
    """The runtime environment `ray job submit` gave this driver, or None when it was not
    submitted that way (ray/_private/worker.py reads the same variable in `ray.init`)."""
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    text = os.environ.get(RAY_JOB_CONFIG_JSON_ENV_VAR)
    if not text:
        return None
    return json.loads(text).get("runtime_env") or {}


def cluster_runtime_env(storage_path: str | None = None) -> dict[str, Any] | None:
    """The runtime environment a job ships to a cluster: the working directory, plus the
    `trainables` package when it lives elsewhere, without local records and run outputs.
    For a submitted job that shipped its own working directory, only the `trainables` package
    when that directory lacks it."""
    cwd = Path.cwd().resolve()
    trainables = trainables_folder()
    submitted = submitted_job_runtime_env()
    if submitted is not None and submitted.get("working_dir"):
        if (cwd / "trainables").is_dir() or submitted.get("py_modules"):
            return None
        return {"py_modules": [str(trainables)]}
    excludes = list(WORKING_DIR_EXCLUDES)
    if storage_path and "://" not in storage_path:
        storage = Path(storage_path).resolve()
        if storage.is_relative_to(cwd) and storage != cwd:
            excludes.append(str(storage.relative_to(cwd)))
    env: dict[str, Any] = {"working_dir": str(cwd), "excludes": excludes}
    if not trainables.resolve().is_relative_to(cwd):
        env["py_modules"] = [str(trainables)]
    return env


def check_storage_shared(storage_path: str, autoscaling: bool = False) -> list[str]:
    """Every live node must see a local storage path: Ray keeps trial state and checkpoints
    there from all of them. Returns notes; raises JobError when a node cannot see it.

    Cloud URIs (s3://, gs://) are left to Ray. One node alone is fine, but an autoscaling
    cluster may add nodes later, which a note says.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if "://" in storage_path:
        return []
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    if len(nodes) <= 1 and autoscaling:
        return [
            f"warning: storage path {storage_path} is on this node, and the nodes the autoscaler adds "
            "will not see it: use s3://, gs:// or a shared file system (--storage-path)"
        ]
    if len(nodes) <= 1:
        return [
            f"note: storage path {storage_path} is on this node; if the cluster adds nodes, "
            "use s3://, gs:// or a shared file system (--storage-path)"
        ]
    folder = Path(storage_path)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / f".storage-check-{uuid.uuid4().hex}"
    marker.write_text("")

    @ray.remote(num_cpus=0)
    def sees(path: str) -> bool:
        return os.path.exists(path)

    try:
        probes = [
            sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(
                str(marker)
            )
            for node in nodes
        ]
        seen = ray.get(probes, timeout=120)
    finally:
        marker.unlink(missing_ok=True)
        if created:
            folder.rmdir()
    blind = [node["NodeManagerAddress"] for node, ok in zip(nodes, seen, strict=True) if not ok]
    if blind:
        raise JobError(
            f"storage path {storage_path} is local to this machine; nodes {', '.join(sorted(set(blind)))} "
            "cannot see it: use s3://, gs:// or a shared file system (--storage-path)"
        )
    return []


# ---------------------------------------------------------------------------------------------
# What the cluster has, or can launch


@dataclass(frozen=True)
class NodeType:
    name: str
    resources: dict[str, float]
    max_count: int  # nodes of this type that can exist at once


@dataclass(frozen=True)
class Capacity:
    """The nodes a job's trials can use: the live ones, or with an autoscaler every node type
    it may launch (`node_types` is None when an autoscaler runs whose types cannot be read)."""

    node_types: list[NodeType] | None
    autoscaling: bool

    def total(self, resource: str) -> float:
        return sum(t.resources.get(resource, 0) * t.max_count for t in self.node_types or [])

    def fits_on_one_node(self, bundle: dict[str, float]) -> bool:
        return any(
            all(t.resources.get(key, 0) >= need for key, need in bundle.items() if need > 0)
            for t in self.node_types or []
        )

    def describe(self) -> str:
        return "; ".join(
            f"{t.name} {_resource_text(t.resources)}" + (f" x{t.max_count}" if self.autoscaling else "")
            for t in self.node_types or []
        )


def _resource_text(resources: dict[str, float]) -> str:
    shown = {k: v for k, v in resources.items() if k in ("CPU", "GPU") or not k.islower()}
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(shown.items())) + "}"


def cluster_capacity(embedded: bool) -> Capacity:
    """What the job's trials can use: the live nodes, or every node type an autoscaler may
    launch; `node_types` None when an autoscaler runs whose types cannot be read.

    Ray runs its monitor on every head it starts, a static one too (`ray start` without
    `--autoscaling-config`, `ray.cluster_utils.Cluster`, Slurm): there it drives a read-only
    provider, launches nothing, and writes an autoscaling status to the GCS all the same. So a
    cluster counts as one that grows only on evidence of node types to launch: the cluster config
    in the GCS, the launcher's config on the head, or a status naming types of its own.
    """
    import ray

    live = [
        NodeType(node["NodeManagerAddress"], dict(node.get("Resources") or {}), 1)
        for node in ray.nodes()
        if node.get("Alive")
    ]
    if embedded:
        return Capacity(live, autoscaling=False)
    types = _gcs_node_types()
    if types is not None:
        return Capacity(types, autoscaling=True)
    monitor = _head_monitor()
    if monitor is not None:
        found, config = monitor
        if config:
            return Capacity(_launcher_node_types(config), autoscaling=True)
        if found:  # the monitor without a config: the read-only provider, a cluster that stays as it is
            return Capacity(live, autoscaling=False)
    if autoscaler_running():
        return Capacity(None, autoscaling=True)
    return Capacity(live, autoscaling=False)


def autoscaler_node_types() -> list[NodeType] | None:
    """The node types an autoscaler of this cluster can launch, or None (no autoscaler, or one
    whose configuration this driver cannot read)."""
    types = _gcs_node_types()
    if types is not None:
        return types
    monitor = _head_monitor()
    if monitor is None or not monitor[1]:
        return None
    return _launcher_node_types(monitor[1])


def _gcs_node_types() -> list[NodeType] | None:
    """The node groups of the cluster config in the GCS (autoscaler v2 and KubeRay report it;
    a static cluster has none), or None."""
    import ray

    config = ray._private.state.state.get_cluster_config()  # ray/_private/state.py, get_cluster_config
    if config is not None and config.node_group_configs:
        return [
            NodeType(group.name, {k: float(v) for k, v in group.resources.items()}, _count(group.max_count))
            for group in config.node_group_configs
        ]
    return None


def _head_monitor() -> tuple[bool, dict[str, Any] | None] | None:
    """What the head node says of this cluster's monitor process: whether it runs there, and its
    autoscaling config (None: started without one); None when the head cannot be asked."""
    import ray

    # Nested, so Ray ships it by value: the head may not import this package.
    def _monitor_on_head(gcs_address: str) -> tuple[bool, dict[str, Any] | None]:
        """Runs on the head node: this cluster's monitor process and its autoscaling config.

        The monitor is started as `monitor.py --gcs-address=... [--autoscaling-config=PATH]`
        (ray/_private/services.py, `start_monitor`, lines 2387 and 2404 in Ray 2.60; v1's
        ray/autoscaler/_private/monitor.py and v2's ray/autoscaler/v2/monitor.py alike). Without
        the config it drives the read-only provider, which never launches a node (v1:
        monitor.py `_initialize_autoscaler`, `BASE_READONLY_CONFIG` with `max_workers: 0`, lines
        108 and 228-234; v2: monitor.py line 333, `ReadOnlyProviderConfigReader`).
        """
        import os

        import psutil
        import yaml

        for process in psutil.process_iter(["cmdline"]):
            args = process.info.get("cmdline") or []
            if not any(arg.endswith("monitor.py") for arg in args) or f"--gcs-address={gcs_address}" not in args:
                continue
            path = next((arg.split("=", 1)[1] for arg in args if arg.startswith("--autoscaling-config=")), None)
            if not path:
                return True, None
            with open(os.path.expanduser(path)) as handle:
                return True, yaml.safe_load(handle)
        return False, None

    gcs_address = ray.get_runtime_context().gcs_address
    reader = ray.remote(_monitor_on_head).options(
        num_cpus=0, resources={"node:__internal_head__": 0.001}, max_retries=0
    )
    try:
        found, config = ray.get(reader.remote(gcs_address), timeout=30)
    except Exception:  # noqa: BLE001 - no readable head (Ray Client, a head without the marker)
        return None
    return found, config


def _launcher_node_types(launcher: dict[str, Any]) -> list[NodeType]:
    head = launcher.get("head_node_type")
    return [
        NodeType(
            name,
            {k: float(v) for k, v in (node_type.get("resources") or {}).items()},
            1 if name == head else _count(node_type.get("max_workers", launcher.get("max_workers", 0))),
        )
        for name, node_type in (launcher.get("available_node_types") or {}).items()
    ]


def _count(value: Any) -> int:
    count = int(value)
    return sys.maxsize // 2**20 if count < 0 else count  # -1: no limit


def autoscaler_running() -> bool:
    """Whether an autoscaler that may launch nodes reports to the GCS.

    A monitor writes DEBUG_AUTOSCALING_STATUS every update (ray/autoscaler/_private/monitor.py,
    line 452 in Ray 2.60), on a static cluster too, where its read-only provider names each node's
    type after the node itself: `node_<id>` (ray/autoscaler/_private/util.py
    `format_readonly_node_type`, line 986; ray/autoscaler/_private/readonly/node_provider.py line
    40), keyed by that id in the report's `node_type_mapping` (its `internal_ip` is the id; the
    mapping is built in ray/autoscaler/_private/autoscaler.py line 1520). Such a status is no
    autoscaler. Before the monitor's first update the status has no report; that one counts as an
    autoscaler, as any status did before.
    """
    status = autoscaler_status()
    if status is None:
        return False
    return not _read_only_provider(status)


def _read_only_provider(status: dict[str, Any]) -> bool:
    from ray.autoscaler._private.util import format_readonly_node_type

    mapping = (status.get("autoscaler_report") or {}).get("node_type_mapping") or {}
    return bool(mapping) and all(node_type == format_readonly_node_type(node) for node, node_type in mapping.items())


def autoscaler_status() -> dict[str, Any] | None:
    """The status the cluster's monitor last wrote to the GCS, or None: none written, no Ray
    connected, or a GCS that does not answer. Anything else (a Ray internal renamed) is raised."""
    from ray._private import ray_constants
    from ray.exceptions import RpcError
    from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_initialized

    key = ray_constants.DEBUG_AUTOSCALING_STATUS  # ray/_private/ray_constants.py, line 56 in Ray 2.60
    if not _internal_kv_initialized():  # its client is None until ray.init (ray/experimental/internal_kv.py)
        return None
    try:
        raw = _internal_kv_get(key)
    except (RpcError, OSError):
        # What a GcsClient read raises when the GCS does not answer: RpcError, timeouts included;
        # IOError; ConnectionError through Ray Client (ray/includes/gcs_client.pxi and
        # `check_status_timeout_as_rpc_error` in ray/_raylet.pyx).
        return None
    return json.loads(raw) if raw else None


def fit_resources(spec: Spec, embedded: bool) -> tuple[dict[str, float], list[str], Capacity]:
    """Per-worker resources the cluster can satisfy, notes, and the capacity they were checked
    against. A request no node can ever meet is an error, never a silent wait.

    A trial has `resources.workers` workers (1: the trial process itself); the cpu and gpu
    figures are per worker. On an autoscaling cluster a request is checked against the node
    types the autoscaler may launch, not the nodes alive now: GPU workers start from zero.
    """
    capacity = cluster_capacity(embedded)
    return (*check_resources(spec, capacity, embedded), capacity)


def check_resources(spec: Spec, capacity: Capacity, embedded: bool) -> tuple[dict[str, float], list[str]]:
    """The rules of `fit_resources` for a known capacity: the per-worker resources and notes."""
    notes: list[str] = []
    cpu, gpu, workers = spec.resources.cpu, spec.resources.gpu, spec.resources.workers
    where = "no node type of the cluster" if capacity.autoscaling else "no node of the cluster"
    if capacity.node_types is None:
        notes.append(
            "note: an autoscaler runs on this cluster but its node types cannot be read from here; "
            "trials wait for the nodes it launches"
        )
        return {"cpu": cpu, "gpu": gpu}, notes
    if gpu > 0 and capacity.total("GPU") == 0:
        if embedded:
            notes.append(f"warning: resources.gpu={gpu:g} but this machine has no GPU; running trials on CPU")
            gpu = 0.0
        else:
            raise JobError(f"resources.gpu: trials ask for {gpu:g} GPU but {where} has a GPU ({capacity.describe()})")
    # An embedded Ray was already checked against this machine's CPUs before it started.
    if not embedded and not capacity.fits_on_one_node({"CPU": cpu, "GPU": gpu}):
        raise JobError(
            f"resources: a trial worker asks for {cpu:g} CPU and {gpu:g} GPU; "
            f"{where} has that much ({capacity.describe()})"
        )
    for name, per_worker in (("cpu", cpu), ("gpu", gpu)):
        total = capacity.total(name.upper())
        if per_worker > 0 and per_worker * workers > total and not (embedded and name == "cpu"):
            grows = " at its largest" if capacity.autoscaling else ""
            raise JobError(
                f"resources.{name}: a trial asks for {per_worker * workers:g} {name.upper()}s "
                f"({workers} x {per_worker:g}); the cluster has {total:g}{grows}"
            )
    return {"cpu": cpu, "gpu": gpu}, notes


def concurrent_groups(spec: Spec, resources: dict[str, float], capacity: Capacity | None) -> int | None:
    """How many data-parallel trials can hold all their workers at once.

    A Ray Train run starts only when all its workers fit; drivers beyond this count would sit
    waiting for workers (and hold the Tune slot), so Tune launches no more than that. On an
    autoscaling cluster the count is what the cluster can grow to.
    """
    workers = spec.resources.workers
    if workers == 1 or capacity is None or capacity.node_types is None:
        return spec.search.max_concurrent
    fits = [int(capacity.total("CPU") // (resources["cpu"] * workers))] if resources["cpu"] > 0 else []
    if resources["gpu"] > 0:
        fits.append(int(capacity.total("GPU") // (resources["gpu"] * workers)))
    limit = max(1, min(fits)) if fits else 1
    return min(limit, spec.search.max_concurrent) if spec.search.max_concurrent else limit
