"""What a job is asked to do, checked before anything starts: the spec (a file or a mapping,
with overrides), the trainable and its data block, the tracking store, the cluster, the storage
path, and with `resume` the unfinished job to continue.

Every problem found here is a `SpecError` (the CLI's exit 2); nothing is written or started.
"""

from __future__ import annotations

import logging
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuning_platform.registry.champion import registered_name
from tuning_platform.spec import (
    MAPPING_SPEC_NAME,
    Spec,
    SpecError,
    apply_override,
    load_spec,
    smoke_overrides,
    validate_spec,
)
from tuning_platform.tracking.database import DatabaseError, check_database, database_scheme, printable
from tuning_platform.tracking.store_template import sqlite_file

if TYPE_CHECKING:
    from tuning_platform.execution.resume import ResumeTarget
    from tuning_platform.search.warm_start import WarmStart
    from tuning_platform.spec.trainable import ResolvedTrainable
    from tuning_platform.tracking.server_access import Access

logger = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_STORAGE_PATH = "ray_results"
TRACKING_CHECK_TIMEOUT_S = 3.0
RAY_ADDRESS_CHECK_TIMEOUT_S = 3.0


@dataclass
class JobRequest:
    spec: Spec
    spec_file: str
    spec_text: str
    trainable: ResolvedTrainable
    data: dict[str, Any]
    tracking_uri: str
    storage_path: str
    address: str | None = None
    smoke_test: bool = False
    # How to continue this job if it stops, shown at its start and on Ctrl-C.
    resume_command: str = ""
    # Set by `resume`: the unfinished job to continue, or the finished one to extend.
    resume: ResumeTarget | None = None
    # The earlier trials `search.warm_start` names.
    warm_start: WarmStart | None = None


def build_request(
    spec: str | os.PathLike[str] | Mapping[str, Any],
    overrides: list[str] | Mapping[str, Any] | None = None,
    *,
    name: str | None = None,
    smoke_test: bool = False,
    tracking_uri: str | None = None,
    address: str | None = None,
    address_source: str = "address",
    storage_path: str | None = None,
    resume: bool = False,
    resume_command: str = "",
) -> JobRequest:
    """Everything checked before anything starts; raises SpecError."""
    # Each imported once the spec itself is valid: the trainables import torch, resuming MLflow
    # and Ray; a bad spec is reported without them.
    from tuning_platform.execution.resume import find_job_to_resume
    from tuning_platform.spec.trainable import check_against_trainable, resolve_trainable

    overrides = overrides or []
    loaded, raw, text = load_spec(spec, overrides, name=name)
    file = str(spec) if not isinstance(spec, Mapping) else MAPPING_SPEC_NAME
    if smoke_test:  # on top of the user's overrides, which `raw` already holds
        for item in smoke_overrides(loaded):
            apply_override(raw, item, file)
        loaded = validate_spec(raw, file)
    trainable = resolve_trainable(loaded, file)
    data = check_against_trainable(loaded, trainable, file)
    uri, source = resolve_tracking_uri(tracking_uri, loaded.tracking.uri)
    model = registered_name(loaded.registered_model_name, smoke_test)
    access = check_tracking_uri(uri, source, file, experiment=loaded.name, model=model)
    if access is not None and access.model_permission_missing:
        logger.warning(
            "warning: MLflow user %r has %s on registered model %r, and registering a version needs EDIT: the job "
            "runs and records its trials, and its model will not be registered",
            access.username,
            access.model_permission_missing,
            model,
        )
    check_ray_address(address, address_source, file)
    storage = storage_path or loaded.storage_path or DEFAULT_STORAGE_PATH
    check_storage_path(storage, "--storage-path" if storage_path else "storage_path", file)
    if "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())
    return JobRequest(
        spec=loaded,
        spec_file=file,
        spec_text=text,
        trainable=trainable,
        data=data,
        tracking_uri=uri,
        storage_path=storage,
        address=address,
        smoke_test=smoke_test,
        resume_command=resume_command,
        resume=find_job_to_resume(uri, loaded, file) if resume else None,
        warm_start=_warm_start(uri, loaded, file),
    )


def _warm_start(uri: str, spec: Spec, file: str) -> WarmStart | None:
    """The trials of the jobs `search.warm_start` names, read before anything starts."""
    if spec.search.warm_start is None:
        return None
    # MLflow and Optuna, only for a job that warm-starts.
    from tuning_platform.search.study import study_of
    from tuning_platform.search.warm_start import warm_start_trials
    from tuning_platform.tracking.client import open_client

    store = sqlite_file(uri)
    if store is not None and not store.exists():
        raise SpecError(file, "search.warm_start", f"no MLflow store at {uri} to start from", has_got=False)
    warm = warm_start_trials(open_client(uri), spec, file)
    study, warm.skipped = study_of(spec, warm.trials)
    warm.used = len(study.trials)
    return warm


def resolve_tracking_uri(given: str | None, spec_uri: str | None) -> tuple[str, str]:
    """The tracking URI and where it came from, by precedence: argument, spec, env, default."""
    for uri, source in (
        (given, "--tracking-uri"),
        (spec_uri, "tracking.uri"),
        (os.environ.get("MLFLOW_TRACKING_URI"), "MLFLOW_TRACKING_URI"),
    ):
        if uri:
            return uri, source
    return DEFAULT_TRACKING_URI, "tracking.uri"


def check_tracking_uri(
    uri: str, source: str, file: str, experiment: str | None = None, model: str | None = None
) -> Access | None:
    """Fail fast, before Ray starts, on a tracking store the job could never write to; for a
    tracking server, also on credentials it refuses and on a user who may not write runs in
    `experiment` (`tracking.server_access`). Returns what the server said of the user."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=TRACKING_CHECK_TIMEOUT_S):
                pass
        except urllib.error.HTTPError:
            pass  # it answered: a proxy in front that wants credentials; `check_server_access` judges them
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            raise SpecError(file, source, f"MLflow tracking server not reachable: {reason}", printable(uri)) from None
        from tuning_platform.tracking.server_access import AccessError, check_server_access  # imports MLflow

        try:
            return check_server_access(uri, experiment, model)
        except AccessError as err:
            raise SpecError(file, source, str(err), printable(uri)) from None
    elif (store := sqlite_file(uri)) is not None:
        folder = store.resolve().parent  # no `~` expansion: SQLAlchemy opens the path as written
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise SpecError(file, source, "folder of the SQLite file does not exist or is not writable", uri)
    elif database_scheme(uri) is not None:
        try:
            check_database(uri)
        except DatabaseError as err:
            raise SpecError(file, source, str(err), printable(uri)) from None
    return None


def check_ray_address(address: str | None, source: str, file: str) -> None:
    """Fail fast on a cluster address nothing answers on (ray.init would retry for a minute),
    and on a cluster that refuses this machine's token (Ray would retry for 20 s, then fail
    with a traceback)."""
    if not address or address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise SpecError(file, source, "expected HOST:PORT (or ray://HOST:PORT, auto)", address)
    try:
        socket.create_connection((host, int(port)), timeout=RAY_ADDRESS_CHECK_TIMEOUT_S).close()
    except OSError as err:
        raise SpecError(file, source, f"Ray cluster not reachable: {err.strerror or err}", address) from None
    from tuning_platform.cluster.connect import probe_cluster  # imports Ray, only to join a cluster

    problem = probe_cluster(address)
    if problem:
        raise SpecError(file, source, problem, address)


def check_storage_path(path: str, source: str, file: str) -> None:
    if "://" in path:
        return  # s3://, gs://: Ray's pyarrow filesystem reports its own errors
    existing = Path(path).expanduser().resolve()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise SpecError(file, source, "storage path cannot be written", path)
