"""`--resume`: find the latest unfinished job of a spec and what Ray saved of it, or extend
the latest finished one with a larger budget.

A job is found through its MLflow parent run, which carries the Ray run name, the storage path
and a fingerprint of the resolved spec. Only a job run with the same settings (spec file,
`--set`, `--smoke-test`, `--name`) is resumed: Tune restores its searcher and trials as they
were, so different settings would silently not apply.

A finished job is extended when only its budget grew (`search.num_samples`, `budget.time_s`):
the new trials run as a further Ray run under the same parent run, with a searcher that starts
from every earlier trial (`search/study.py`). Ray's `Tuner.restore` cannot do this: it is for fault
tolerance and keeps the sample count it was given (ray-project/ray PR #33495).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuning_platform.errors import SpecError
from tuning_platform.records import (
    EXTENDED_TAG,
    HOST_TAG,
    PARENT_RUN_ID_TAG,
    PID_TAG,
    RESUMED_TAG,
    RUN_NAME_TAG,
    SAMPLES_TAG,
    SETTINGS_HASH_TAG,
    SPEC_HASH_TAG,
    STARTED_TAG,
    STORAGE_TAG,
    TIME_TAG,
)
from tuning_platform.spec import Spec, spec_settings
from tuning_platform.tracking.client import open_client
from tuning_platform.tracking.database import printable
from tuning_platform.tracking.queries import search_trial_runs
from tuning_platform.tracking.store_template import sqlite_file


@dataclass(frozen=True)
class ResumeTarget:
    parent_run_id: str
    run_name: str
    storage_path: str
    times_resumed: int
    # An extension of a finished job: the trials to add and their time budget (None: none).
    # `run_name` is then the new Ray run's, and `extensions` counts this one.
    extend_samples: int = 0
    extend_time_s: float | None = None
    extensions: int = 0

    @property
    def extends(self) -> bool:
        return self.extend_samples > 0

    @property
    def experiment_path(self) -> str:
        return experiment_uri(self.storage_path, self.run_name)


def experiment_uri(storage_path: str, run_name: str) -> str:
    """Where Ray keeps a run's state: `s3://bucket/path/RUN` (an `?endpoint_override=...` query,
    as pyarrow takes it, stays at the end), or a local folder."""
    base, mark, query = storage_path.partition("?")
    return f"{base.rstrip('/')}/{run_name}{mark}{query}"


def spec_fingerprint(spec: Spec) -> str:
    text = json.dumps(spec_settings(spec), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def job_of(run_name: str) -> str:
    """The job's first Ray run name: an extension's Ray run is named JOB-xN."""
    return re.sub(r"-x\d+$", "", run_name)


def settings_fingerprint(spec: Spec) -> str:
    """The fingerprint of everything but the budget: what must not change to extend a job."""
    settings = spec_settings(spec)
    settings["search"].pop("num_samples")
    settings.pop("budget")
    text = json.dumps(settings, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def budget_tags(spec: Spec) -> dict[str, str]:
    return {SAMPLES_TAG: str(spec.search.num_samples), TIME_TAG: str(spec.budget.time_s)}


def driver_tags() -> dict[str, str]:
    """Who runs the job, so `--resume` never takes over a job that is still alive."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()), STARTED_TAG: repr(_started(os.getpid()))}


def _started(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _driver_alive(tags: dict[str, str]) -> bool:
    """True only when the run's driver is certainly a live process on this machine: the same
    process id, started at the same time (a CLI, or a notebook that called `tune`)."""
    if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG, "").isdigit():
        return False
    if tags.get(STARTED_TAG, "None") != "None":
        return repr(_started(int(tags[PID_TAG]))) == tags[STARTED_TAG]
    try:
        cmdline = Path(f"/proc/{tags[PID_TAG]}/cmdline").read_bytes()
    except OSError:
        return False
    return b"platform.tune" in cmdline  # a job recorded before the start time was


def find_job_to_resume(tracking_uri: str, spec: Spec, spec_file: str) -> ResumeTarget:
    """The newest parent run of this spec's experiment that is RUNNING (its driver died) or
    KILLED (Ctrl-C), whose settings match and whose Ray state still exists; else the newest
    finished job, to extend when only its budget grew.

    Raises SpecError (exit 2) when there is nothing to resume; reads only, writes nothing.
    """

    def nothing(reason: str) -> SpecError:
        return SpecError(spec_file, "--resume", f"nothing to resume: {reason}", has_got=False)

    store = sqlite_file(tracking_uri)
    if store is not None and not store.exists():
        raise nothing(f"no MLflow store at {printable(tracking_uri)}")
    client = open_client(tracking_uri)
    experiment = client.get_experiment_by_name(spec.name)
    if experiment is None:
        raise nothing(f"no job of experiment {spec.name!r} in {printable(tracking_uri)}")
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string="attributes.status != 'FAILED'",
        order_by=["attributes.start_time DESC"],
        max_results=200,
    )
    parents = [run for run in runs if PARENT_RUN_ID_TAG not in run.data.tags and RUN_NAME_TAG in run.data.tags]
    unfinished = [run for run in parents if run.info.status != "FINISHED"]
    fingerprint = spec_fingerprint(spec)
    matching = [run for run in unfinished if run.data.tags.get(SPEC_HASH_TAG) == fingerprint]
    if not matching:
        finished = [run for run in parents if run.info.status == "FINISHED"]
        if finished and SETTINGS_HASH_TAG in finished[0].data.tags and not unfinished:
            return _extension(client, finished[0], spec, spec_file)
        if unfinished:
            raise nothing(
                f"the unfinished job {unfinished[0].data.tags[RUN_NAME_TAG]} ran with other settings; "
                "repeat its command line (same --set, --smoke-test, --name) with --resume"
            )
        raise nothing(f"every job of experiment {spec.name!r} in {printable(tracking_uri)} has finished")
    run = matching[0]
    tags = run.data.tags
    if run.info.status == "RUNNING" and _driver_alive(tags):
        raise SpecError(
            spec_file,
            "--resume",
            f"job {tags[RUN_NAME_TAG]} is still running (process {tags[PID_TAG]}); stop it first",
            has_got=False,
        )
    target = ResumeTarget(
        parent_run_id=run.info.run_id,
        run_name=tags[RUN_NAME_TAG],
        storage_path=tags.get(STORAGE_TAG, ""),
        times_resumed=int(tags.get(RESUMED_TAG, "0") or 0),
    )
    from ray import tune

    if not target.storage_path or not tune.Tuner.can_restore(target.experiment_path):
        raise nothing(f"Ray's saved state of job {target.run_name} is gone from {target.experiment_path}")
    return target


def _extension(client: Any, run: Any, spec: Spec, spec_file: str) -> ResumeTarget:
    """Extend the finished job `run` by the budget the spec adds to its own."""
    tags = run.data.tags
    name = tags[RUN_NAME_TAG]
    if tags[SETTINGS_HASH_TAG] != settings_fingerprint(spec):
        raise SpecError(
            spec_file,
            "--resume",
            f"job {name} finished with other settings; only search.num_samples and budget.time_s may change "
            f"to extend it. To build on it, start a new job with search.warm_start: {{experiment: {spec.name}}}",
            has_got=False,
        )
    trials = len(search_trial_runs(client, run.info.experiment_id, run.info.run_id))
    old_time = None if tags.get(TIME_TAG, "None") == "None" else float(tags[TIME_TAG])
    new_time = spec.budget.time_s
    more_time = old_time is not None and (new_time is None or new_time > old_time)
    samples = spec.planned_trials - trials
    if samples <= 0 or (spec.search.num_samples <= int(tags.get(SAMPLES_TAG, "0")) and not more_time):
        raise SpecError(
            spec_file,
            "--resume",
            f"nothing to resume: job {name} has finished its {trials} trials; to extend it, raise "
            f"search.num_samples above {trials} (or budget.time_s) with --set",
            has_got=False,
        )
    extensions = int(tags.get(EXTENDED_TAG, "0") or 0) + 1
    return ResumeTarget(
        parent_run_id=run.info.run_id,
        run_name=f"{job_of(name)}-x{extensions}",
        storage_path=tags.get(STORAGE_TAG, ""),
        times_resumed=int(tags.get(RESUMED_TAG, "0") or 0),
        extend_samples=samples,
        # The time the budget grew by; all of it when the job had none.
        extend_time_s=None if new_time is None else new_time - (old_time or 0.0),
        extensions=extensions,
    )
