"""What the command's forms share: a parser whose error is one line, and, for `jobs` and `show`,
the store to read and its failures as one line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

from tuning_platform.errors import SpecError
from tuning_platform.request import DEFAULT_TRACKING_URI, check_tracking_uri, resolve_tracking_uri
from tuning_platform.tracking.database import printable
from tuning_platform.tracking.store_template import sqlite_file


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2, like every other input error
        self.exit(2, f"error: {message} (see --help)\n")


def add_tracking_uri(parser: argparse.ArgumentParser) -> None:
    """`--tracking-uri`, found as a job finds it when not given (no spec here)."""
    parser.add_argument(
        "--tracking-uri", help=f"MLflow tracking URI (default: $MLFLOW_TRACKING_URI, then {DEFAULT_TRACKING_URI})"
    )


class StoreError(Exception):
    """A store that cannot be read, or a job it does not hold: one line, exit 2."""


def store_to_read(given: str | None) -> str:
    """The tracking URI to read, by the job's precedence (`--tracking-uri`, MLFLOW_TRACKING_URI,
    then the default; no spec here), checked as a job checks it: a SQLite file must exist (it is
    never created by reading), a tracking server must answer."""
    uri, source = resolve_tracking_uri(given, None)
    if (store := sqlite_file(uri)) is not None:
        if not store.is_file():
            hint = " in this folder (give --tracking-uri or set MLFLOW_TRACKING_URI)"
            raise StoreError(
                _from(source) + f"no MLflow store at {printable(uri)}" + (hint if uri == DEFAULT_TRACKING_URI else "")
            )
        return uri
    try:
        check_tracking_uri(uri, source, "")
    except SpecError as err:
        raise StoreError(f"{err.path}: {err.rule} (got {printable(uri)})") from None
    return uri


def _from(source: str) -> str:
    return "" if source == "tracking.uri" else f"{source}: "  # the default has no source to name


@contextmanager
def reading(uri: str) -> Iterator[None]:
    """A store that refuses to be read (no MLflow tables, another MLflow's schema, a server's
    error) as one line."""
    # Imported here: MLflow and SQLAlchemy (seconds), which a job's own command never needs.
    import requests
    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as err:
        raise StoreError(f"cannot read the MLflow store at {printable(uri)}: {_first_line(err.message)}") from None
    except (sqlalchemy.exc.SQLAlchemyError, requests.RequestException, OSError) as err:
        raise StoreError(f"cannot read the MLflow store at {printable(uri)}: {_first_line(str(err))}") from None


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0][:300] if lines else "unknown error"


def print_out(text: str) -> int:
    """`text` on stdout; 0, or 141 (as a shell reports SIGPIPE) when a reader such as `head`
    stopped reading, without a traceback."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # What is left to flush would fail again at exit: stdout goes nowhere from now on.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return 0
