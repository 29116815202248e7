"""`tuning-platform jobs`: the jobs of a store, newest first, one line each, as their parent runs
record them (`tracking/jobs.py`): a store with a job of 10,000 trials lists in the time of one
run per job."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

from tuning_platform.cli.common import (
    OneLineParser,
    StoreError,
    add_tracking_uri,
    print_out,
    reading,
    store_to_read,
)
from tuning_platform.tracking.database import printable

if TYPE_CHECKING:
    from tuning_platform.tracking.jobs import JobRecord

HEADER = ("started", "experiment", "job", "status", "trials", "best", "model", "champion", "user")


def jobs_parser(prog: str) -> OneLineParser:
    parser = OneLineParser(
        prog=f"{prog} jobs",
        description="List the tuning jobs of an MLflow store, newest first: status, trials done of planned, "
        "best value, the registered version and whether it is the champion, who ran it and when.",
        epilog=f"Then: {prog} show JOB prints a job's summary again.",
    )
    parser.add_argument("--experiment", metavar="NAME", help="only the jobs of this experiment (a spec's name)")
    add_tracking_uri(parser)
    parser.add_argument("--limit", type=int, metavar="N", help="only the newest N jobs")
    return parser


def jobs_command(argv: list[str], prog: str = "tuning-platform") -> int:
    args = jobs_parser(prog).parse_args(argv)
    try:
        uri = store_to_read(args.tracking_uri)
        with reading(uri):
            # Imported here: it imports MLflow (seconds), which a job's own command line never needs.
            from tuning_platform.tracking.jobs import list_jobs, open_store

            try:
                jobs = list_jobs(open_store(uri), args.experiment, args.limit)
            except LookupError:
                raise StoreError(f"--experiment: no experiment {args.experiment!r} in {printable(uri)}") from None
    except StoreError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not jobs:
        where = f" of experiment {args.experiment!r}" if args.experiment else ""
        return print_out(f"No jobs{where} in {printable(uri)}")
    return print_out(format_jobs(jobs))


def format_jobs(jobs: list[JobRecord]) -> str:
    """A table, one job a row, columns aligned."""
    table = [list(HEADER)] + [_row(job) for job in jobs]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADER))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in table
    )


def _row(job: JobRecord) -> list[str]:
    started = time.strftime("%Y-%m-%d %H:%M", time.localtime(job.started_ms / 1000))
    done = "-" if job.done is None else str(job.done)
    planned = "-" if job.planned is None else str(job.planned)
    best = "-" if job.best is None else f"{job.metric}={job.best:.4f}"
    model = "-" if job.model is None else f"{job.model} v{job.version}"
    return [started, job.experiment, job.name, job.status, f"{done}/{planned}", best, model, _champion(job), job.user]


def _champion(job: JobRecord) -> str:
    """yes: the version is the champion now; no: it is not (and which one is)."""
    if job.model is None:
        return "-"
    if job.is_champion:
        return "yes"
    return f"no (v{job.champion_now})" if job.champion_now else "no"
