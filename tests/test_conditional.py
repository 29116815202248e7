"""Conditional parameters (`when:`) downstream of the searcher: the configurations and Optuna
trials the searcher makes hold only their active parameters (TPE and random search), the study
rebuilt from MLflow takes only those, importances give a conditional parameter its share within
its branch, the pictures draw an inactive parameter as a gap; and one small job end to end
(child runs, importances on the parent run, a warm start from it).
"""

from __future__ import annotations

import copy
import math
import struct
import warnings

import pytest
import yaml

from tests.helpers import SPECS, job_runs
from tuning_platform.execution.searcher import build_search
from tuning_platform.insight import (
    BRANCH_IMPORTANCE_PREFIX,
    DPI,
    FIGSIZE,
    Insight,
    branch_labels,
    importance_metrics,
    read_branch_importances,
    read_importances,
)
from tuning_platform.insight import plots as plots_module
from tuning_platform.insight.importance import BRANCH_TRIALS, branch_importances, importances
from tuning_platform.insight.plots import plot_importances, plot_parallel_coordinates
from tuning_platform.search.conditional import distribution
from tuning_platform.search.study import RecordedTrial, fitting_params, study_of
from tuning_platform.spec import load_spec, to_tune_domain

BASE = yaml.safe_load((SPECS / "mlp.yaml").read_text())

SPACE = {
    "lr": {"type": "loguniform", "low": 1e-4, "high": 1e-1},
    "optimizer": {"type": "choice", "values": ["sgd", "adam", "adamw"]},
    "momentum": {"type": "uniform", "low": 0.5, "high": 0.99, "when": {"optimizer": "sgd"}},
    "nesterov": {"type": "choice", "values": [True, False], "when": {"optimizer": "sgd"}},
    # Nested: active only when nesterov is, and is False.
    "dampening": {"type": "uniform", "low": 0.0, "high": 0.5, "when": {"nesterov": False}},
    "beta2": {"type": "loguniform", "low": 0.9, "high": 0.9999, "when": {"optimizer": ["adam", "adamw"]}},
    "num_layers": {"type": "int", "low": 1, "high": 3},
}


def _spec(space=None, **search):
    raw = copy.deepcopy(BASE)
    raw["search"]["space"] = copy.deepcopy(space or SPACE)
    raw["search"]["fixed"] = {"epochs": 3}
    raw["search"].update(search)
    return load_spec(raw)[0]


def _expected(config):
    """The parameters a config holds, by the rule written out by hand."""
    names = {"lr", "optimizer", "num_layers"}
    if config["optimizer"] == "sgd":
        names |= {"momentum", "nesterov"}
        if config["nesterov"] is False:
            names.add("dampening")
    else:
        names.add("beta2")
    return names


def _run_searcher(spec, trials=30):
    """Tune's calls on the searcher for `trials` trials, one after another: the configs it
    suggested, and the searcher."""
    searcher = build_search(spec)
    searcher.set_search_properties(spec.metric, spec.mode, {"epochs": 3})
    configs = []
    for i in range(trials):
        config = searcher.suggest(f"t{i}")
        configs.append(config)
        value = 0.9 - abs(config["lr"] - 0.01) - 0.1 * (config["optimizer"] != "sgd") + 0.01 * i / trials
        searcher.on_trial_complete(f"t{i}", {spec.metric: value, "epoch": 3, "training_iteration": 3})
    return configs, searcher


# --- The searcher: only active parameters, in the configs and in Optuna's trials --------------


@pytest.mark.parametrize("algorithm", ["optuna", "random"])
def test_the_searcher_suggests_and_records_only_the_active_parameters(algorithm):
    spec = _spec(algorithm=algorithm, num_samples=30)
    configs, searcher = _run_searcher(spec)
    for config in configs:
        assert set(config) == _expected(config), config
    branches = {(c["optimizer"], c.get("nesterov")) for c in configs}
    assert ("sgd", False) in branches and ("sgd", True) in branches and any(o != "sgd" for o, _ in branches)
    trials = searcher._ot_study.trials
    assert len(trials) == 30
    for trial, config in zip(trials, configs, strict=True):
        assert set(trial.distributions) == _expected(config)
        assert trial.params == config
        assert trial.state.name == "COMPLETE"
    sampler = searcher._ot_study.sampler
    if algorithm == "random":
        import optuna

        assert type(sampler) is optuna.samplers.RandomSampler
    else:
        assert sampler._group is True and sampler._multivariate is True


def test_tpe_over_a_conditional_space_samples_jointly_and_without_warnings():
    # Without `group`, Optuna 5's multivariate TPE warns and falls back to independent sampling
    # over parameters that are not in every trial.
    spec = _spec(num_samples=20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        configs, _ = _run_searcher(spec, trials=20)
    assert all(set(c) == _expected(c) for c in configs)


@pytest.mark.parametrize(
    "domain",
    [
        {"type": "uniform", "low": 0.5, "high": 0.99},
        {"type": "loguniform", "low": 1e-5, "high": 1e-1},
        {"type": "int", "low": 1, "high": 4},
        {"type": "int", "low": 16, "high": 256, "log": True},
        {"type": "choice", "values": [16, 32, 64]},
        {"type": "choice", "values": ["sgd", "adam"]},
    ],
)
def test_a_conditional_distribution_is_what_ray_converts_the_tune_domain_to(domain):
    from ray.tune.search.optuna import OptunaSearch

    parsed = _spec({"p": domain}).search.space["p"]
    assert distribution(parsed) == OptunaSearch.convert_search_space({"p": to_tune_domain(parsed)})["p"]


# --- The study rebuilt from MLflow ------------------------------------------------------------


def _recorded(number, params, value, status="completed"):
    return RecordedTrial(
        trial_id=f"t{number}",
        run_id=f"r{number}",
        parent_run_id="p",
        status=status,
        params={k: str(v) for k, v in {**params, "epochs": 3}.items()},  # as logged: the fixed ones too
        history=[(1, value - 0.05), (2, value)],
        start_ms=1000 * number,
        end_ms=1000 * number + 500,
    )


SMALL = {
    "lr": SPACE["lr"],
    "optimizer": {"type": "choice", "values": ["sgd", "adam"]},
    "momentum": SPACE["momentum"],
    "num_layers": SPACE["num_layers"],
}


def test_an_old_trial_that_logged_an_inactive_parameter_fits_without_it():
    spec = _spec(SMALL)
    old_adam = _recorded(1, {"lr": 0.01, "optimizer": "adam", "momentum": 0.9, "num_layers": 2}, 0.9)
    assert fitting_params(old_adam, spec) == {"lr": 0.01, "optimizer": "adam", "num_layers": 2}
    old_sgd = _recorded(2, {"lr": 0.01, "optimizer": "sgd", "momentum": 0.9, "num_layers": 2}, 0.9)
    assert fitting_params(old_sgd, spec) == {"lr": 0.01, "optimizer": "sgd", "momentum": 0.9, "num_layers": 2}
    study, skipped = study_of(spec, [old_adam, old_sgd])
    assert skipped == 0
    assert [set(t.distributions) for t in study.trials] == [
        {"lr", "optimizer", "num_layers"},
        {"lr", "optimizer", "momentum", "num_layers"},
    ]


def test_a_trial_missing_an_active_parameter_does_not_fit():
    spec = _spec(SMALL)
    sgd_without_momentum = _recorded(1, {"lr": 0.01, "optimizer": "sgd", "num_layers": 2}, 0.9)
    assert fitting_params(sgd_without_momentum, spec) is None
    assert study_of(spec, [sgd_without_momentum])[1] == 1
    # The nested case: dampening is active for sgd without nesterov only.
    nested = _spec()
    sgd = {"lr": 0.01, "optimizer": "sgd", "momentum": 0.9, "num_layers": 1}
    assert fitting_params(_recorded(2, {**sgd, "nesterov": True}, 0.9), nested) is not None
    assert fitting_params(_recorded(3, {**sgd, "nesterov": False}, 0.9), nested) is None
    assert fitting_params(_recorded(4, {**sgd, "nesterov": False, "dampening": 0.1}, 0.9), nested) is not None


# --- Importances and pictures -----------------------------------------------------------------


def _branchy_trials(sgd=24, adam=16):
    """Trials whose value, among sgd trials, is mostly momentum's doing; adam trials lack it."""
    import random

    rng = random.Random(0)
    trials = []
    for i in range(sgd + adam):
        optimizer = "sgd" if i < sgd else "adam"
        params = {"lr": 10 ** rng.uniform(-4, -1), "optimizer": optimizer, "num_layers": rng.randint(1, 3)}
        value = 0.7 + 0.02 * params["num_layers"] + (0.05 if optimizer == "adam" else 0.0)
        if optimizer == "sgd":
            params["momentum"] = rng.uniform(0.5, 0.99)
            value += 0.5 * (params["momentum"] - 0.5)
        trials.append(_recorded(i, params, value + rng.uniform(0, 0.002)))
    return trials


def _scored(trials):
    return [(t, t.history[-1][1]) for t in trials]


def test_optuna_s_fanova_gives_a_conditional_parameter_no_importance_among_the_others():
    spec = _spec(SMALL)
    found = importances(spec, _scored(_branchy_trials()))
    assert set(found) == {"lr", "optimizer", "num_layers"}
    assert sum(found.values()) == pytest.approx(1.0)


def test_a_conditional_parameter_has_its_importance_within_its_branch():
    spec = _spec(SMALL)
    within = branch_importances(spec, _scored(_branchy_trials()))
    assert list(within) == ["momentum"]
    assert within["momentum"] > 0.5, "among sgd trials momentum explains most of the variance"
    # A branch of too few trials has none.
    assert branch_importances(spec, _scored(_branchy_trials(sgd=BRANCH_TRIALS - 1))) == {}
    assert branch_importances(spec, _scored(_branchy_trials(sgd=BRANCH_TRIALS))) != {}
    # A parameter active in every trial is among the others, not apart.
    assert branch_importances(spec, _scored(_branchy_trials(adam=0))) == {}
    assert branch_importances(_spec({k: v for k, v in SMALL.items() if k != "momentum"}), _scored([])) == {}


def test_branch_importances_are_metrics_of_their_own_and_read_back():
    spec = _spec(SMALL)
    insight = Insight(importances={"lr": 0.6, "optimizer": 0.4}, within_branch={"momentum": 0.8})
    insight.branches = branch_labels(spec)
    assert insight.branches == {"momentum": "optimizer=sgd"}
    metrics = importance_metrics(insight)
    assert metrics == {"importance.lr": 0.6, "importance.optimizer": 0.4, f"{BRANCH_IMPORTANCE_PREFIX}momentum": 0.8}
    assert read_importances(metrics, spec) == ({"lr": 0.6, "optimizer": 0.4}, {})
    assert read_branch_importances(metrics, spec) == ({"momentum": 0.8}, {})
    summary = insight.summary(spec.metric)
    assert "lr 0.60, optimizer 0.40" in summary
    assert "within its branch" in summary and "momentum 0.80 (when optimizer=sgd)" in summary
    from mlflow.utils.validation import _validate_metric_name

    for name in metrics:
        _validate_metric_name(name)


def test_branch_importances_of_several_objectives_read_back_per_objective():
    raw = copy.deepcopy(BASE)
    raw.pop("metric"), raw.pop("mode")
    raw["objectives"] = [{"metric": "val_roc_auc", "mode": "max"}, {"metric": "params", "mode": "min"}]
    raw["search"]["space"] = copy.deepcopy(SMALL)
    spec = load_spec(raw)[0]
    insight = Insight(
        per_objective={"val_roc_auc": {"lr": 1.0}, "params": {"num_layers": 1.0}},
        within_branch_per_objective={"val_roc_auc": {"momentum": 0.7}},
    )
    metrics = importance_metrics(insight)
    assert metrics[f"{BRANCH_IMPORTANCE_PREFIX}val_roc_auc.momentum"] == 0.7
    assert read_branch_importances(metrics, spec) == (
        {"momentum": 0.7},
        {"val_roc_auc": {"momentum": 0.7}, "params": {}},
    )
    assert read_importances(metrics, spec)[1] == {"val_roc_auc": {"lr": 1.0}, "params": {"num_layers": 1.0}}


def _png_size(png):
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", png[16:24])


def test_parallel_coordinates_draw_an_inactive_parameter_as_a_gap(monkeypatch):
    spec = _spec(SMALL)
    trials = _branchy_trials(sgd=5, adam=5)
    trials.append(_recorded(99, {"lr": 0.01, "optimizer": "sgd", "num_layers": 1}, 0.8))  # fits not: skipped
    drawn = []
    real = plots_module._draw_lines
    monkeypatch.setattr(
        plots_module, "_draw_lines", lambda axes, lines, **style: (drawn.extend(lines), real(axes, lines, **style))
    )
    png = plot_parallel_coordinates(spec, _scored(trials))
    assert _png_size(png) == (FIGSIZE[0] * DPI, FIGSIZE[1] * DPI)
    assert len(drawn) == 10, "every fitting trial is drawn, adam ones too"
    momentum_axis = list(spec.search.space).index("momentum")
    gaps = [line for line in drawn if math.isnan(line[momentum_axis][1])]
    assert len(gaps) == 5
    for line in drawn:
        others = [y for x, y in line if x != momentum_axis]
        assert not any(math.isnan(y) for y in others) and all(0 <= y <= 1 for y in others)


def test_the_importances_picture_shows_branch_importances_apart():
    spec = _spec(SMALL)
    png = plot_importances(spec, {"lr": 0.7, "optimizer": 0.3}, {"momentum": 0.8}, branch_labels(spec))
    assert _png_size(png) == (FIGSIZE[0] * DPI, FIGSIZE[1] * DPI)
    assert plot_importances(spec, {}, {"momentum": 0.8}) is not None
    assert plot_importances(spec, {}) is None


def test_write_insight_logs_branch_importances_and_the_pictures(store_uri):
    from tuning_platform.insight import write_insight
    from tuning_platform.tracking.parent import JobTracker

    spec = _spec(SMALL)
    tracker = JobTracker(store_uri, spec.name)
    tracker.start("job", tags={}, params={}, artifacts={})
    insight = write_insight(spec, _branchy_trials(), tracker, started_ms=0)
    metrics = tracker.client.get_run(tracker.parent_run_id).data.metrics
    assert set(read_importances(metrics, spec)[0]) == {"lr", "optimizer", "num_layers"}
    assert read_branch_importances(metrics, spec)[0] == pytest.approx(insight.within_branch)
    assert "momentum" in insight.within_branch
    assert "search/parallel_coordinates.png" in insight.pictures and "search/importances.png" in insight.pictures


# --- The reseeded runs of `selection` ------------------------------------------------------------


def _reseeded_configs(spec, points):
    """The configs Tune's trials of `selection`'s reseed run get, as Tune makes them from the
    searcher `build_search` gives that run (wrapped, given the param space, asked for trials)."""
    from ray.tune.experiment import Experiment
    from ray.tune.search import SearchAlgorithm, SearchGenerator

    from tuning_platform.execution.tuner import trial_config
    from tuning_platform.search.selection import reseed_spec

    run = reseed_spec(spec, len(points))
    search = build_search(run, points=[dict(point) for point in points])
    algorithm = search if isinstance(search, SearchAlgorithm) else SearchGenerator(search)
    config = trial_config(run, {})
    algorithm.set_search_properties(run.metric, run.mode, config)

    def train(config):
        pass

    algorithm.add_configurations([Experiment("reseed", run=train, config=config, num_samples=len(points))])
    configs = []
    for _ in points:
        trial = algorithm.next_trial()
        configs.append({k: v for k, v in trial.config.items() if k in spec.search.space or k == "seed"})
    return configs


RESEEDED = [
    {"lr": 0.01, "optimizer": "adam", "num_layers": 2, "seed": 1},
    {"lr": 0.02, "optimizer": "sgd", "momentum": 0.9, "num_layers": 3, "seed": 1},
]


def test_reseeded_runs_of_an_unconditional_space_run_their_configurations():
    space = {**SMALL, "momentum": {k: v for k, v in SMALL["momentum"].items() if k != "when"}}
    points = [{**RESEEDED[0], "momentum": 0.7}, RESEEDED[1]]
    assert _reseeded_configs(_spec(space), points) == points


def test_reseeded_runs_of_a_conditional_space_run_their_configurations_with_active_parameters_only():
    assert _reseeded_configs(_spec(SMALL), RESEEDED) == RESEEDED


# --- One job end to end ------------------------------------------------------------------------

JOB_OVERRIDES = {
    "search.space.optimizer.values": ["sgd", "adam"],
    "search.num_samples": 10,
    "search.max_concurrent": 2,
    "search.seed": 4,  # 7 sgd trials of 10 (drawn at random, the same each run): a branch with importances
    "search.sampler.n_startup_trials": 10,  # every trial drawn at random: the same branches each run
    "search.fixed.epochs": 2,
    "scheduler.grace_period": 1,
    "data.smoke": True,
}


@pytest.fixture(scope="module")
def conditional_job(tmp_path_factory):
    from tests.helpers import new_store
    from tuning_platform import tune

    folder = tmp_path_factory.mktemp("conditional")
    uri = new_store(folder)
    result = tune(
        SPECS / "mlp.yaml",
        overrides=JOB_OVERRIDES,
        tracking_uri=uri,
        storage_path=str(folder / "ray_results"),
        name="conditional-job",
    )
    return uri, result


@pytest.mark.slow
def test_a_conditional_job_records_only_active_parameters_and_their_importances(conditional_job):
    uri, result = conditional_job
    parents, children = job_runs(uri, "conditional-job")
    (parent,) = parents
    assert len(children) == JOB_OVERRIDES["search.num_samples"]
    by_optimizer = {"sgd": 0, "adam": 0}
    for run in children:
        params = run.data.params
        by_optimizer[params["optimizer"]] += 1
        assert ("momentum" in params) == (params["optimizer"] == "sgd"), params
    assert by_optimizer["adam"] >= 1
    metrics = parent.data.metrics
    assert "importance.optimizer" in metrics and "importance.momentum" not in metrics
    assert by_optimizer["sgd"] >= BRANCH_TRIALS
    assert 0 <= metrics[f"{BRANCH_IMPORTANCE_PREFIX}momentum"] <= 1
    assert "within its branch" in result.insight.summary(result.metric)
    for row in result.rows:
        assert ("momentum" in row.params) == (row.params["optimizer"] == "sgd")
    frame = result.trials
    assert frame.loc[frame["config.optimizer"] == "adam", "config.momentum"].isna().all()
    assert frame.loc[frame["config.optimizer"] == "sgd", "config.momentum"].notna().all()


@pytest.mark.slow
def test_a_warm_start_from_a_conditional_job_counts_its_trials_as_fitting(conditional_job, tmp_path):
    from tuning_platform.request import build_request

    uri, result = conditional_job
    learned = sum(row.status in ("completed", "early_stopped") for row in result.rows)
    request = build_request(
        SPECS / "mlp.yaml",
        {**JOB_OVERRIDES, "search.warm_start": {"experiment": "conditional-job"}},
        tracking_uri=uri,
        storage_path=str(tmp_path / "ray_results"),
        name="conditional-warm",
    )
    warm = request.warm_start
    assert warm is not None
    assert warm.skipped == 0 and warm.used == learned > 0


@pytest.mark.slow
def test_show_rebuilds_the_conditional_job_s_summary_with_its_branch_importances(conditional_job):
    from tests.helpers import run_main

    uri, result = conditional_job
    shown = run_main("show", result.parent_run_id, "--tracking-uri", uri)
    assert shown.returncode == 0, shown.stderr
    line = next(line for line in shown.stdout.splitlines() if "Most important" in line)
    assert line.strip() == result.insight.summary(result.metric)
    assert "momentum" in line and "(when optimizer=sgd)" in line


def test_the_built_in_loop_reads_a_conditional_parameter_with_its_default_when_the_trial_lacks_it():
    import torch

    from trainables.loop import make_optimizer

    params = [torch.nn.Parameter(torch.zeros(2))]
    assert make_optimizer(params, {"optimizer": "adam", "lr": 0.01, "beta2": 0.95}).param_groups[0]["betas"] == (
        0.9,
        0.95,
    )
    assert make_optimizer(params, {"optimizer": "adamw", "lr": 0.01}).param_groups[0]["betas"] == (0.9, 0.999)
    assert make_optimizer(params, {"optimizer": "sgd", "lr": 0.01}).param_groups[0]["momentum"] == 0.9
    assert make_optimizer(params, {"optimizer": "sgd", "lr": 0.01, "momentum": 0.6}).param_groups[0]["momentum"] == 0.6
