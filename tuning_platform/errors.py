"""What a job raises instead of returning exit codes; the CLI maps each to one line and a code.

The lowest module of the package: it imports nothing from it at run time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tuning_platform.outcome import TuneResult

__all__ = ["JobError", "SpecError", "TrialsFailedError", "TuneInterrupted"]


class SpecError(Exception):
    """A user mistake in a spec or the job's options: file, key path, rule and the bad value,
    on one line (`FILE: key.path: rule (got VALUE)`). Nothing was started or written."""

    def __init__(self, file: str, path: str, rule: str, got: Any = None, *, has_got: bool = True):
        self.file, self.path, self.rule, self.got = file, path, rule, got
        text = f"{file}: {path}: {rule}" if path else f"{file}: {rule}"
        if has_got:
            text += f" (got {_show(got)})"
        super().__init__(text)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


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
