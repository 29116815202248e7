"""A new SQLite store as a copy of an empty one that MLflow made earlier.

MLflow makes the tables of a new SQLite file by running every schema migration since its first
release: about 1 s of the driver's CPU here, and 1.8 s of a job's start with the imports that
takes. Every job that starts a store paid it, and so did every test and benchmark. The platform
makes an empty store once per MLflow version, in the user's cache folder
(`$XDG_CACHE_HOME/tuning-platform`, else `~/.cache/tuning-platform`), with the function MLflow
itself runs on a new file, and copies it for each new file. MLflow then opens the copy as any
existing store: it checks that the schema is the newest it knows (`_verify_schema`), and adds its
Default experiment, with the artifact root of the job that opens it.

When the copy cannot be made (no cache folder, a file system without hard links), MLflow makes
the tables itself, as before.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)


def sqlite_file(tracking_uri: str) -> Path | None:
    """The file of a `sqlite:///PATH` tracking URI; None for any other store."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    path = tracking_uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None  # as SQLAlchemy reads it: no `~`


def create_from_template(tracking_uri: str) -> None:
    """Makes the SQLite file of `tracking_uri` a copy of the empty store, if it does not exist."""
    import sqlalchemy.exc

    target = sqlite_file(tracking_uri)
    if target is None or target.exists() or not target.parent.is_dir():
        return
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        shutil.copyfile(template(), partial)
        # A hard link never replaces a file: a job that made this store meanwhile keeps it.
        os.link(partial, target)
    except FileExistsError:
        pass
    except (OSError, ImportError, sqlalchemy.exc.SQLAlchemyError) as err:  # ImportError: MLflow moved its function
        logger.debug("no copy of the empty store (%s); MLflow makes the tables itself", err)
    finally:
        partial.unlink(missing_ok=True)


def template() -> Path:
    """The empty store of the installed MLflow, made on first use."""
    import mlflow

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = cache / "tuning-platform" / f"mlflow-{mlflow.__version__}-empty.db"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        partial.unlink(missing_ok=True)
        try:
            _make_empty_store(partial)
            os.replace(partial, path)  # whole or not at all; two jobs making it make the same file
        finally:
            partial.unlink(missing_ok=True)
    return path


def _make_empty_store(path: Path) -> None:
    import sqlalchemy

    from tuning_platform._compat.mlflow import initialize_store_tables

    engine = sqlalchemy.create_engine(f"sqlite:///{path}")
    try:
        initialize_store_tables(engine)
    finally:
        engine.dispose()
