"""The registered table models of `mlp` and `fraud` take a table in whatever dtypes it comes:
the int64 columns `pd.read_csv` gives whole numbers, nullable `Int64`, `boolean`, pandas'
`string` and `category`, loaded from the registry as a user loads the champion, and JSON with
integer numbers as `mlflow models serve` parses it. Each gives the predictions the same values
give as floats and objects.

One tiny model per trainable (an epoch on 300 rows), logged once for the module through the
registry's own `_log_model`, so the signature is the one a tuning job registers."""

from __future__ import annotations

import json
import subprocess
import sys
import types
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.models import convert_input_example_to_serving_input
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service.utils import _use_tracking_uri

from tests.helpers import cli_env, new_store
from tests.servers import free_port, stop_group, wait_for_http
from trainables import fraud, mlp
from trainables.loop import make_optimizer, shuffled_batches, train_one_epoch
from tuning_platform.registry.champion import CHAMPION_ALIAS
from tuning_platform.registry.model import _log_model
from tuning_platform.registry.packaging import code_paths, code_requirements

TARGET = "income"
# Whole numbers as UCI Adult has them (read as int64), one with gaps (read as float64), a
# fraction, text with gaps, and a boolean.
INTEGERS = ["age", "hours-per-week", "capital-gain"]
NUMBERS = [*INTEGERS, "education-num", "ratio"]
TEXT = ["workclass", "sex"]
FLAG = "married"
MODULES = {"mlp": mlp, "fraud": fraud}


def adult_like(rows: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "age": rng.integers(17, 90, rows),
            "hours-per-week": rng.integers(1, 99, rows),
            "capital-gain": rng.choice([0, 0, 0, 2174, 14084], rows),
            "education-num": rng.integers(1, 16, rows).astype(float),
            "ratio": rng.random(rows).round(3),
            "workclass": rng.choice(["Private", "Self-emp", "State-gov"], rows).astype(object),
            "sex": rng.choice(["Male", "Female"], rows),
            FLAG: rng.choice([True, False], rows),
        }
    )
    rich = (frame["age"] > 40) & (frame["hours-per-week"] > 45) | (frame["capital-gain"] > 10_000)
    frame[TARGET] = np.where(rich, ">50K", "<=50K")
    frame.loc[frame.index % 7 == 0, "education-num"] = np.nan
    frame.loc[frame.index % 5 == 0, "workclass"] = None
    return frame


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("adult") / "adult.csv"
    adult_like().to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def champions(table, tmp_path_factory) -> dict[str, tuple[str, mlflow.pyfunc.PyFuncModel]]:
    """name -> (tracking URI, the `champion` of each trainable's registered model, loaded from
    `models:/NAME@champion`)."""
    folder = tmp_path_factory.mktemp("mlflow")
    uri = new_store(folder)
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("tables", artifact_location=str(folder / "artifacts")))
    tracker = types.SimpleNamespace(tracking_uri=uri, parent_run_id=run.info.run_id)
    loaded = {}
    for name, module in MODULES.items():
        data = module.load_data({"dataset": "csv", "path": str(table), "target": TARGET})
        torch.manual_seed(0)
        config = {"hidden_size": 8, "lr": 1e-2, "optimizer": "adam"}
        model = module.build_model(config, data.info)
        batches = shuffled_batches(data.x_train, data.y_train, 64, torch.Generator().manual_seed(0))
        train_one_epoch(
            model, make_optimizer(model.parameters(), config), module.TASK.loss_fn(config), batches, torch.device("cpu")
        )
        code = code_paths(module)
        served = module.serving_model(model, data.info)
        version = _log_model(tracker, served, module.TASK.input_example(data), name, code, code_requirements(code))
        client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
        with _use_tracking_uri(uri):
            loaded[name] = (uri, mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION_ALIAS}"))
    return loaded


def read(table: Path) -> pd.DataFrame:
    """What the issue's user passes: `pd.read_csv(FILE).drop(columns=[TARGET])`."""
    return pd.read_csv(table).drop(columns=[TARGET])


def plain(frame: pd.DataFrame) -> pd.DataFrame:
    """The same values as floats (a gap NaN) and Python objects (a gap None), the dtypes a
    `double`/`string` signature takes."""
    out = frame.astype({c: np.float64 for c in NUMBERS})
    for column in [*TEXT, FLAG]:
        out[column] = pd.Series([None if pd.isna(v) else v for v in frame[column]], index=frame.index, dtype=object)
    return out


# The file's values in other dtypes than `plain`'s: as `pd.read_csv` gives them (int64 numbers,
# a numpy bool, pandas 3's text dtype), or `plain` with one kind of column changed.
VARIANTS = {
    "read_csv": lambda raw: raw,
    "nullable_Int64": lambda raw: plain(raw).astype({c: "Int64" for c in [*INTEGERS, "education-num"]}),
    "boolean": lambda raw: plain(raw).astype({FLAG: "boolean"}),
    "string": lambda raw: plain(raw).astype({c: "string" for c in TEXT}),
    "category": lambda raw: plain(raw).astype({c: "category" for c in [*TEXT, FLAG]}),
}


def test_the_file_read_by_pandas_has_the_dtypes_the_model_must_take(table):
    frame = read(table)
    assert {c: str(frame[c].dtype) for c in NUMBERS} == {
        "age": "int64",
        "hours-per-week": "int64",
        "capital-gain": "int64",
        "education-num": "float64",  # whole numbers with gaps
        "ratio": "float64",
    }
    assert frame[FLAG].dtype == bool and frame["workclass"].isna().any()
    changed = {
        "nullable_Int64": ("education-num", "Int64"),
        "boolean": (FLAG, "boolean"),
        "string": ("workclass", "string"),
        "category": (FLAG, "category"),
    }
    for variant, (column, dtype) in changed.items():
        values = VARIANTS[variant](frame)[column]
        assert str(values.dtype) == dtype and (column == FLAG or values.isna().any()), variant


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("name", sorted(MODULES))
def test_the_registered_table_model_takes_each_dtype_and_predicts_as_for_floats(champions, table, name, variant):
    _, model = champions[name]
    frame = read(table)
    expected = model.predict(plain(frame))
    assert expected.notna().all().all() and len(expected) == len(frame)
    predictions = model.predict(VARIANTS[variant](frame))
    pd.testing.assert_frame_equal(predictions, expected)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_the_signature_names_every_feature_column_and_requires_none(champions, table, name):
    _, model = champions[name]
    inputs = model.metadata.signature.inputs
    assert inputs.input_names() == [*NUMBERS, *TEXT, FLAG]
    assert inputs.required_input_names() == []
    gaps = pd.DataFrame({c: [None] for c in inputs.input_names()}, dtype=object)  # a gap in every column
    assert model.predict(gaps).notna().all().all()


def json_payloads(frame: pd.DataFrame) -> dict[str, str]:
    """The frame as a client sends it: whole numbers as JSON integers, gaps as null, booleans
    as true/false; in both of the scoring server's table formats."""
    split = json.loads(frame.to_json(orient="split", index=False))
    assert isinstance(split["data"][0][split["columns"].index("age")], int)
    records = json.loads(frame.to_json(orient="records"))
    return {
        "dataframe_split": json.dumps({"dataframe_split": split}),
        "dataframe_records": json.dumps({"dataframe_records": records}),
    }


@pytest.mark.parametrize("name", sorted(MODULES))
def test_json_with_integer_numbers_is_scored_as_the_scoring_server_scores_it(champions, table, name):
    """`mlflow models serve`'s /invocations, called in this process: the JSON parsed with the
    model's schema, then predicted."""
    from mlflow.pyfunc import scoring_server

    _, model = champions[name]
    frame = read(table)
    expected = model.predict(plain(frame))
    for form, body in json_payloads(frame).items():
        answer = scoring_server.invocations(body, "application/json", model, model.metadata.get_input_schema())
        assert answer.status == 200, (form, answer.response[-500:])
        predictions = pd.DataFrame(json.loads(answer.response)["predictions"])
        pd.testing.assert_frame_equal(predictions, expected.reset_index(drop=True), check_exact=False)
    # And the serving example MLflow stored with the model (floats, text and gaps) still.
    example = convert_input_example_to_serving_input(model.input_example)
    answer = scoring_server.invocations(example, "application/json", model, model.metadata.get_input_schema())
    assert answer.status == 200 and len(json.loads(answer.response)["predictions"]) == len(model.input_example)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODULES))
def test_the_served_champion_takes_json_with_integer_numbers(champions, table, name, tmp_path):
    """`mlflow models serve -m models:/NAME@champion --env-manager local` over HTTP."""
    uri, model = champions[name]
    frame = read(table).iloc[:20]
    expected = model.predict(plain(frame))
    port = free_port()
    log = tmp_path / "serve.log"
    command = ["models", "serve", "-m", f"models:/{name}@{CHAMPION_ALIAS}", "--env-manager", "local"]
    with log.open("w") as out:
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), *command, "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path,
            env={**cli_env(), "MLFLOW_TRACKING_URI": uri},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", server, log, timeout=180)
        for form, body in json_payloads(frame).items():
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/invocations", body.encode(), {"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=60) as answer:
                assert answer.status == 200, form
                predictions = pd.DataFrame(json.loads(answer.read())["predictions"])
            pd.testing.assert_frame_equal(predictions, expected.reset_index(drop=True), check_exact=False)
    finally:
        stop_group(server)
