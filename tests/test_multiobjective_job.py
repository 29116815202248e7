"""A two-objective job of the shipped mlp spec, end to end: accuracy against the model's size,
a constraint on it, MO-ASHA and MO-TPE, the front in MLflow, a feasible champion chosen by each
rule, the PRUNED hand-over in the searcher's saved study, an extension, and a job where no
trial is feasible.

One job (module scope) serves most assertions; its extension and the other rules' jobs run in
the same store.
"""

from __future__ import annotations

import csv
import glob
import pickle

import mlflow.artifacts
import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import SPECS, assert_ok, job_runs, run_main

pytestmark = pytest.mark.slow

NAME = "mlp-breast-cancer"
# The shipped spec, with its metric and the model's parameter count as two objectives, a bound
# on that count that the larger configurations of the space miss, and a small budget.
TWO_OBJECTIVES = [
    "--set",
    "metric=",
    "--set",
    "mode=",
    "--set",
    "objectives=[{metric: val_roc_auc, mode: max}, {metric: params, mode: min}]",
    "--set",
    "constraints=[params <= 8000]",
    "--set",
    "selection.rule=knee",
    "--set",
    "search.num_samples=8",
    "--set",
    "search.fixed.epochs=4",
    "--set",
    "search.sampler.n_startup_trials=4",
    "--set",
    "scheduler.grace_period=1",
    "--set",
    "scheduler.reduction_factor=2",
]


class Store:
    def __init__(self, folder):
        self.folder = folder
        self.uri = f"sqlite:///{folder / 'mlflow.db'}"
        self.client = MlflowClient(self.uri)

    def run(self, *args):
        common = ["--tracking-uri", self.uri, "--storage-path", str(self.folder / "ray_results")]
        return run_main(str(SPECS / "mlp.yaml"), *common, *args, cwd=self.folder)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return Store(tmp_path_factory.mktemp("two-objectives"))


@pytest.fixture(scope="module")
def job(store):
    result = store.run(*TWO_OBJECTIVES)
    assert_ok(result)
    return result


def _parent_and_children(store):
    parents, children = job_runs(store.client, NAME)
    return parents, children


def test_the_trials_runs_carry_their_rank_and_feasibility(job, store):
    _, children = _parent_and_children(store)
    counted = [run for run in children if "pareto_rank" in run.data.tags]
    assert len(counted) >= 6, "completed and stopped-early trials are counted"
    for run in counted:
        tags, metrics = run.data.tags, run.data.metrics
        feasible = metrics["params"] <= 8000
        assert tags["feasible"] == str(feasible).lower()
        assert (tags.get("violated") == "params <= 8000") is not feasible
    front = [run for run in counted if run.data.tags["pareto_rank"] == "1"]
    assert front and all(run.data.tags["feasible"] == "true" for run in front)
    # No feasible trial of the front is dominated by another feasible trial.
    feasible = [run for run in counted if run.data.tags["feasible"] == "true"]
    for run in front:
        auc, size = run.data.metrics["val_roc_auc"], run.data.metrics["params"]
        assert not any(
            o.data.metrics["val_roc_auc"] >= auc
            and o.data.metrics["params"] <= size
            and (o.data.metrics["val_roc_auc"], o.data.metrics["params"]) != (auc, size)
            for o in feasible
        )


def test_the_parent_run_holds_the_front_its_picture_and_the_hypervolume_as_it_grew(job, store):
    (parent,), children = _parent_and_children(store)
    run_id = parent.info.run_id
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="pareto", tracking_uri=store.uri)
    with open(f"{local}/front.csv") as handle:
        rows = list(csv.DictReader(handle))
    counted = {run.data.tags["trial_id"] for run in children if "pareto_rank" in run.data.tags}
    assert {row["trial_id"] for row in rows} == counted
    assert rows[0]["pareto_rank"] == "1", "the front comes first"
    with open(f"{local}/front.png", "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    history = store.client.get_metric_history(run_id, "hypervolume")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(1, len(counted) + 1))
    assert history and max(m.value for m in history) > 0
    assert "val_roc_auc" in parent.data.tags["hypervolume_reference"]
    assert any(key.startswith("importance.val_roc_auc.") for key in parent.data.metrics)
    assert any(key.startswith("importance.params.") for key in parent.data.metrics)


def test_the_registered_model_is_the_knee_of_the_feasible_front(job, store):
    versions = store.client.search_model_versions(f"name = '{NAME}'")
    assert len(versions) == 1
    tags = versions[0].tags
    assert float(tags["objective.params"]) <= 8000, "the registered model is always feasible"
    assert (tags["selection_rule"], tags["pareto_rank"]) == ("knee", "1")
    assert (tags["objectives"], tags["constraints"]) == ("val_roc_auc:max,params:min", "params <= 8000")
    _, children = _parent_and_children(store)
    chosen = next(run for run in children if run.data.tags["trial_id"] == tags["trial_id"])
    assert chosen.data.metrics["params"] == float(tags["objective.params"])
    assert store.client.get_model_version_by_alias(NAME, "champion").version == versions[0].version
    assert (
        "Pareto front" in job.stdout
        and f"Chosen from the feasible front (knee): trial {tags['trial_id']}" in job.stdout
    )


def test_trials_asha_stopped_are_pruned_in_the_searcher_s_study(job, store):
    (parent,), children = _parent_and_children(store)
    ray_run = parent.data.tags["ray_run_name"]
    (state,) = glob.glob(str(store.folder / "ray_results" / ray_run / "searcher-state-*.pkl"))
    with open(state, "rb") as handle:
        searcher = pickle.load(handle)
    study, numbers = searcher["_ot_study"], {k: t.number for k, t in searcher["_ot_trials"].items()}
    states = {trial_id: study.trials[n].state.name for trial_id, n in numbers.items()}
    ended = {run.data.tags["trial_id"]: run.data.tags["trial_status"] for run in children}
    assert "early_stopped" in ended.values(), "ASHA stopped some trials of this job"
    for trial_id, status in ended.items():
        assert states[trial_id] == {"early_stopped": "PRUNED", "completed": "COMPLETE"}[status], trial_id
    assert len(study.directions) == 2


def test_an_extension_adds_trials_to_the_same_front(job, store):
    result = store.run(*TWO_OBJECTIVES, "--set", "search.num_samples=11", "--resume")
    assert_ok(result)
    (parent,), children = _parent_and_children(store)
    assert len(children) == 11
    counted = [run for run in children if "pareto_rank" in run.data.tags]
    history = store.client.get_metric_history(parent.info.run_id, "hypervolume")
    assert max(m.step for m in history) == len(counted)
    # The chosen trial may now be another: its configuration is on the parent run as tags
    # (MLflow refuses to change the first best's params).
    chosen = store.client.search_model_versions(f"name = '{NAME}'")[0].tags
    assert any(key.startswith("best.") for key in parent.data.tags), chosen


def test_prefer_picks_the_best_feasible_trial_on_its_objective_and_never_competes_with_knee(job, store):
    result = store.run(*TWO_OBJECTIVES, "--set", "selection.rule={prefer: params}", "--set", "search.num_samples=4")
    assert_ok(result)
    versions = sorted(store.client.search_model_versions(f"name = '{NAME}'"), key=lambda v: int(v.version))
    newest = versions[-1].tags
    assert newest["selection_rule"] == "prefer:params"
    job_parent = newest["parent_run_id"]
    _, children = _parent_and_children(store)
    feasible = [
        run.data.metrics["params"]
        for run in children
        if run.data.tags.get("mlflow.parentRunId") == job_parent and run.data.tags.get("feasible") == "true"
    ]
    assert float(newest["objective.params"]) == min(feasible)
    # Chosen by another rule: never compared with the knee champion, which stays a knee version.
    champion = store.client.get_model_version_by_alias(NAME, "champion")
    assert champion.tags["selection_rule"] == "knee" and champion.version != versions[-1].version


def test_a_job_where_no_trial_is_feasible_ends_well_names_the_closest_and_registers_nothing(job, store):
    before = len(store.client.search_model_versions(f"name = '{NAME}'"))
    result = store.run(*TWO_OBJECTIVES, "--set", "constraints=[params <= 10]", "--set", "search.num_samples=2")
    assert_ok(result)
    warning = [line for line in result.stderr.splitlines() if "no trial meets the constraints" in line]
    assert len(warning) == 1 and warning[0].startswith("warning: ") and "params <= 10 (got " in warning[0]
    assert len(store.client.search_model_versions(f"name = '{NAME}'")) == before
