"""The Python API: `tune(spec, overrides=..., tracking_uri=...)` runs one job and returns a
`TuneResult`. The `tuning-platform` command is a thin layer over `run_request`.

A job logs through the `tuning_platform` logger (nothing is printed), raises the exceptions of
`tuning_platform.errors`, and leaves `os.environ`, MLflow's tracking URI and the process's
SIGTERM handler as it found them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from tuning_platform._compat.mlflow import global_tracking_uri, set_global_tracking_uri
from tuning_platform.errors import TrialsFailedError, TuneInterrupted
from tuning_platform.execution.interrupt import sigterm_as_interrupt
from tuning_platform.job import run_job
from tuning_platform.outcome import TuneResult
from tuning_platform.records import TrialStatus
from tuning_platform.request import JobRequest, build_request
from tuning_platform.tracking.parent import JobTracker


def tune(
    spec: str | os.PathLike[str] | Mapping[str, Any],
    overrides: Mapping[str, Any] | list[str] | None = None,
    *,
    tracking_uri: str | None = None,
    address: str | None = None,
    storage_path: str | None = None,
    name: str | None = None,
    smoke_test: bool = False,
    resume: bool = False,
) -> TuneResult:
    """Run one tuning job and return what it did.

    spec: a search-space YAML file, or a mapping with the same keys.
    overrides: dotted keys to values, `{"search.num_samples": 8}` (or `--set` style
        `["search.num_samples=8"]`, values parsed as YAML).
    tracking_uri: the MLflow store (default: the spec's `tracking.uri`, then
        $MLFLOW_TRACKING_URI, then `sqlite:///mlflow.db` in the working directory).
    address: a Ray cluster to join (default: $RAY_ADDRESS, else an embedded local Ray; a Ray
        this process already started with `ray.init` is used as it is).
    storage_path: where Ray keeps the job's state and checkpoints (default: the spec's, else
        ./ray_results).
    name: the job's name (MLflow experiment), instead of the spec's.
    smoke_test: a few trials of 2 epochs on a small data subset; registers as `NAME-smoke`.
    resume: continue the latest unfinished job run with these same arguments.

    Raises `SpecError` (bad input; nothing started or written), `JobError` (the cluster can
    never hold a trial), `TrialsFailedError` (no trial produced the metric) and
    `TuneInterrupted` (Ctrl-C or SIGTERM; continue with `resume=True`).
    """
    with environment_kept():
        request = build_request(
            spec,
            overrides,
            name=name,
            smoke_test=smoke_test,
            tracking_uri=tracking_uri,
            address=address or os.environ.get("RAY_ADDRESS") or None,
            address_source="address" if address else "RAY_ADDRESS",
            storage_path=storage_path,
            resume=resume,
            resume_command="the same tune(...) call with resume=True",
        )
        return run_request(request)


def run_request(request: JobRequest) -> TuneResult:
    """Run a checked request; raises instead of returning a status. `tune` puts the process
    environment back around it; the CLI, a process of its own, does not need to."""
    tracker = JobTracker(request.tracking_uri, request.spec.name)
    with sigterm_as_interrupt() as terminated:
        try:
            result = run_job(request, tracker)
        except KeyboardInterrupt:  # a second stop: Tune ended without saving its last state
            raise TuneInterrupted(_stop_word(terminated()), None, terminated()) from None
    if result.interrupted:
        raise TuneInterrupted(_stop_word(terminated()), result, terminated())
    if result.best is None and not result.infeasible:
        failed = [row for row in result.rows if row.status == TrialStatus.FAILED]
        reason = f": {failed[0].error}" if failed and failed[0].error else "; see the trial errors above"
        raise TrialsFailedError(f"no trial produced the metric {request.spec.metric!r}{reason}", result)
    return result


def _stop_word(terminated: bool) -> str:
    return "stopped by SIGTERM" if terminated else "interrupted"


@contextmanager
def environment_kept() -> Iterator[None]:
    """Put back `os.environ` and MLflow's global tracking URI as they were: a job sets Ray's and
    Tune's variables for itself, and MLflow's `set_tracking_uri` also writes the environment.

    Only the variables that changed are put back, one at a time: clearing the whole environment
    and filling it again would leave other threads of the process (a notebook's, Ray's) a moment
    with no environment at all.
    """
    environ = dict(os.environ)
    tracking_uri = global_tracking_uri()
    try:
        yield
    finally:
        set_global_tracking_uri(tracking_uri)
        for key in [key for key in os.environ if key not in environ]:
            os.environ.pop(key, None)
        for key, value in environ.items():
            if os.environ.get(key) != value:
                os.environ[key] = value
