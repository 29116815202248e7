"""Command line: `tuning-platform SPEC [options]` runs one tuning job (also `python -m
tuning_platform`, and `python -m platform.tune` from the repository root).

Two more forms read a store instead: `tuning-platform jobs` lists its jobs (`jobs.py`) and
`tuning-platform show JOB` prints a job's summary again (`show.py`). The first argument is one
of those words only when no file of that name is there: a spec file named `jobs` still runs as
it always did (`./jobs` names it either way). `--version` prints the installed version.

Exit codes: 0 the job finished with a best trial (some trials may have failed: a warning
says how many), 1 the job failed (no trial produced the metric), 2 bad input (spec, options,
unreachable tracking server or cluster, a cluster's token missing, impossible resources, nothing
to `--resume`), 130 interrupted (Ctrl-C), 143 stopped by SIGTERM (`ray job stop`, `kill`).
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import logging
import os
import shlex
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from tuning_platform.cli.common import OneLineParser
from tuning_platform.cli.jobs import jobs_command
from tuning_platform.cli.show import show_command
from tuning_platform.cli.summary import format_summary
from tuning_platform.errors import JobError, SpecError, TrialsFailedError, TuneInterrupted
from tuning_platform.records import TrialStatus
from tuning_platform.request import DEFAULT_STORAGE_PATH, DEFAULT_TRACKING_URI, build_request
from tuning_platform.tracking.database import printable

# Exit codes of a job stopped by Ctrl-C and by SIGTERM (128 + the signal, as shells report).
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

# The forms that read a store instead of running a job: the first argument, when no file has its name.
STORE_COMMANDS: dict[str, Callable[[list[str], str], int]] = {"jobs": jobs_command, "show": show_command}
DISTRIBUTION = "tuning-platform"


def installed_version() -> str:
    """The installed distribution's version; says so when the package runs uninstalled."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def build_parser(prog: str = "tuning-platform") -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=prog,
        description="Tune a trainable with Ray Tune (Optuna TPE + ASHA) and record every trial in MLflow.",
        epilog=f"Example: {prog} search_spaces/cnn.yaml --set search.num_samples=8. "
        f"Also: {prog} jobs [--experiment NAME] lists a store's jobs; {prog} show JOB prints a job's summary again.",
    )
    parser.add_argument("--version", action="version", version=f"{DISTRIBUTION} {installed_version()}")
    parser.add_argument("spec", help="search-space YAML file (see search_spaces/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec key, value parsed as YAML (repeatable): --set search.num_samples=8",
    )
    parser.add_argument(
        "--smoke-test",
        action="store_true",
        help="a few trials of 2 epochs on a small data subset: checks a spec in under a minute",
    )
    parser.add_argument(
        "--address",
        help="Ray cluster to join, HOST:PORT (default: $RAY_ADDRESS, else an embedded local Ray); "
        "the working directory is shipped to the cluster with the job",
    )
    parser.add_argument(
        "--tracking-uri", help=f"MLflow tracking URI (default: spec, $MLFLOW_TRACKING_URI, then {DEFAULT_TRACKING_URI})"
    )
    parser.add_argument(
        "--storage-path",
        help="where Ray keeps experiment state and checkpoints "
        f"(default: spec's storage_path, else ./{DEFAULT_STORAGE_PATH})",
    )
    parser.add_argument("--name", help="job name: MLflow experiment and Ray run name (default: the spec's name)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the latest unfinished job (killed or interrupted) run with these same options: "
        "finished trials are kept, unfinished ones go on from their last checkpoint, in the same MLflow runs",
    )
    return parser


def resume_command(prog: str, argv: list[str]) -> str:
    """The exact command that resumes the job this command line started, less a database's
    password (keep it in PGPASSWORD or ~/.pgpass, which the drivers read)."""
    args = [printable(arg) for arg in argv if arg != "--resume"]
    return f"{prog} " + shlex.join([*args, "--resume"])


def console() -> None:
    """The `tuning-platform` command."""
    exit_command(main(prog="tuning-platform"))


def exit_command(code: int) -> NoReturn:
    """End the command's process with `code`, without the garbage collector's last full pass.

    Python's finalization walks every object the process still holds (a job's torch, Ray,
    MLflow and SQLAlchemy: 1.2-1.5 s here, after the summary, before the prompt) to collect the
    reference cycles among them, which vanish with the process anyway; `gc.freeze()` leaves
    them out of that pass. What a user relies on runs as before: the atexit handlers (Ray's
    shutdown, MLflow's, logging's flush, temporary folders' removal) and the flush of stdout and
    stderr. Only the finalizers of objects in reference cycles no longer run at exit, which
    Python never promised. Only for the command's own process: `main()` called in a process
    that goes on (the tests) leaves the collector alone.
    """
    gc.freeze()
    sys.exit(code)


def main(argv: list[str] | None = None, prog: str = "tuning-platform") -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in STORE_COMMANDS and not os.path.isfile(argv[0]):
        return STORE_COMMANDS[argv[0]](argv[1:], prog)
    args = build_parser(prog).parse_args(argv)
    _show_job_log()
    try:
        request = build_request(
            args.spec,
            args.overrides,
            name=args.name,
            smoke_test=args.smoke_test,
            tracking_uri=args.tracking_uri,
            address=args.address or os.environ.get("RAY_ADDRESS") or None,
            address_source="--address" if args.address else "RAY_ADDRESS",
            storage_path=args.storage_path,
            resume=args.resume,
            resume_command=resume_command(prog, argv),
        )
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    # Imported once the input is checked: it loads MLflow and Ray (seconds), which a bad spec
    # or `--help` never needs.
    from tuning_platform.api import run_request

    try:
        result = run_request(request)
    except TuneInterrupted as stop:
        if stop.result is not None:
            print(format_summary(stop.result, request), flush=True)
            print(
                f"{stop}: Ray saved the job's state under {stop.result.experiment_path} and its MLflow "
                f"runs are marked KILLED; continue with: {request.resume_command}",
                file=sys.stderr,
            )
        else:
            print(f"{stop}; continue with: {request.resume_command}", file=sys.stderr)
        return EXIT_TERMINATED if stop.terminated else EXIT_INTERRUPTED
    except TrialsFailedError as err:
        print(format_summary(err.result, request), flush=True)
        print(f"error: {err}", file=sys.stderr)
        return 1
    except JobError as err:
        print(f"error: {request.spec_file}: {err}", file=sys.stderr)
        return 2
    print(format_summary(result, request), flush=True)
    failed = [row for row in result.rows if row.status == TrialStatus.FAILED]
    if failed:
        print(
            f"warning: {len(failed)} of {len(result.rows)} trials failed (first: {failed[0].error}); "
            "their MLflow runs have the tag `error`",
            file=sys.stderr,
        )
    return 0


def _show_job_log() -> None:
    """The job's log lines as a user reads them: progress on stdout, warnings on stderr."""
    job_logger = logging.getLogger("tuning_platform")
    if any(getattr(handler, "_tuning_cli", False) for handler in job_logger.handlers):
        return
    for stream, accepts in ((sys.stdout, lambda r: r.levelno < logging.WARNING), (sys.stderr, None)):
        handler = _StreamOf(stream)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.setLevel(logging.INFO if accepts else logging.WARNING)
        if accepts:
            handler.addFilter(accepts)
        handler._tuning_cli = True  # type: ignore[attr-defined]
        job_logger.addHandler(handler)
    job_logger.setLevel(logging.INFO)
    job_logger.propagate = False


class _StreamOf(logging.StreamHandler):
    """Writes to the stream `sys.stdout`/`sys.stderr` is when the record comes (tests swap them)."""

    def __init__(self, stream: Any):
        super().__init__(stream)
        self._name = "stdout" if stream is sys.stdout else "stderr"

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = getattr(sys, self._name)
        super().emit(record)


if __name__ == "__main__":
    sys.exit(main(prog="python -m tuning_platform"))
