"""Reaching the Ray a job runs on: a cluster's address and token, checked before anything
starts, or an embedded local Ray started for the job."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tuning_platform._compat import ray as ray_compat
from tuning_platform.cluster.runtime_env import cluster_runtime_env, local_runtime_env
from tuning_platform.errors import JobError

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
    from ray.exceptions import AuthenticationError

    def ask() -> None:
        with _native_stderr_hidden():  # Ray's C++ client logs each refusal there as well
            ray_compat.gcs_probe(address, GCS_PROBE_TIMEOUT_S)

    try:
        ask()
        return None
    except AuthenticationError:
        pass
    except Exception as err:  # noqa: BLE001 - any other answer means no usable Ray there
        return f"Ray cluster not reachable: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
    if not ray_compat.auth_token_found():
        return (
            f"the Ray cluster requires an authentication token: set {TOKEN_SOURCES} "
            "(`ray get-auth-token` on the head prints it)"
        )
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        ray_compat.enable_token_auth()
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
        runtime_env=local_runtime_env(),
    )
