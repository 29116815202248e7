"""The Python API as a notebook uses it: `uuid` and the standard `platform` imported first, a
folder outside the repository, a spec as a mapping, and the process left as it was."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import SPECS, assert_ok

pytestmark = pytest.mark.slow

# A user's FIFO trainable that has no notion of epochs (no `search.fixed.epochs` needed).
COUNTING = """
from ray import tune

def train(config):
    for step in range(1, 4):
        tune.report({"score": config["x"] * step})
"""

NOTEBOOK = """
import json, logging, os, signal, sys, uuid, platform
import mlflow
from tuning_platform import SpecError, tune

assert not hasattr(platform, "__path__")
environ, uri_before = dict(os.environ), mlflow.get_tracking_uri()
sigterm = signal.getsignal(signal.SIGTERM)
seen = []
logging.getLogger("tuning_platform").addHandler(logging.Handler())
logging.getLogger("tuning_platform").handlers[-1].emit = lambda record: seen.append(record.getMessage())
logging.getLogger("tuning_platform").setLevel(logging.INFO)

spec = {
    "name": "notebook-job", "trainable": "counting:train", "metric": "score", "mode": "max",
    "search": {"algorithm": "random", "num_samples": 2, "seed": 0,
               "space": {"x": {"type": "uniform", "low": 0.0, "high": 1.0}}},
    "scheduler": {"type": "fifo"}, "resources": {"cpu": 1},
}
tracking = "sqlite:///" + os.path.abspath("mlflow.db")
result = tune(spec, overrides={"search.num_samples": 3}, tracking_uri=tracking)
try:
    tune(spec, overrides={"search.num_samples": 0}, tracking_uri=tracking)
    raise AssertionError("a bad spec must raise")
except SpecError as err:
    spec_error = str(err)
# The smoke job also picks its champion by the mean of its top 2 configurations over 2 new seeds.
smoke = tune(sys.argv[1], overrides={"search.num_samples": 2, "selection": {"top_k": 2, "seeds": 2}},
             tracking_uri=tracking, smoke_test=True)
print(json.dumps({
    "best_config": result.best_config, "best_metric": result.best_metric, "best_trial_id": result.best_trial_id,
    "experiment_id": result.experiment_id, "parent_run_id": result.parent_run_id,
    "trials": result.trials.to_dict("records"), "model_uri": result.model_uri,
    "smoke_model_uri": smoke.model_uri, "smoke_took_champion": smoke.took_champion,
    "smoke_model_name": smoke.model_name, "spec_error": spec_error, "logged": seen,
    "smoke_test_metrics": smoke.test_metrics, "smoke_parent_run_id": smoke.parent_run_id,
    "smoke_chosen_mean": smoke.selection.chosen.mean, "smoke_candidates": len(smoke.selection.candidates),
    "environ_kept": dict(os.environ) == environ, "uri_kept": mlflow.get_tracking_uri() == uri_before,
    "sigterm_kept": signal.getsignal(signal.SIGTERM) == sigterm,
}))
"""


def test_tune_from_a_notebook_returns_a_result_and_leaves_the_process_as_it_was(tmp_path):
    (tmp_path / "counting.py").write_text(COUNTING)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home())}  # the tool as installed, no PYTHONPATH
    ran = subprocess.run(
        [sys.executable, "-c", NOTEBOOK, str(SPECS / "mlp.yaml")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert_ok(ran)
    answer = json.loads(ran.stdout.strip().splitlines()[-1])
    # Nothing of the job's own was printed: it went to the logger.
    assert not any(line.startswith(("Job ", "Baseline ", "note:")) for line in ran.stdout.splitlines()[:-1])
    assert any(line.startswith("Job notebook-job-") for line in answer["logged"])

    trials = answer["trials"]
    assert len(trials) == 3 and {t["status"] for t in trials} == {"completed"}
    best = max(trials, key=lambda t: t["score"])
    assert answer["best_trial_id"] == best["trial_id"] and answer["best_metric"] == best["score"]
    assert answer["best_config"] == {"x": best["config.x"]}
    assert answer["experiment_id"] and answer["parent_run_id"]
    assert answer["model_uri"] is None  # a bare function: nothing to register
    assert answer["spec_error"].startswith("<spec>: search.num_samples")
    assert answer["smoke_model_name"] == "mlp-breast-cancer-smoke"
    assert answer["smoke_model_uri"] == "models:/mlp-breast-cancer-smoke/1" and answer["smoke_took_champion"]
    assert answer["environ_kept"] and answer["uri_kept"] and answer["sigterm_kept"]

    # selection: the registered version is valued at its configuration's mean over the new seeds.
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    version = client.get_model_version("mlp-breast-cancer-smoke", "1")
    mean = answer["smoke_chosen_mean"]
    assert float(version.tags["selection_mean"]) == float(version.tags["metric_value"]) == pytest.approx(mean)
    assert version.tags["selection_seeds"] == "2" and answer["smoke_candidates"] == 2
    parent = client.get_run(answer["smoke_parent_run_id"])
    assert parent.data.metrics["selection.mean_val_roc_auc"] == pytest.approx(mean)
    reseeded = client.search_runs(
        [parent.info.experiment_id], filter_string="tags.trial_status = 'reseed'", max_results=100
    )
    assert len(reseeded) == 4 and {r.data.params["seed"] for r in reseeded} == {"1", "2"}
    assert answer["smoke_test_metrics"]["test_roc_auc"] == pytest.approx(parent.data.metrics["test_roc_auc"])
