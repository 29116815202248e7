"""The Pareto front of a job: its ranks, members, hypervolume and chosen trial from hand-made
recorded trials, and what it leaves on MLflow (the trials' tags, the parent run's table, picture
and hypervolume history) in a real SQLite store. No Ray."""

from __future__ import annotations

import csv
import struct

import pytest
from mlflow.tracking import MlflowClient

from tuning_platform.cli.summary import summary_of
from tuning_platform.insight import DPI, FIGSIZE, Insight, importance_metrics, read_importances, write_insight
from tuning_platform.insight.front import (
    FEASIBLE_TAG,
    FRONT_PICTURE,
    FRONT_TABLE,
    HYPERVOLUME_METRIC,
    HYPERVOLUME_REFERENCE_TAG,
    PARETO_RANK_TAG,
    VIOLATED_TAG,
    write_front,
)
from tuning_platform.insight.plots import staircase
from tuning_platform.objectives import Objective
from tuning_platform.outcome import TrialRow, TuneResult
from tuning_platform.records import PARENT_RUN_ID_TAG, TRIAL_ID_TAG, TrialStatus
from tuning_platform.search.front import job_front
from tuning_platform.search.study import RecordedTrial
from tuning_platform.spec import validate_spec
from tuning_platform.tracking.parent import JobTracker

ACCURACY, LATENCY = {"metric": "val_accuracy", "mode": "max"}, {"metric": "latency_ms", "mode": "min"}


def _spec(objectives=(ACCURACY, LATENCY), constraints=("params <= 1000",), **more):
    return validate_spec(
        {
            "name": "tradeoff",
            "trainable": "mlp",
            "objectives": list(objectives),
            "constraints": list(constraints),
            "search": {
                "num_samples": 8,
                "space": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-1}},
                "fixed": {"epochs": 2},
            },
            **more,
        },
        "x.yaml",
    )


# (trial, val_accuracy, latency_ms, params, status, ended at second). Feasible (params <= 1000):
# t1, t8, t3, t2 trade accuracy for latency (the front); t4 is dominated by t2. Infeasible: t6
# misses by 200, t5 by 4000 (better on both objectives than any feasible trial: it still ranks
# last). t7 failed: not counted. t3 ended before t2.
TRIALS = [
    ("t1", 0.90, 4.0, 500, "completed", 10),
    ("t2", 0.80, 2.0, 800, "completed", 30),
    ("t3", 0.85, 3.0, 900, "completed", 20),
    ("t4", 0.70, 5.0, 400, "completed", 40),
    ("t5", 0.95, 1.0, 5000, "completed", 50),
    ("t6", 0.60, 6.0, 1200, "early_stopped", 60),
    ("t7", None, None, None, "failed", 65),
    ("t8", 0.88, 3.5, 700, "early_stopped", 70),
]
# The reference point: each objective's worst value over the feasible trials (whose volume it
# measures) less 10% of its range: val_accuracy 0.70 - 0.02, latency_ms 5.0 + 0.3.
REFERENCE = (0.68, 5.3)
# The boxes between the reference and t1, t8, t3, t2 (widest in accuracy first), united:
# 0.22 * 1.3 + 0.20 * 0.5 + 0.17 * 0.5 + 0.12 * 1.0.
HYPERVOLUME = 0.591
# After each counted trial's end (t1, t3, t2, t4, t5, t6, t8): t4 is dominated, t5 and t6 infeasible.
GROWTH = [(1, 0.286), (2, 0.456), (3, 0.576), (4, 0.576), (5, 0.576), (6, 0.576), (7, HYPERVOLUME)]


def _flat(pairs):
    return [x for pair in pairs for x in pair]


def _trials(primary: str = "val_accuracy", run_ids: dict[str, str] | None = None) -> list[RecordedTrial]:
    """The trials as `search.study.recorded_trials` reads them: the history of the spec's
    metric, the last value of every other metric the job judges."""
    made = []
    for number, (trial_id, accuracy, latency, params, status, ended) in enumerate(TRIALS, start=1):
        finals = {} if accuracy is None else {"val_accuracy": accuracy, "latency_ms": latency, "params": params}
        last = finals.get(primary)
        made.append(
            RecordedTrial(
                trial_id=trial_id,
                run_id=(run_ids or {}).get(trial_id, f"run-{trial_id}"),
                parent_run_id="parent",
                status=TrialStatus(status),
                params={"lr": str(0.001 * number), "epochs": "2"},
                history=[] if last is None else [(1, last * 1.1), (2, last)],
                start_ms=1000 * number,
                end_ms=1000 * ended,
                finals=finals,
            )
        )
    return made


def test_the_front_ranks_feasible_trials_first_and_measures_their_hypervolume():
    front = job_front(_spec(), _trials())
    ranks = {p.trial_id: p.rank for p in front.points}
    assert ranks == {"t1": 1, "t8": 1, "t3": 1, "t2": 1, "t4": 2, "t6": 3, "t5": 4}  # t7 failed: not counted
    assert [p.trial_id for p in front.members] == ["t1", "t8", "t3", "t2"]  # best accuracy first
    assert {p.trial_id: [c.text for c in p.violated] for p in front.points if not p.feasible} == {
        "t5": ["params <= 1000"],
        "t6": ["params <= 1000"],
    }
    assert front.closest_infeasible().trial_id == "t6"
    assert front.reference == pytest.approx(REFERENCE)
    assert front.hypervolume == pytest.approx(HYPERVOLUME)
    assert [count for count, _ in front.growth] == [count for count, _ in GROWTH]
    assert [value for _, value in front.growth] == pytest.approx([value for _, value in GROWTH])


def test_the_rule_picks_the_trial_to_deploy_from_the_feasible_front():
    assert job_front(_spec(), _trials()).chosen(None).trial_id == "t1"  # default: best on the first objective
    prefer = _spec(selection={"rule": {"prefer": "latency_ms"}})
    assert prefer.metric == "latency_ms"  # the preferred objective is the primary one
    assert job_front(prefer, _trials("latency_ms")).chosen(prefer.selection_rule).trial_id == "t2"
    # Scaled over the front to [0, 1] (1 best): t1 (1, 0), t8 (0.8, 0.25), t3 (0.5, 0.5), t2 (0, 1);
    # t3 is nearest the ideal (1, 1), at 0.707.
    knee = _spec(selection={"rule": "knee"})
    front = job_front(knee, _trials())
    assert front.chosen(knee.selection_rule).trial_id == "t3"
    assert [p.trial_id for p in front.ordered_by(knee.selection_rule)] == ["t3", "t8", "t1", "t2"]


def test_the_staircase_bounds_what_the_front_dominates_from_the_reference_point():
    objectives = (Objective("val_accuracy", "max"), Objective("latency_ms", "min"))
    points = [(0.90, 4.0), (0.80, 2.0), (0.85, 3.0), (0.70, 5.0)]  # the last is dominated: no step
    corners = [(0.68, 2.0), (0.80, 2.0), (0.80, 3.0), (0.85, 3.0), (0.85, 4.0), (0.90, 4.0), (0.90, 5.3)]
    assert _flat(staircase(points, objectives, REFERENCE)) == pytest.approx(_flat(corners))
    assert staircase([], objectives, REFERENCE) == []


@pytest.fixture
def job(store_uri):
    """A job's parent run and a child run per trial, in a real SQLite store."""
    tracker = JobTracker(store_uri, "tradeoff")
    tracker.start("job", tags={}, params={}, artifacts={})
    client = tracker.client
    run_ids = {
        trial_id: client.create_run(
            tracker.experiment_id, tags={PARENT_RUN_ID_TAG: tracker.parent_run_id, TRIAL_ID_TAG: trial_id}
        ).info.run_id
        for trial_id, *_ in TRIALS
    }
    return tracker, run_ids


def _artifact(client: MlflowClient, run_id: str, path: str, tmp_path) -> bytes:
    with open(client.download_artifacts(run_id, path, str(tmp_path)), "rb") as handle:
        return handle.read()


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    return struct.unpack(">II", png[16:24])


def test_the_front_is_written_on_the_trial_runs_and_the_parent_run(job, tmp_path):
    tracker, run_ids = job
    client, parent = tracker.client, tracker.parent_run_id
    spec = _spec()
    front = job_front(spec, _trials(run_ids=run_ids))
    assert write_front(front, spec, tracker) == [FRONT_TABLE, FRONT_PICTURE]

    tags = {trial_id: client.get_run(run_id).data.tags for trial_id, run_id in run_ids.items()}
    assert {t: tags[t].get(PARETO_RANK_TAG) for t in tags} == {
        **{"t1": "1", "t2": "1", "t3": "1", "t8": "1", "t4": "2", "t6": "3", "t5": "4"},
        "t7": None,  # failed: not on the front, not ranked
    }
    assert {t: tags[t].get(FEASIBLE_TAG) for t in ("t1", "t4", "t5", "t6", "t7")} == {
        **{"t1": "true", "t4": "true", "t5": "false", "t6": "false"},
        "t7": None,
    }
    assert tags["t5"][VIOLATED_TAG] == "params <= 1000" and VIOLATED_TAG not in tags["t1"]

    rows = list(csv.DictReader(_artifact(client, parent, FRONT_TABLE, tmp_path).decode().splitlines()))
    assert [row["trial_id"] for row in rows] == ["t1", "t8", "t3", "t2", "t4", "t6", "t5"]  # the front first
    assert rows[0] == {
        "trial_id": "t1",
        "run_id": run_ids["t1"],
        "val_accuracy": "0.9",
        "latency_ms": "4.0",
        "params": "500",
        "feasible": "true",
        "violated": "",
        "pareto_rank": "1",
    }
    assert (rows[-1]["feasible"], rows[-1]["violated"], rows[-1]["params"]) == ("false", "params <= 1000", "5000")

    assert _png_size(_artifact(client, parent, FRONT_PICTURE, tmp_path)) == (FIGSIZE[0] * DPI, FIGSIZE[1] * DPI)

    def history():
        return [(m.step, m.value) for m in client.get_metric_history(parent, HYPERVOLUME_METRIC)]

    assert _flat(sorted(history())) == pytest.approx(_flat(GROWTH))
    run = client.get_run(parent)
    assert run.data.metrics[HYPERVOLUME_METRIC] == pytest.approx(HYPERVOLUME)  # the runs table's value: the last
    assert run.data.tags[HYPERVOLUME_REFERENCE_TAG] == "val_accuracy=0.68, latency_ms=5.3"
    # Written again (a resumed job's end): each step is kept once.
    write_front(front, spec, tracker)
    assert _flat(sorted(history())) == pytest.approx(_flat(GROWTH))


def test_one_objective_with_constraints_gets_tags_and_the_table_without_picture_or_hypervolume(job, tmp_path):
    tracker, run_ids = job
    client, parent = tracker.client, tracker.parent_run_id
    spec = validate_spec(
        {
            "name": "tradeoff",
            "trainable": "mlp",
            "metric": "val_accuracy",
            "mode": "max",
            "constraints": ["params <= 1000", "latency_ms < 4"],
            "search": {"space": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-1}}, "fixed": {"epochs": 2}},
        },
        "x.yaml",
    )
    front = job_front(spec, _trials(run_ids=run_ids))
    assert write_front(front, spec, tracker) == [FRONT_TABLE]
    # t8 is the most accurate trial that meets both.
    assert client.get_run(run_ids["t8"]).data.tags[PARETO_RANK_TAG] == "1"
    assert client.get_run(run_ids["t1"]).data.tags[VIOLATED_TAG] == "latency_ms < 4"
    assert client.get_run(run_ids["t6"]).data.tags[VIOLATED_TAG] == "params <= 1000; latency_ms < 4"
    header = _artifact(client, parent, FRONT_TABLE, tmp_path).decode().splitlines()[0]
    assert header == "trial_id,run_id,val_accuracy,params,latency_ms,feasible,violated,pareto_rank"
    assert [item.path for item in client.list_artifacts(parent, "pareto")] == [FRONT_TABLE]
    run = client.get_run(parent)
    assert HYPERVOLUME_METRIC not in run.data.metrics and HYPERVOLUME_REFERENCE_TAG not in run.data.tags


def test_the_insight_of_several_objectives_has_importances_per_objective_and_the_front(job):
    tracker, run_ids = job
    spec = _spec()
    insight = write_insight(spec, _trials(run_ids=run_ids), tracker, started_ms=0)
    # One searched parameter explains all of each objective's variance (no forest fitted).
    assert insight.per_objective == {"val_accuracy": {"lr": 1.0}, "latency_ms": {"lr": 1.0}}
    assert insight.importances == {"lr": 1.0}  # the primary objective's
    metrics = tracker.client.get_run(tracker.parent_run_id).data.metrics
    assert {k: v for k, v in metrics.items() if k.startswith("importance.")} == {
        "importance.val_accuracy.lr": 1.0,
        "importance.latency_ms.lr": 1.0,
    }
    assert read_importances(metrics, spec) == (insight.importances, insight.per_objective)
    assert "search/importances.png" in insight.pictures
    assert insight.front is not None and insight.front.hypervolume == pytest.approx(HYPERVOLUME)
    assert insight.front_files == [FRONT_TABLE, FRONT_PICTURE]
    assert "Most important (fANOVA) for val_accuracy: lr 1.00; for latency_ms: lr 1.00" == insight.summary(spec.metric)


def test_one_objective_keeps_its_importance_names():
    spec = _spec(objectives=(ACCURACY,), constraints=())
    assert importance_metrics(Insight(importances={"lr": 0.7, "width": 0.3})) == {
        "importance.lr": 0.7,
        "importance.width": 0.3,
    }
    assert read_importances({"importance.width": 0.3, "importance.lr": 0.7, "hypervolume": 1.0}, spec) == (
        {"lr": 0.7, "width": 0.3},
        {},
    )


def test_the_summary_prints_the_front_its_hypervolume_and_the_infeasible_count():
    spec = _spec()
    front = job_front(spec, _trials())
    result = TuneResult("val_accuracy", "max", "sqlite:///mlflow.db", "tradeoff", "1", "parent", "run")
    result.rows = [TrialRow(t.trial_id, t.status, 2, t.last_value, {}) for t in _trials()]
    result.front = front
    lines = summary_of(result, spec, "sqlite:///mlflow.db").splitlines()
    start = lines.index("Pareto front by val_accuracy (max) and latency_ms (min): 4 of 7 trials")
    assert [line.split() for line in lines[start + 1 : start + 6]] == [
        ["trial", "status", "val_accuracy", "latency_ms"],
        ["t1", "completed", "0.9", "4"],
        ["t8", "early_stopped", "0.88", "3.5"],
        ["t3", "completed", "0.85", "3"],
        ["t2", "completed", "0.8", "2"],
    ]
    assert "Hypervolume 0.591 against the reference point val_accuracy=0.68, latency_ms=5.3" in lines
    assert "Constraints (params <= 1000): 2 of 7 trials miss them" in lines
