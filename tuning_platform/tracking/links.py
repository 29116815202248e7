"""Links to a job in the MLflow UI, and the command that serves it. Plain strings: the summary
imports this without loading MLflow."""

from __future__ import annotations

import shlex

from tuning_platform.tracking.database import printable


def ui_links(tracking_uri: str, experiment_id: str, run_id: str) -> tuple[str | None, str, str]:
    """The command that serves the MLflow UI (None for a tracking server, which serves it),
    and the links to the experiment's runs table and to one run.

    MLflow 3's UI remembers a GenAI / model-training switch per browser and opens a fresh
    browser on GenAI; `workflowType=machine_learning` in the link overrides it (its bundled
    JavaScript, the `mlflow.workflowType` local-storage key). `mlflow ui` serves on
    127.0.0.1:5000 unless told otherwise. A database's password is not printed.
    """
    if tracking_uri.startswith(("http://", "https://")):
        command, base = None, tracking_uri.rstrip("/")
    else:
        command, base = f"mlflow ui --backend-store-uri {shlex.quote(printable(tracking_uri))}", "http://127.0.0.1:5000"
    query = "?workflowType=machine_learning"
    experiment = f"{base}/#/experiments/{experiment_id}"
    return command, f"{experiment}/runs{query}", f"{experiment}/runs/{run_id}{query}"
