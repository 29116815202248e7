"""What a job raises instead of returning exit codes; the CLI maps each to one line and a code."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuning_platform.spec import SpecError

if TYPE_CHECKING:
    from tuning_platform.job import TuneResult

__all__ = ["JobError", "SpecError", "TrialsFailedError", "TuneInterrupted"]


class JobError(Exception):
    """The job cannot run as asked, found once Ray is up (resources no node can ever give)."""


class TrialsFailedError(JobError):
    """Every trial failed or diverged: no trial produced the metric. `result` holds the trials."""

    def __init__(self, message: str, result: TuneResult):
        super().__init__(message)
        self.result = result


class TuneInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the job. Ray saved its state and its MLflow runs are KILLED, so
    `tune(..., resume=True)` (the CLI's `--resume`) continues it.

    `result` holds the trials as they were, or is None when a second stop cut the job short;
    `terminated` says whether it was SIGTERM.
    """

    def __init__(self, message: str, result: TuneResult | None, terminated: bool):
        super().__init__(message)
        self.result = result
        self.terminated = terminated
