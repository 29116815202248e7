"""`tuning-platform show JOB`: the summary a job printed at its end, printed again from what its
store holds (`cli/recorded.py` rebuilds the outcome, `cli/summary.py` writes it)."""

from __future__ import annotations

import sys

from tuning_platform.cli.common import (
    OneLineParser,
    StoreError,
    add_tracking_uri,
    print_out,
    reading,
    store_to_read,
)
from tuning_platform.cli.summary import summary_of
from tuning_platform.tracking.database import printable


def show_parser(prog: str) -> OneLineParser:
    parser = OneLineParser(
        prog=f"{prog} show",
        description="Print a job's summary again, as the job printed it at its end: its top trials, the best "
        "one, the registered model, the insight and the links to the MLflow UI.",
        epilog=f"Jobs and their names: {prog} jobs",
    )
    parser.add_argument("job", metavar="JOB", help="the job's name (its MLflow parent run's name) or its parent run id")
    add_tracking_uri(parser)
    return parser


def show_command(argv: list[str], prog: str = "tuning-platform") -> int:
    args = show_parser(prog).parse_args(argv)
    try:
        uri = store_to_read(args.tracking_uri)
        with reading(uri):
            # Imported here: they import MLflow and Optuna (seconds), which a job's own command
            # line never needs.
            from tuning_platform.cli.recorded import RecordError, recorded_outcome
            from tuning_platform.tracking.jobs import find_job, open_store

            client = open_store(uri)
            run = find_job(client, args.job)
            if run is None:
                raise StoreError(f"no job {args.job!r} in {printable(uri)} (see: {prog} jobs)")
            try:
                outcome, spec = recorded_outcome(client, run, uri)
            except RecordError as err:
                raise StoreError(f"job {args.job}: {err}") from None
    except StoreError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return print_out(summary_of(outcome, spec, uri))
