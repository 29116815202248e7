"""Grid search (`search.algorithm: grid`): the configurations it runs, conditional ones among
them, its repetitions and its place in the grid across Tune's saved state; and a 2x3 grid job
of the shipped mlp spec end to end, with ASHA still stopping trials."""

from __future__ import annotations

import pickle

import pytest
import yaml
from ray.tune.search import Searcher

from tests.helpers import SPECS, assert_ok, job_runs, run_main
from tuning_platform.search.grid import GridSearch
from tuning_platform.spec import load_spec
from tuning_platform.spec.conditions import grid_points


def _spec(space, **search):
    raw = yaml.safe_load((SPECS / "mlp.yaml").read_text())
    raw["search"] = {"algorithm": "grid", "space": space, "fixed": {"epochs": 3, "lr": 0.01}, **search}
    return load_spec(raw)[0]


GRID = {
    "optimizer": {"type": "grid", "values": ["sgd", "adam", "adamw"]},
    "batch_size": {"type": "choice", "values": [16, 32]},
}


def test_a_grid_is_the_product_of_its_values_and_runs_once_unless_repeated():
    spec = _spec(GRID)
    assert spec.search.num_samples == 1 and spec.planned_trials == 6
    points = grid_points(spec.search.space)
    assert len(points) == 6 and len({tuple(sorted(p.items())) for p in points}) == 6
    assert _spec(GRID, num_samples=3).planned_trials == 18


def test_a_conditional_parameter_is_combined_only_where_it_is_active():
    space = {
        "optimizer": {"type": "grid", "values": ["sgd", "adam"]},
        "momentum": {"type": "grid", "values": [0.8, 0.9], "when": {"optimizer": "sgd"}},
        "num_layers": {"type": "int", "low": 1, "high": 2},
    }
    points = grid_points(_spec(space).search.space)
    assert points == [
        {"optimizer": "sgd", "momentum": 0.8, "num_layers": 1},
        {"optimizer": "sgd", "momentum": 0.8, "num_layers": 2},
        {"optimizer": "sgd", "momentum": 0.9, "num_layers": 1},
        {"optimizer": "sgd", "momentum": 0.9, "num_layers": 2},
        {"optimizer": "adam", "num_layers": 1},
        {"optimizer": "adam", "num_layers": 2},
    ]


def test_a_chain_of_whens_is_drawn_parents_first_whatever_the_spec_s_order():
    space = {
        "nesterov": {"type": "grid", "values": [True, False], "when": {"momentum": 0.9}},
        "momentum": {"type": "grid", "values": [0.0, 0.9], "when": {"optimizer": "sgd"}},
        "optimizer": {"type": "grid", "values": ["sgd", "adam"]},
    }
    expected = [
        {"nesterov": True, "momentum": 0.9, "optimizer": "sgd"},
        {"nesterov": False, "momentum": 0.9, "optimizer": "sgd"},
        {"momentum": 0.0, "optimizer": "sgd"},
        {"optimizer": "adam"},
    ]
    # Each configuration's keys in the spec's order; the set of configurations is the point.
    assert sorted(map(repr, grid_points(_spec(space).search.space))) == sorted(map(repr, expected))


def test_the_searcher_walks_the_grid_repeats_it_and_keeps_its_place_in_tune_s_saved_state(tmp_path):
    spec = _spec(GRID, num_samples=2)
    searcher = GridSearch(spec.search.space, repeats=2)
    first = [searcher.suggest(f"t{i}") for i in range(5)]
    path = tmp_path / "searcher.pkl"
    searcher.save(str(path))
    restored = pickle.loads(pickle.dumps(GridSearch(spec.search.space, repeats=2)))  # as Tune re-creates it
    restored.restore(str(path))
    rest = [restored.suggest(f"t{i}") for i in range(5, 13)]
    assert rest[-1] == Searcher.FINISHED and Searcher.FINISHED not in rest[:-1]
    configs = first + rest[:-1]
    assert configs[:6] == configs[6:] == grid_points(spec.search.space)


@pytest.mark.slow
def test_a_2x3_grid_job_runs_each_configuration_once_and_records_it_as_any_search(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    space = "{optimizer: {type: grid, values: [sgd, adam, adamw]}, batch_size: {type: choice, values: [16, 64]}}"
    result = run_main(
        str(SPECS / "mlp.yaml"),
        "--tracking-uri",
        uri,
        "--storage-path",
        str(tmp_path / "ray_results"),
        "--set",
        "metric=val_loss",  # the smoke set's roc auc ties at 1.0, and ASHA stops no tied trial
        "--set",
        "mode=min",
        "--set",
        "search.algorithm=grid",
        "--set",
        "search.num_samples=1",  # the shipped spec's 20 would be 20 repetitions of the grid
        "--set",
        f"search.space={space}",
        "--set",
        "search.fixed={epochs: 4, lr: 0.01}",
        "--set",
        "scheduler.grace_period=1",
        "--set",
        "scheduler.reduction_factor=2",
        "--set",
        "data.smoke=true",
        cwd=tmp_path,
    )
    assert_ok(result)
    assert "warning" not in result.stderr, result.stderr[-2000:]  # the insight of a grid is written as any other
    (parent,), children = job_runs(uri, "mlp-breast-cancer")
    combos = sorted((run.data.params["optimizer"], run.data.params["batch_size"]) for run in children)
    assert combos == sorted((o, b) for o in ("sgd", "adam", "adamw") for b in ("16", "64"))
    assert parent.data.params["search.algorithm"] == "grid"
    statuses = {run.data.tags["trial_status"] for run in children}
    assert "early_stopped" in statuses, "ASHA still stops the weaker configurations of a grid"
    assert "6 trials" in result.stdout and "grid" in parent.data.tags["mlflow.note.content"]


@pytest.mark.parametrize("algorithm", ["random", "grid", "optuna"])
def test_every_searcher_runs_at_most_max_concurrent_trials_at_once(algorithm):
    """Tune limits a Searcher itself but ignores `max_concurrent_trials` for its own random
    search given explicitly: the platform gives that one the limit."""
    from ray.tune.search import BasicVariantGenerator

    from tuning_platform.execution.searcher import tune_config

    raw = yaml.safe_load((SPECS / "mlp.yaml").read_text())
    raw["search"].update(algorithm=algorithm, max_concurrent=1)
    raw["search"]["space"] = {"batch_size": {"type": "choice", "values": [16, 32]}}
    config = tune_config(load_spec(raw)[0], {"cpu": 1.0, "gpu": 0.0})
    if isinstance(config.search_alg, BasicVariantGenerator):
        assert config.search_alg.max_concurrent == 1 and config.max_concurrent_trials is None
    else:
        assert config.max_concurrent_trials == 1
