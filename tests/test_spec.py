"""Spec schema: valid specs become the right Tune domains; invalid ones name the key path."""

from __future__ import annotations

import copy

import pytest
from ray.tune.search.sample import Categorical, Float, Integer, LogUniform

from tests.helpers import SPECS
from tuning_platform.spec import SpecError, load_spec, param_space, parse_yaml, smoke_overrides, validate_spec

BASE = {
    "name": "job",
    "trainable": "mlp",
    "metric": "val_accuracy",
    "mode": "max",
    "search": {
        "space": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-1}},
        "fixed": {"epochs": 3},
    },
}


def spec_with(**changes):
    raw = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        node = raw
        parts = dotted.split("__")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return raw


@pytest.mark.parametrize(
    "domain, kind, lower, upper, log",
    [
        ({"type": "uniform", "low": 0.0, "high": 0.5}, Float, 0.0, 0.5, False),
        ({"type": "loguniform", "low": "1e-4", "high": 1e-1}, Float, 1e-4, 1e-1, True),
        ({"type": "int", "low": 8, "high": 64}, Integer, 8, 65, False),  # Tune's upper is exclusive
        ({"type": "int", "low": 8, "high": 64, "log": True}, Integer, 8, 65, True),
    ],
)
def test_numeric_domains_convert_to_tune(domain, kind, lower, upper, log):
    spec = validate_spec(spec_with(search__space={"p": domain}), "f.yaml")
    tune_domain = param_space(spec, {})["p"]
    assert isinstance(tune_domain, kind)
    assert (tune_domain.lower, tune_domain.upper) == (pytest.approx(lower), upper)
    assert isinstance(tune_domain.get_sampler(), LogUniform) == log


def test_choice_fixed_and_data_land_in_param_space():
    spec = validate_spec(
        spec_with(
            search__space={"optimizer": {"type": "choice", "values": ["sgd", "adam"]}},
            search__fixed={"epochs": 4, "hidden": 32},
        ),
        "f.yaml",
    )
    space = param_space(spec, {"dataset": "breast_cancer"})
    assert isinstance(space["optimizer"], Categorical) and space["optimizer"].categories == ["sgd", "adam"]
    assert space["epochs"] == 4 and space["hidden"] == 32
    assert space["data"] == {"dataset": "breast_cancer"}


def test_int_domain_samples_both_ends_inclusive():
    spec = validate_spec(spec_with(search__space={"n": {"type": "int", "low": 1, "high": 2}}), "f.yaml")
    domain = param_space(spec, {})["n"]
    assert set(domain.sample(size=200)) == {1, 2}


def test_yaml_reads_exponent_without_dot_as_number():
    assert parse_yaml("a: 1e-4\nb: -2E3\nc: 1.5\nd: '1e-4'") == {"a": 1e-4, "b": -2000.0, "c": 1.5, "d": "1e-4"}


def test_defaults_are_sane():
    spec = validate_spec(BASE, "f.yaml")
    assert spec.search.algorithm == "optuna" and spec.scheduler.type == "asha"
    assert spec.max_t == 3 and spec.registered_model_name == "job"
    assert spec.resources.cpu == 1 and spec.resources.gpu == 0 and spec.failure.max_failures == 1


# Every spec shipped in search_spaces/: one per built-in trainable, and any added later.
SHIPPED = sorted(path.name for path in SPECS.glob("*.yaml"))


def test_a_spec_is_shipped_for_each_built_in_trainable():
    from trainables import TRAINABLES

    assert sorted(TRAINABLES) == ["cnn", "fraud", "mlp", "recommender"]
    assert {f"{name}.yaml" for name in TRAINABLES} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_specs_are_valid(name):
    """Valid as a job reads them: the schema, then the trainable they name, which must report
    their metric and take their data block."""
    from tuning_platform.spec.trainable import check_against_trainable, resolve_trainable

    spec, _, _ = load_spec(SPECS / name)
    check_against_trainable(spec, resolve_trainable(spec, name), name)
    assert spec.search.algorithm == "optuna" and spec.scheduler.type == "asha"
    assert {"lr", "batch_size", "optimizer"} <= set(spec.search.space)


@pytest.mark.parametrize(
    "changes, path, fragment",
    [
        ({"namee": "x"}, "namee", "did you mean 'name'?"),
        ({"search__spce": {}}, "search.spce", "did you mean 'space'?"),
        ({"search__space": {"lr": {"type": "loguniform", "low": 0, "high": 1}}}, "search.space.lr.low", "> 0"),
        ({"search__space": {"lr": {"type": "uniform", "low": 1, "high": 1}}}, "search.space.lr.high", "> low"),
        (
            {"search__space": {"lr": {"type": "uniform", "lo": 1, "high": 2}}},
            "search.space.lr.lo",
            "did you mean 'low'?",
        ),
        ({"search__space": {"lr": {"type": "normal", "low": 1, "high": 2}}}, "search.space.lr.type", "one of"),
        ({"search__space": {"o": {"type": "choice", "values": []}}}, "search.space.o.values", "at least 1"),
        ({"search__space": {"o": {"type": "choice", "values": [[1, 2]]}}}, "search.space.o.values", "optuna"),
        ({"search__space": {"n": {"type": "int", "low": 0, "high": 5, "log": True}}}, "search.space.n.log", ">= 1"),
        ({"mode": "maximize"}, "mode", "'max' or 'min'"),
        ({"search__num_samples": 0}, "search.num_samples", "greater than or equal to 1"),
        ({"search__num_samples": "many"}, "search.num_samples", "integer"),
        ({"search__algorithm": "bayes"}, "search.algorithm", "'optuna', 'random' or 'grid'"),
        ({"search__fixed": {}}, "search.fixed.epochs", "required"),
        ({"search__fixed": {"epochs": 0}}, "search.fixed.epochs", ">= 1"),
        ({"search__fixed": {"epochs": 3, "lr": 0.1}}, "search.fixed.lr", "also in search.space"),
        ({"scheduler__grace_period": 5}, "scheduler.grace_period", "<= the epochs"),
        ({"scheduler__type": "hyperband"}, "scheduler.type", "'asha', 'fifo' or 'pbt'"),
        ({"resources__cpu": 0}, "resources.cpu", "greater than 0"),
        ({"resources__gpu": -1}, "resources.gpu", "greater than or equal to 0"),
        ({"resources__gpu": 1.5}, "resources.gpu", "whole number"),
        ({"resources__workers": 0}, "resources.workers", "greater than or equal to 1"),
        ({"resources__workers": 2, "resources__gpu": 2}, "resources.gpu", "per worker and must be <= 1"),
        ({"resources__workers": 2, "resources__gpu": 0.5}, "resources.gpu", "each worker needs a whole GPU"),
        ({"name": "bad name!"}, "name", "pattern"),
        ({"failure__max_failures": -1}, "failure.max_failures", "greater than or equal to 0"),
        ({"budget__time_s": 0}, "budget.time_s", "greater than 0"),
    ],
)
def test_invalid_specs_name_the_key_path(changes, path, fragment):
    with pytest.raises(SpecError) as caught:
        validate_spec(spec_with(**changes), "f.yaml")
    err = caught.value
    assert err.path == path, str(err)
    assert fragment in err.rule, str(err)
    text = str(err)
    assert text.startswith(f"f.yaml: {path}: ") and "\n" not in text and "(got " in text


def test_missing_required_key():
    raw = copy.deepcopy(BASE)
    del raw["metric"]
    with pytest.raises(SpecError, match=r"^f.yaml: metric: required key is missing$"):
        validate_spec(raw, "f.yaml")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("a: [1, 2\n", "not valid YAML at line"),
        ("- 1\n- 2\n", "top level must be a mapping"),
        ("42\n", "top level must be a mapping"),
    ],
)
def test_unreadable_files(tmp_path, text, fragment):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=fragment):
        load_spec(path)


def test_missing_file(tmp_path):
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "nope.yaml")


def test_overrides_are_parsed_as_yaml_then_validated():
    spec, raw, _ = load_spec(
        SPECS / "mlp.yaml", ["search.num_samples=8", "search.space.lr.low=1e-5", "resources.gpu=0.25"]
    )
    assert spec.search.num_samples == 8 and raw["search"]["num_samples"] == 8
    assert spec.search.space["lr"].low == pytest.approx(1e-5)
    assert spec.resources.gpu == 0.25


@pytest.mark.parametrize(
    "override, path, fragment",
    [
        ("search.num_samples", "--set", "KEY=VALUE"),
        ("search.num_sample=3", "search.num_sample", "did you mean 'num_samples'?"),
        ("search.num_samples=abc", "search.num_samples", "integer"),
        ("name.first=x", "--set name.first", "not a mapping"),
    ],
)
def test_bad_overrides(override, path, fragment):
    with pytest.raises(SpecError) as caught:
        load_spec(SPECS / "mlp.yaml", [override])
    assert caught.value.path == path and fragment in caught.value.rule


def test_smoke_overrides_shrink_any_spec():
    spec, _, _ = load_spec(SPECS / "cnn.yaml")
    smoke, _, _ = load_spec(SPECS / "cnn.yaml", smoke_overrides(spec))
    assert smoke.search.num_samples <= 4 and smoke.epochs == 2 and smoke.data["smoke"] is True
    assert smoke.scheduler.grace_period <= smoke.max_t


def test_epochs_are_required_only_where_a_scheduler_needs_a_horizon():
    fifo = validate_spec(spec_with(search__fixed={}, scheduler={"type": "fifo"}), "s.yaml")
    assert fifo.epochs is None and fifo.max_t is None
    assert "search.fixed.epochs=2" not in smoke_overrides(fifo)
    asha = validate_spec(spec_with(search__fixed={}, scheduler={"type": "asha", "max_t": 5}), "s.yaml")
    assert asha.max_t == 5
    with pytest.raises(SpecError, match="required by the asha scheduler, which needs a horizon"):
        validate_spec(spec_with(search__fixed={}, scheduler={"type": "asha"}), "s.yaml")


def test_a_spec_can_be_a_mapping_with_overrides_as_values():
    spec, _, text = load_spec(BASE, {"search.num_samples": 8, "search.fixed.epochs": 2})
    assert spec.search.num_samples == 8 and spec.epochs == 2
    assert "trainable: mlp" in text
    with pytest.raises(SpecError, match=r"^<spec>: search.num_samples"):
        load_spec(BASE, {"search.num_samples": 0})
