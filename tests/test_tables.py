"""Tables in their real shape: CSV and Parquet files with categorical, boolean and text columns,
gaps, string targets and id columns, for `mlp` and `fraud`; their bad files; and the served
model that takes the raw rows (written by the tests, a few hundred rows each)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tests.helpers import SPECS, customers, write_spec
from trainables import fraud, mlp
from trainables.files import DataError
from trainables.tables import UNKNOWN, TableEncoding, TableInput, select_columns
from tuning_platform.cli import main

ROWS = 400  # customers()'s default


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "customers.csv"
    customers().to_csv(path, index=False)
    return path


def test_a_table_with_categories_and_gaps_is_encoded_from_the_training_rows(table):
    data = mlp.load_data({"dataset": "csv", "path": str(table), "target": "churned"})
    info = data.info
    assert info["classes"] == ["no", "yes"]
    assert info["feature_names"] == ["tenure", "monthly", "plan", "country", "autopay"]
    assert info["notes"] == [
        "note: data: column 'customer_id' has a different value in every row (an id?), so it is not used; "
        "name it in data.features to use it"
    ]
    encoding = TableEncoding.from_dict(info["table"])
    tenure, monthly = encoding.numeric
    assert tenure["indicator"] and not monthly["indicator"]  # only a column with gaps gets one
    plan, country, autopay = encoding.categorical
    assert plan["categories"] == ["basic", "plus", "pro", None] and plan["onehot"]  # the gap is a category
    assert autopay["categories"] == ["False", "True"]
    assert not country["onehot"] and encoding.embeddings == [(41, 13)]  # 40 countries and unknown
    # Numbers standardized with the training rows' statistics: mean 0 there, not elsewhere.
    assert abs(float(data.x_train[:, 0].mean())) < 1e-5
    assert abs(float(data.x_val[:, 0].mean())) > 1e-3
    assert data.x_train.shape[1] == 3 + 5 + 3 + 1  # tenure+indicator, monthly, plan, autopay, country code
    model = mlp.build_model({"hidden_size": 8}, info)
    assert isinstance(model[0], TableInput) and model[0].width == 11 + 13
    assert model(data.x_val).shape == (len(data.x_val), 2)


def test_unseen_categories_share_the_unknown_slot_and_gaps_are_filled():
    frame = customers()
    selection = select_columns(frame, "churned", drop=["customer_id"])
    encoding = TableEncoding.fit(frame, selection)
    rows = pd.DataFrame(
        {"tenure": [None], "monthly": [None], "plan": ["enterprise"], "country": ["atlantis"], "autopay": [None]}
    )
    x = encoding.transform(rows)
    assert np.isfinite(x).all()
    plan = encoding.categorical[0]
    assert encoding.slots(rows, plan)[0] == UNKNOWN
    assert encoding.slots(rows, encoding.categorical[1])[0] == UNKNOWN
    assert x[0, 1] == 1.0  # tenure's missing indicator
    # 7 and 7.0 and "7" are one category; True and "True" too.
    codes = pd.DataFrame({"v": [7, 7.0, "7", True, "True", None]})
    fitted = TableEncoding.fit(codes, select_columns(codes.assign(y=0), "y", categorical=["v"]))
    assert fitted.categorical[0]["categories"] == ["7", "True"]  # the gap is seen once: unknown
    assert fitted.slots(codes, fitted.categorical[0]).tolist() == [1, 1, 1, 2, 2, 0]


def test_features_drop_and_categorical_choose_the_columns(table):
    base = {"dataset": "csv", "path": str(table), "target": "churned"}
    only = mlp.load_data({**base, "features": ["customer_id", "tenure"]})
    assert only.info["feature_names"] == ["tenure", "customer_id"] and only.info["notes"] == []
    dropped = mlp.load_data({**base, "drop": ["country", "customer_id"]})
    assert "country" not in dropped.info["feature_names"] and dropped.info["notes"] == []
    coded = mlp.load_data({**base, "categorical": ["tenure"]})
    assert "tenure" in [c["name"] for c in coded.info["table"]["categorical"]]
    with pytest.raises(ValueError, match="features: .* has no column 'age'"):
        mlp.DataConfig.model_validate({**base, "features": ["age"]})


def test_parquet_reads_like_csv(table, tmp_path):
    parquet = tmp_path / "customers.parquet"
    pd.read_csv(table).to_parquet(parquet)
    from_csv = mlp.load_data({"dataset": "csv", "path": str(table), "target": "churned"})
    from_parquet = mlp.load_data({"dataset": "parquet", "path": str(parquet), "target": "churned"})
    assert torch.allclose(from_csv.x_train, from_parquet.x_train)
    assert from_csv.info["table"] == from_parquet.info["table"]


def test_the_fraud_detector_takes_a_transactions_table_with_categories(tmp_path):
    rng = np.random.default_rng(1)
    rows = 3_000
    frame = pd.DataFrame(
        {
            "amount": rng.lognormal(3, 1, rows),
            "merchant": rng.choice([f"m{i}" for i in range(60)], rows),
            "country": rng.choice(["DE", "FR", "US", None], rows),
            "channel": rng.choice(["web", "pos", "app"], rows),
        }
    )
    risky = (frame["channel"] == "web") & (frame["country"] == "US") & (rng.random(rows) < 0.3)
    frame["label"] = np.where(risky, "fraud", "ok")
    path = tmp_path / "transactions.csv"
    frame.to_csv(path, index=False)
    data = fraud.load_data({"dataset": "csv", "path": str(path), "target": "label"})
    assert data.info["positive"] == "fraud" and "the rarer one" in data.info["notes"][0]
    assert float(torch.cat([data.y_train, data.y_val, data.y_test]).sum()) == risky.sum()
    name, baseline = fraud.logistic_regression_baseline(data)  # one-hot over the embedded merchant too
    assert baseline["val_auprc"] > 0.15
    named = fraud.load_data({"dataset": "csv", "path": str(path), "target": "label", "positive": "ok"})
    assert named.info["positive"] == "ok" and named.info["notes"] == []
    served = fraud.serving_model(fraud.build_model({}, data.info), data.info)
    out = served(fraud.TASK.input_example(data))
    assert list(out.columns) == ["probability"] and out["probability"].between(0, 1).all()


CSV_FAULTS = [
    ("a,b,y\n1,2,x\n3,4,z\n5,6,7,8\n", "line 4: 4 fields where the first line has 3"),
    ("", "the file is empty"),
    ("a,b,y\n", "the table has no rows"),
]


@pytest.mark.parametrize("text, message", CSV_FAULTS)
def test_a_broken_csv_names_the_file_and_the_line(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises((DataError, ValueError), match=message):
        mlp.load_data({"dataset": "csv", "path": str(path), "target": "y"})


def test_a_stray_word_in_a_numeric_column_names_its_line_and_column(tmp_path):
    frame = customers()
    frame["tenure"] = frame["tenure"].astype(object)
    frame.loc[123, "tenure"] = "twelve"
    path = tmp_path / "customers.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(
        DataError, match=r"line 125, column 'tenure': 'twelve' is not a number, though 354 of its 355 values"
    ):
        mlp.load_data({"dataset": "csv", "path": str(path), "target": "churned"})
    # Read as a gap when the user says so.
    data = mlp.load_data({"dataset": "csv", "path": str(path), "target": "churned", "na_values": ["twelve"]})
    assert data.info["table"]["numeric"][0]["name"] == "tenure"


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f: f.assign(churned="yes"), "the target 'churned' has one class \\(yes\\); a classifier needs two"),
        (lambda f: f.assign(churned=f["monthly"]), "the target 'churned' has fractional values"),
    ],
)
def test_a_target_a_classifier_cannot_learn_is_named(tmp_path, change, message):
    path = tmp_path / "customers.csv"
    change(customers()).to_csv(path, index=False)
    with pytest.raises(DataError, match=message):
        mlp.load_data({"dataset": "csv", "path": str(path), "target": "churned"})


def test_a_missing_target_column_is_named_before_anything_is_read(table):
    for module in (mlp, fraud):
        with pytest.raises(ValueError, match=f"target: column 'label' is not in {table}"):
            module.DataConfig.model_validate({"dataset": "csv", "path": str(table), "target": "label"})


def test_rows_without_a_target_are_left_out_with_a_note(tmp_path):
    frame = customers()
    frame.loc[:9, "churned"] = None
    path = tmp_path / "customers.csv"
    frame.to_csv(path, index=False)
    data = mlp.load_data({"dataset": "csv", "path": str(path), "target": "churned"})
    assert len(data.x_train) + len(data.x_val) + len(data.x_test) == ROWS - 10
    assert data.info["notes"][0].startswith("note: data: 10 rows of ")


def test_a_bad_table_is_one_line_from_the_command_and_writes_nothing(tmp_path, monkeypatch, capsys):
    path = tmp_path / "customers.csv"
    path.write_text("tenure,plan,churned\n1,a,yes\n2,b,no\n3,c,yes,7\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    spec = write_spec(tmp_path, (SPECS / "mlp.yaml").read_text())
    code = main([str(spec), "--set", "data.dataset=csv", "--set", f"data.path={path}", "--set", "data.target=churned"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and lines == [f"error: {spec}: data: {path}: line 4: 4 fields where the first line has 3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["customers.csv", "spec.yaml"], "no store, no Ray results"
