"""Tests import the project from this folder, installed or not (`pytest` from a fresh clone)."""

import os
import signal
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Every Ray this process starts, not only a job's embedded one (`cluster.start_local_ray` says
# why): fixtures and tests start many Rays in one process, and Ray 2.60 leaves each one's
# metrics exporter running in it after `ray.shutdown()`.
os.environ.setdefault("RAY_enable_metrics_collection", "0")


@pytest.fixture(autouse=True)
def _process_state_kept():
    """Each test gets the process as the one before found it: in-process jobs and CLI calls
    (`cli.main`, a benchmark's `main`) may set os.environ (MLflow's `set_tracking_uri` writes
    MLFLOW_TRACKING_URI), MLflow's global URI and Tune's or Ray's SIGINT/SIGTERM handlers, which
    a process of its own would drop on exit; a later in-process test would inherit them."""
    from tuning_platform.api import environment_kept

    # Python's own Ctrl-C handler, as a fresh process has it, whatever a module-scoped fixture
    # (a Ray or Tune run in this process) installed before this test.
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with environment_kept():
        yield
    for sig, handler in handlers.items():
        if signal.getsignal(sig) is not handler and handler is not None:
            signal.signal(sig, handler)


@pytest.fixture
def store_uri(tmp_path) -> str:
    """A new SQLite MLflow store, `sqlite:///TMP_PATH/mlflow.db`, made as a job makes one: a copy
    of the empty store (`tests.helpers.new_store`), not a second of MLflow's migrations."""
    from tests.helpers import new_store

    return new_store(tmp_path)
