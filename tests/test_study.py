"""The search as a study: trials rebuilt from MLflow records, the searcher seeded from them
(extend a finished job, warm-start a new one), and the pictures of the search."""

from __future__ import annotations

import math
import random
import struct

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.helpers import assert_ok, job_runs, run_cli, write_spec
from tuning_platform.execution.resume import settings_fingerprint, spec_fingerprint
from tuning_platform.execution.searcher import build_search
from tuning_platform.execution.tuner import trial_config
from tuning_platform.insight import DPI, FIGSIZE, asha_rungs, plot_best_so_far, plot_learning_curves
from tuning_platform.records import compact_number, trial_run_name
from tuning_platform.request import build_request
from tuning_platform.search.study import RecordedTrial, fitting_params, study_of
from tuning_platform.spec import SpecError, load_spec

WIDE = {
    "name": "bowl",
    "trainable": "toy:bowl",
    "metric": "loss",
    "mode": "min",
    "search": {
        "num_samples": 8,
        "seed": 1,
        "space": {
            "x": {"type": "uniform", "low": -1.0, "high": 2.0},
            "y": {"type": "uniform", "low": -1.0, "high": 2.0},
            "kind": {"type": "choice", "values": ["a", "b"]},
        },
        "fixed": {"epochs": 3},
    },
    "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
}
NARROW = {
    **WIDE,
    "name": "bowl-narrow",
    "search": {
        "num_samples": 4,
        "seed": 1,
        "warm_start": {"experiment": "bowl"},
        "space": {"x": {"type": "uniform", "low": 0.0, "high": 1.0}, "y": {"type": "uniform", "low": 0.0, "high": 1.0}},
        "fixed": {"epochs": 3, "kind": "b"},
    },
}
TOY = """
from ray import tune


def bowl(config):
    # Lowest at x=0.3, y=0.7 (kind "a" costs 0.5 more); every epoch a little lower.
    for epoch in range(1, config["epochs"] + 1):
        loss = (config["x"] - 0.3) ** 2 + (config["y"] - 0.7) ** 2 + (0.5 if config["kind"] == "a" else 0.0)
        tune.report({"epoch": epoch, "loss": loss + 0.1 / epoch})
"""


def _spec(raw, overrides=None):
    return load_spec(raw, overrides)[0]


def _bowl(params):
    x, y = params.get("x", 0.0), params.get("y", 0.0)
    return (x - 0.3) ** 2 + (y - 0.7) ** 2 + (0.5 if params.get("kind", "b") == "a" else 0.0)


def _recorded(number, params, status="completed", epochs=3):
    value = _bowl(params)
    return RecordedTrial(
        trial_id=f"t{number}",
        run_id=f"r{number}",
        parent_run_id="p",
        status=status,
        params={k: str(v) for k, v in params.items()},
        history=[(e, value + 0.1 / e) for e in range(1, epochs + 1)],
        start_ms=1000 * number,
        end_ms=1000 * number + 500,
    )


# --- Fast: what fits, what is named how, what the pictures are ----------------------------------


def test_a_trial_fits_a_space_only_with_every_searched_value_inside_and_every_fixed_value_equal():
    narrow = _spec(NARROW)
    inside = _recorded(1, {"x": 0.5, "y": 0.5, "kind": "b", "epochs": 3, "seed": 1})
    assert fitting_params(inside, narrow) == {"x": 0.5, "y": 0.5}
    assert fitting_params(_recorded(2, {"x": 1.5, "y": 0.5, "kind": "b", "epochs": 3}), narrow) is None
    assert fitting_params(_recorded(3, {"x": 0.5, "y": 0.5, "kind": "a", "epochs": 3}), narrow) is None
    assert fitting_params(_recorded(4, {"x": 0.5, "y": 0.5, "kind": "b", "epochs": 2}), narrow) is None
    assert fitting_params(_recorded(5, {"x": 0.5, "kind": "b", "epochs": 3}), narrow) is None
    # A choice is matched as it was logged (a string); an int must be whole and inside.
    wide = _spec(WIDE)
    assert fitting_params(_recorded(6, {"x": 0.1, "y": 0.2, "kind": "a", "epochs": 3}), wide)["kind"] == "a"
    counted = _spec(WIDE, {"search.space.kind": {"type": "int", "low": 1, "high": 4}})
    assert fitting_params(_recorded(7, {"x": 0, "y": 0, "kind": 2, "epochs": 3}), counted)["kind"] == 2
    assert fitting_params(_recorded(8, {"x": 0, "y": 0, "kind": 2.5, "epochs": 3}), counted) is None


def test_the_study_learns_from_completed_and_early_stopped_trials_and_counts_the_misfits():
    narrow = _spec(NARROW)
    trials = [
        _recorded(1, {"x": 0.5, "y": 0.5, "kind": "b", "epochs": 3}),
        _recorded(2, {"x": 0.2, "y": 0.9, "kind": "b", "epochs": 3}, status="early_stopped", epochs=1),
        _recorded(3, {"x": 1.5, "y": 0.5, "kind": "b", "epochs": 3}),  # outside: skipped
        _recorded(4, {"x": 0.5, "y": 0.5, "kind": "b", "epochs": 3}, status="failed"),  # never learned from
    ]
    study, skipped = study_of(narrow, trials)
    assert skipped == 1
    states = sorted(t.state.name for t in study.trials)
    assert states == ["COMPLETE", "PRUNED"]
    pruned = next(t for t in study.trials if t.state.name == "PRUNED")
    assert pruned.intermediate_values == {1: pytest.approx(_bowl({"x": 0.2, "y": 0.9}) + 0.1)}


def test_only_the_budget_may_change_between_a_job_and_its_extension():
    wide = _spec(WIDE)
    more = _spec(WIDE, {"search.num_samples": 40, "budget.time_s": 600})
    other = _spec(WIDE, {"search.space.x.high": 3.0})
    assert settings_fingerprint(more) == settings_fingerprint(wide) != settings_fingerprint(other)
    assert spec_fingerprint(more) != spec_fingerprint(wide)


def test_trial_runs_have_names_a_person_can_scan():
    config = {"lr": 0.0051234, "optimizer": "adamw", "hidden": 128, "dropout": 0.25, "epochs": 2}
    assert trial_run_name(7, config, ("lr", "optimizer", "hidden", "dropout")) == "t07 lr=5.1e-3 adamw hidden=128"
    assert [compact_number(v) for v in (1e-5, 0.25, 3, 12345.6, 0.0)] == ["1e-5", "0.25", "3", "1.2e4", "0"]


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    return struct.unpack(">II", png[16:24])


def test_pictures_are_pngs_of_a_fixed_size_with_the_asha_rungs_known():
    spec = _spec(WIDE, {"search.fixed.epochs": 9, "scheduler.reduction_factor": 3})
    assert asha_rungs(spec) == [1, 3]
    trials = [_recorded(1, {"x": 0.5, "y": 0.5, "kind": "b", "epochs": 9}, epochs=9)]
    trials.append(_recorded(2, {"x": 1.5, "y": 0.5, "kind": "a", "epochs": 9}, status="early_stopped", epochs=1))
    expected = (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI))
    scored = [(t, min(v for _, v in t.history)) for t in trials]
    assert _png_size(plot_best_so_far(spec, scored, started_ms=0)) == expected
    assert _png_size(plot_learning_curves(spec, trials)) == expected


def test_a_large_job_s_importances_come_from_a_sample_and_still_rank_the_parameters(monkeypatch, caplog):
    """Over IMPORTANCE_TRIALS trials, fANOVA is fitted on a seeded sample of that many (it cost
    minutes on 10,000 trials); below, on every trial. Both with a forest of TREES trees, half of
    Optuna's default. Either way x, which moves the metric 1,000 times more than y, ranks first."""
    import dataclasses

    import optuna.importance

    from tuning_platform.insight import importance as insight

    fitted = []

    class Recorded(optuna.importance.FanovaImportanceEvaluator):
        def __init__(self, n_trees: int = 64, **kwargs):
            super().__init__(n_trees=n_trees, **kwargs)
            self.n_trees = n_trees

        def evaluate(self, study, *args, **kwargs):
            fitted.append((self.n_trees, len(study.trials)))
            return super().evaluate(study, *args, **kwargs)

    monkeypatch.setattr(optuna.importance, "FanovaImportanceEvaluator", Recorded)
    monkeypatch.setattr(insight, "IMPORTANCE_TRIALS", 40)
    spec, rng, scored = _spec(NARROW), random.Random(0), []
    for number in range(1, 101):
        x, y = rng.random(), rng.random()
        value = 10 * (x - 0.3) ** 2 + 0.01 * y
        trial = _recorded(number, {"x": x, "y": y, "kind": "b", "epochs": 3})
        scored.append((dataclasses.replace(trial, history=[(3, value)]), value))
    with caplog.at_level("INFO", logger="tuning_platform.insight.importance"):
        sampled = insight.importances(spec, scored)
        whole = insight.importances(spec, scored[:30])
    assert fitted == [(insight.TREES, 40), (insight.TREES, 30)] and insight.TREES == 32
    assert "estimated from 40 of the 100 trials" in caplog.text
    assert list(sampled) == list(whole) == ["x", "y"] and sampled["x"] > 0.9


def test_one_searched_parameter_has_fanova_s_importance_without_a_forest(monkeypatch, caplog):
    import dataclasses

    import optuna
    import optuna.importance

    from tuning_platform.insight import importance as insight

    spec = _spec(NARROW, {"search.space": {"x": {"type": "uniform", "low": 0.0, "high": 1.0}}})
    assert list(spec.search.space) == ["x"]
    rng, scored = random.Random(0), []
    for number in range(1, 21):
        x = rng.random()
        trial = _recorded(number, {"x": x, "y": 0.5, "kind": "b", "epochs": 3})
        scored.append((dataclasses.replace(trial, history=[(3, (x - 0.3) ** 2)]), (x - 0.3) ** 2))
    study = optuna.create_study()
    for trial, value in scored:
        x = optuna.distributions.FloatDistribution(0.0, 1.0)
        study.add_trial(optuna.trial.create_trial(value=value, params={"x": trial.params["x"]}, distributions={"x": x}))
    fanova = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
    )

    def no_forest(*args, **kwargs):
        raise AssertionError("a forest was fitted")

    monkeypatch.setattr(optuna.importance, "FanovaImportanceEvaluator", no_forest)
    assert insight.importances(spec, scored) == {"x": 1.0} == {k: float(v) for k, v in fanova.items()}
    flat = [(trial, 0.25) for trial, _ in scored]  # fANOVA: "zero total variance"
    with caplog.at_level("INFO", logger="tuning_platform.insight.importance"):
        assert insight.importances(spec, flat) == {}
    assert "no parameter importances: every trial has the same" in caplog.text


def _first_hit(spec, history, seed, threshold=0.01, limit=60):
    """Trials a searcher needs until one lands within 0.1 of the bowl's lowest point."""
    searcher = build_search(_spec(spec.model_dump(), {"search.seed": seed}), history)
    searcher.set_search_properties(spec.metric, spec.mode, trial_config(spec, {}))
    for number in range(1, limit + 1):
        params = searcher.suggest(f"t{number}")
        loss = _bowl(params)
        searcher.on_trial_complete(f"t{number}", {"loss": loss, "training_iteration": 1})
        if loss < threshold:
            return number
    return limit


def test_a_warm_started_searcher_finds_the_optimum_in_fewer_trials_than_a_cold_one():
    """The same TPE, seeded or not with an earlier job's trials on a wider space, over five seeds."""
    narrow = _spec(NARROW)
    rng = random.Random(0)
    earlier = [
        _recorded(n, {"x": rng.uniform(-0.5, 1.5), "y": rng.uniform(-0.5, 1.5), "kind": "b", "epochs": 3})
        for n in range(60)
    ]
    _, skipped = study_of(narrow, earlier)
    assert 20 < skipped < 55  # the wider space's trials outside [0, 1] x [0, 1]
    cold = [_first_hit(narrow, [], seed) for seed in range(5)]
    warm = [_first_hit(narrow, earlier, seed) for seed in range(5)]
    assert sum(warm) < sum(cold), (warm, cold)
    assert math.fsum(warm) / 5 <= 10, warm


# --- A real toy job: extend it, then warm-start a narrower job from it ----------------------------


@pytest.mark.slow
def test_a_finished_job_is_extended_and_a_narrower_job_warm_starts_from_it(tmp_path, store_uri, monkeypatch):
    (tmp_path / "toy.py").write_text(TOY)
    monkeypatch.syspath_prepend(str(tmp_path))  # for the in-process checks, as the CLI finds it
    wide_file = write_spec(tmp_path, yaml.safe_dump(WIDE), "wide.yaml")
    narrow_file = write_spec(tmp_path, yaml.safe_dump(NARROW), "narrow.yaml")
    args = [str(wide_file), "--tracking-uri", store_uri]

    first = run_cli(*args, cwd=tmp_path, timeout=300)
    assert_ok(first)
    # A user's function from the working directory: tracked, and nothing to register.
    assert "note: toy:bowl exposes no TASK, so no model was registered" in first.stdout
    assert (tmp_path / "ray_results").is_dir()  # the default storage path is the working directory
    # Tune's own records of each trial are there, TensorBoard's are not (_compat.ray.auto_loggers_off).
    trial_folders = [path.parent for path in (tmp_path / "ray_results").rglob("result.json")]
    assert len(trial_folders) == 8 and all((folder / "progress.csv").is_file() for folder in trial_folders)
    assert not list((tmp_path / "ray_results").rglob("events.out.tfevents*"))
    # Asked in-process, as the CLI asks before anything starts (its exit 2).
    with pytest.raises(SpecError) as same:
        build_request(wide_file, tracking_uri=store_uri, resume=True)
    assert "has finished its 8 trials; to extend it, raise search.num_samples above 8" in str(same.value)
    with pytest.raises(SpecError) as changed:
        build_request(wide_file, ["search.num_samples=12", "scheduler.type=fifo"], tracking_uri=store_uri, resume=True)
    assert "\n" not in str(changed.value)
    assert "only search.num_samples and budget.time_s may change" in str(changed.value)
    assert "search.warm_start: {experiment: bowl}" in str(changed.value)

    extended = run_cli(*args, "--resume", "--set", "search.num_samples=12", cwd=tmp_path, timeout=300)
    assert_ok(extended)
    assert "Extending job bowl-" in extended.stdout and "by 4 trials" in extended.stdout
    assert "12 trials in" in extended.stdout

    client = MlflowClient(store_uri)
    parents, children = job_runs(client, "bowl")
    children.sort(key=lambda r: r.info.run_name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 12 and len({c.data.tags["trial_id"] for c in children}) == 12
    assert [c.info.run_name.split()[0] for c in children] == [f"t{n:02d}" for n in range(1, 13)]
    for child in children:  # one value per epoch run, in order
        history = client.get_metric_history(child.info.run_id, "loss")
        assert [m.step for m in history] == list(range(1, int(child.data.tags["epochs_run"]) + 1))
    assert parents[0].data.tags["extended"] == "1" and parents[0].data.tags["budget_num_samples"] == "12"
    # The insight covers all twelve trials, written again at the extension's end.
    assert {"importance.x", "importance.y", "importance.kind"} <= set(parents[0].data.metrics)
    # A fresh searcher with the job's seed would propose the job's first trial again; the
    # extension's searcher knew the eight earlier trials and proposed none of that.
    fresh = build_search(_spec(WIDE))
    fresh.set_search_properties("loss", "min", trial_config(_spec(WIDE), {}))
    first_fresh = fresh.suggest("fresh")
    new = [c for c in children if c.data.tags["ray_run"].endswith("-x1")]
    assert len(new) == 4
    assert all(abs(float(c.data.params["x"]) - first_fresh["x"]) > 1e-9 for c in new)

    warm = run_cli(str(narrow_file), "--tracking-uri", store_uri, cwd=tmp_path, timeout=300)
    assert_ok(warm)
    recorded = [
        {k: c.data.params[k] for k in ("x", "y", "kind")} | {"status": c.data.tags["trial_status"]} for c in children
    ]
    fits = sum(
        r["status"] in ("completed", "early_stopped")
        and r["kind"] == "b"
        and 0 <= float(r["x"]) <= 1
        and 0 <= float(r["y"]) <= 1
        for r in recorded
    )
    skipped = sum(r["status"] in ("completed", "early_stopped") for r in recorded) - fits
    line = (
        f"note: warm start from 1 earlier jobs: {fits} trials seed the searcher, {skipped} skipped "
        "(they do not fit this spec's space or fixed values)"
    )
    assert line in warm.stdout.splitlines(), warm.stdout[-3000:]
    (narrow_parent,), _ = job_runs(client, "bowl-narrow")
    assert narrow_parent.data.tags["warm_start_parent_runs"] == parents[0].info.run_id
    assert narrow_parent.data.tags["warm_start_skipped"] == str(skipped)


class _Run:
    def __init__(self, tags, run_id="parent", experiment_id="1", status="FINISHED"):
        self.data = type("Data", (), {"tags": tags, "params": {}})()
        self.info = type("Info", (), {"run_id": run_id, "experiment_id": experiment_id, "status": status})()


class _Client:
    """Answers `child_runs` with `trials` trial runs and one reseeded run, which never counts."""

    def __init__(self, trials):
        self.runs = [_Run({"trial_id": f"t{n}", "trial_status": "completed"}, f"r{n}") for n in range(trials)]
        self.runs.append(_Run({"trial_id": "x", "trial_status": "reseed"}, "rx"))

    def search_runs(self, *args, **kwargs):
        return self.runs


def _finished(spec, trials, **tags):
    from tuning_platform.execution.resume import budget_tags
    from tuning_platform.records import RUN_NAME_TAG, SETTINGS_HASH_TAG, STORAGE_TAG

    all_tags = {RUN_NAME_TAG: "bowl-1", STORAGE_TAG: "/r", SETTINGS_HASH_TAG: settings_fingerprint(spec)}
    return _Client(trials), _Run({**all_tags, **budget_tags(spec), **tags})


def test_an_extension_runs_what_the_budget_adds():
    from tuning_platform.execution.resume import _extension

    # A time budget cut the job at 5 of 8 trials; twice the time runs the other 3 with 60 s more.
    timed = _spec(WIDE, {"budget.time_s": 60})
    client, run = _finished(timed, trials=5)
    target = _extension(client, run, _spec(WIDE, {"budget.time_s": 120}), "spec.yaml")
    assert (target.extend_samples, target.extend_time_s, target.run_name) == (3, 60.0, "bowl-1-x1")
    # More samples on a job without a time budget; a second extension is named after the first.
    client, run = _finished(_spec(WIDE), trials=8, extended="1", ray_run_name="bowl-1-x1")
    target = _extension(client, run, _spec(WIDE, {"search.num_samples": 12}), "spec.yaml")
    assert (target.extend_samples, target.extend_time_s, target.run_name) == (4, None, "bowl-1-x2")
    with pytest.raises(SpecError, match="has finished its 8 trials; to extend it, raise search.num_samples above 8"):
        _extension(client, run, _spec(WIDE), "spec.yaml")
