"""What travels to a cluster with a job: the working directory (less what never should), the
built-in trainables, and the runtime environment of a job submitted with `ray job submit`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tuning_platform._compat.ray import submitted_job_config


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
    ".mypy_cache",
]

# Where Ray's own CLI finds a cluster's token (ray/_raylet AuthenticationTokenLoader).


def local_runtime_env() -> dict[str, Any] | None:
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
    submitted that way."""
    text = submitted_job_config()
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
