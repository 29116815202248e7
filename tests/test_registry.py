"""The champion rule on a real SQLite registry, and what travels with a registered model."""

from __future__ import annotations

import threading

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import ROOT
from tuning_platform.registry.champion import CHAMPION_ALIAS, data_fingerprint, settle_champion
from tuning_platform.registry.packaging import code_paths, code_requirements

NAME = "reg-model"


@pytest.fixture
def client(store_uri):
    client = MlflowClient(store_uri)
    client.create_registered_model(NAME)
    return client


def _version(client: MlflowClient, value: float, data: str = "d1", metric: str = "val_accuracy") -> str:
    tags = {"metric": metric, "metric_value": repr(value), "mode": "max", "data_fingerprint": data}
    return str(client.create_model_version(NAME, source="file:///nowhere/model", tags=tags).version)


def _champion(client: MlflowClient) -> str:
    return str(client.get_model_version_by_alias(NAME, CHAMPION_ALIAS).version)


def test_champion_moves_only_to_a_better_comparable_version(client):
    _version(client, 0.90)
    assert settle_champion(client, NAME) == "1"
    _version(client, 0.80)  # a worse job registers a version, not the champion
    assert settle_champion(client, NAME) == "1"
    _version(client, 0.99, data="other-data")  # better, but on other data: never compared
    assert settle_champion(client, NAME) == "1"
    _version(client, 0.99, metric="val_loss")  # another metric: never compared
    assert settle_champion(client, NAME) == "1"
    _version(client, 0.95)
    assert settle_champion(client, NAME) == "5" == _champion(client)


def test_a_champion_from_before_fingerprints_gives_way_to_the_newest_fingerprinted_version(client):
    client.create_model_version(NAME, source="file:///nowhere/model", tags={"metric": "val_accuracy"})
    client.set_registered_model_alias(NAME, CHAMPION_ALIAS, "1")
    _version(client, 0.5)
    assert settle_champion(client, NAME) == "2"


def test_jobs_finishing_together_leave_the_best_version_champion(client):
    """Each job registers, then settles; however their reads and writes interleave, the last
    write saw every version."""
    values = [0.91, 0.97, 0.93, 0.95, 0.92, 0.96]
    start = threading.Barrier(len(values))
    errors: list[BaseException] = []

    def job(value: float) -> None:
        start.wait()
        try:
            _version(client, value)
            settle_champion(client, NAME)
        except BaseException as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=job, args=(value,)) for value in values]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    best = max(client.search_model_versions(f"name = '{NAME}'"), key=lambda v: float(v.tags["metric_value"]))
    assert best.tags["metric_value"] == "0.97"
    assert _champion(client) == str(best.version)


def test_data_fingerprint_follows_the_data_block_and_the_files_it_names(tmp_path):
    table = tmp_path / "table.csv"
    table.write_text("a,b\n1,2\n")
    block = {"dataset": "csv", "path": str(table), "target": "b"}
    first = data_fingerprint(block)
    assert data_fingerprint(dict(block)) == first
    assert data_fingerprint({**block, "smoke": True}) != first
    table.write_text("a,b\n1,3\n")  # same name, other content
    assert data_fingerprint(block) != first


def test_requirements_are_what_the_model_code_imports_when_loaded(tmp_path):
    import trainables

    user_module = tmp_path / "mymodule.py"
    user_module.write_text("import yaml\nimport json\n\ndef train(config):\n    import ray\n")
    paths = code_paths(trainables.cnn if hasattr(trainables, "cnn") else __import__("trainables.cnn").cnn)
    assert paths == [str(ROOT / "trainables")]
    names = {req.split("==")[0].lower() for req in code_requirements([*paths, str(user_module)])}
    # torch, numpy, pandas, scikit-learn and pydantic are imported at load; Ray and MLflow only
    # inside functions that serving never calls; json is the standard library's.
    assert {"torch", "numpy", "pandas", "scikit-learn", "pydantic", "pyyaml"} <= names
    assert not names & {"ray", "mlflow", "json", "trainables", "mymodule"}
    assert all("==" in req and "+" not in req for req in code_requirements(paths))


def test_requirements_found_ahead_are_the_ones_found_at_registration_and_taken_once(tmp_path, monkeypatch):
    """A job that will register starts finding its model's requirements at its start; the
    registration gets the same list, and MLflow's own map for its check of them is built by
    then (the name `_compat/mlflow.requirement_checks_warmed` relies on)."""
    from mlflow.utils import requirements_utils

    from tuning_platform.registry import packaging

    user_module = tmp_path / "ahead_module.py"
    user_module.write_text("import yaml\n\ndef train(config):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = __import__("ahead_module")
    paths = code_paths(module)
    monkeypatch.setattr(requirements_utils, "_MODULES_TO_PACKAGES", None)
    packaging.requirements_ahead(module)
    ahead = packaging._AHEAD[tuple(paths)]
    assert ahead.result(timeout=60) == packaging._requirements_of(paths)
    assert requirements_utils._MODULES_TO_PACKAGES and "yaml" in requirements_utils._MODULES_TO_PACKAGES
    found: list[list[str]] = []
    monkeypatch.setattr(packaging, "_requirements_of", lambda p: found.append(p) or ["found-here==1"])
    assert code_requirements(paths) == ahead.result()  # taken from the thread, not found again
    assert found == [] and tuple(paths) not in packaging._AHEAD
    assert code_requirements(paths) == ["found-here==1"]  # a second registration finds them itself


def test_requirements_that_failed_ahead_are_found_at_registration(monkeypatch):
    from tuning_platform.registry import packaging

    def fails() -> None:
        raise OSError("a distribution's file list could not be read")

    monkeypatch.setattr(packaging, "requirement_checks_warmed", fails)
    import trainables.mlp

    paths = code_paths(trainables.mlp)
    packaging.requirements_ahead(trainables.mlp)
    with pytest.raises(OSError):
        packaging._AHEAD[tuple(paths)].result(timeout=60)
    assert {"torch", "pandas"} <= {req.split("==")[0].lower() for req in code_requirements(paths)}


def test_a_refused_alias_is_one_clear_error_not_a_retry_for_ever(client):
    """Only the race of two first settings of the alias is read again and retried; a refusal
    (a user who may register versions but not set aliases) ends the registration at once."""
    from mlflow.exceptions import MlflowException

    from tuning_platform.errors import JobError

    _version(client, 0.9)
    calls = []

    def refuse(*args, **kwargs):
        calls.append(1)
        if len(calls) > 20:  # what a retry for ever would do: stop it here
            raise RuntimeError("set_registered_model_alias was retried 20 times")
        raise MlflowException("User 'bob' cannot edit registered model", error_code="PERMISSION_DENIED")

    client.set_registered_model_alias = refuse
    with pytest.raises(JobError, match="champion alias of reg-model could not be set: User 'bob' cannot edit"):
        settle_champion(client, NAME)
    assert len(calls) == 1


def test_a_champion_that_never_settles_gives_up_after_a_bounded_number_of_rounds(client, monkeypatch):
    """Another job that registers a version in every round (a stuck loop of jobs, or a registry
    that answers differently each read): the job gives up with one line, not a loop for ever."""
    from tuning_platform.errors import JobError
    from tuning_platform.registry import champion

    monkeypatch.setattr(champion, "SETTLE_ROUNDS", 5)
    _version(client, 0.9)
    search = client.search_model_versions
    reads = []

    def growing(*args, **kwargs):
        reads.append(1)
        if len(reads) > 50:
            raise RuntimeError("read the versions 50 times")
        found = search(*args, **kwargs)
        _version(client, 0.5)  # meanwhile another job registered one
        return found

    client.search_model_versions = growing
    with pytest.raises(JobError, match="did not settle in 5 rounds"):
        settle_champion(client, NAME)
