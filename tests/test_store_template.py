"""A new SQLite store is a copy of an empty store made once per MLflow version (store_template.py)."""

from __future__ import annotations

import sqlite3

import pytest
from mlflow.tracking import MlflowClient

import tuning_platform.tracking.store_template as store_template
from tuning_platform.tracking.client import open_client


def _schema(path) -> tuple[list[tuple], list[tuple], list[tuple]]:
    """Tables and indexes, the schema version and the experiments. The lines of a CREATE statement
    are compared as a set: MLflow itself orders a table's constraints differently from one new
    store to the next (a migration that rebuilds `runs` keeps them in a set)."""
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT type, name, sql FROM sqlite_master ORDER BY type, name").fetchall()
        tables = [
            (kind, name, sorted(line.strip(" ,") for line in (sql or "").splitlines())) for kind, name, sql in rows
        ]
        version = db.execute("SELECT * FROM alembic_version").fetchall()
        experiments = db.execute("SELECT experiment_id, name, artifact_location FROM experiments").fetchall()
    return tables, version, experiments


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(folder))
    return folder / "tuning-platform"


def test_a_copied_store_is_the_store_mlflow_makes_and_the_migrations_run_once(tmp_path, cache, monkeypatch):
    made = []
    make = store_template._make_empty_store
    monkeypatch.setattr(store_template, "_make_empty_store", lambda path: made.append(path) or make(path))
    monkeypatch.chdir(tmp_path)  # the Default experiment's artifact root: ./mlruns of the same folder

    MlflowClient(f"sqlite:///{tmp_path / 'by_mlflow.db'}").search_experiments()
    for name in ("first.db", "second.db"):
        client = open_client(f"sqlite:///{tmp_path / name}")
        assert [e.name for e in client.search_experiments()] == ["Default"]

    # Fails when MLflow makes a new store differently from the function the template runs.
    assert _schema(tmp_path / "first.db") == _schema(tmp_path / "by_mlflow.db")
    assert _schema(tmp_path / "second.db") == _schema(tmp_path / "by_mlflow.db")
    assert len(made) == 1 and [p.name for p in cache.iterdir()] == [store_template.template().name]
    assert not list(tmp_path.glob(".*.partial"))


def test_an_existing_store_is_never_replaced(store_uri):
    open_client(store_uri).create_experiment("kept")
    store_template.create_from_template(store_uri)
    assert "kept" in [e.name for e in open_client(store_uri).search_experiments()]


def test_without_a_cache_folder_mlflow_makes_the_store_itself(tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a-file"))  # no folder can be made there
    client = open_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert [e.name for e in client.search_experiments()] == ["Default"]
    assert not list(tmp_path.glob(".*.partial"))


@pytest.mark.parametrize(
    ("uri", "file"),
    [
        ("sqlite:///mlflow.db", "mlflow.db"),
        ("sqlite:////tmp/x/mlflow.db?timeout=60", "/tmp/x/mlflow.db"),
        ("sqlite://", None),
        ("sqlite:///:memory:", None),
        ("http://127.0.0.1:5000", None),
    ],
)
def test_only_a_sqlite_file_is_made_from_the_template(uri, file):
    found = store_template.sqlite_file(uri)
    assert (str(found) if found else None) == file


@pytest.mark.slow  # a new interpreter importing MLflow: 3 s
def test_the_sql_store_is_imported_ahead_without_opening_or_writing_anything(tmp_path):
    """`store_imported_ahead` imports the module of the store `open_client` opens, in a new
    interpreter that has not imported it, and creates no file; a tracking server needs none."""
    import subprocess
    import sys

    from tests.helpers import ROOT

    store = tmp_path / "mlflow.db"
    code = f"""
import sys
from tuning_platform._compat.mlflow import SQL_STORE_MODULE
from tuning_platform.tracking.client import open_client, store_imported_ahead

assert SQL_STORE_MODULE not in sys.modules
assert store_imported_ahead("http://127.0.0.1:5000") is None
thread = store_imported_ahead("sqlite:///{store}")
thread.join(60)
assert SQL_STORE_MODULE in sys.modules
import os
assert not os.path.exists({str(store)!r}), "nothing may be written before the job starts"
client = open_client("sqlite:///{store}")
assert type(client._tracking_client.store).__module__ == SQL_STORE_MODULE, type(client._tracking_client.store)
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
    # A database server's URI gets the same thread (no connection is made by the import).
    from tuning_platform.tracking.client import store_imported_ahead

    thread = store_imported_ahead("postgresql://user@127.0.0.1:1/none")
    assert thread is not None
    thread.join(60)
