"""The fraud detector's data, split, imbalance losses, baseline and served form."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainables import fraud
from trainables.loop import make_optimizer, shuffled_batches, train_one_epoch


def test_synthetic_transactions_look_like_the_credit_card_set():
    frame = fraud.generate_transactions(100_000, 0.005, seed=0)
    assert list(frame.columns) == [*fraud.FEATURES, "Class"]
    assert 0.004 < frame["Class"].mean() < 0.006
    assert frame["Time"].is_monotonic_increasing and frame["Time"].max() <= 2 * 86_400
    assert (frame["Amount"] > 0).all()
    assert frame.equals(fraud.generate_transactions(100_000, 0.005, seed=0))


def test_split_is_stratified_and_scaling_comes_from_training_rows_only():
    data = fraud.load_data({})
    assert float(data.y_train.mean()) == pytest.approx(float(data.y_val.mean()), rel=0.05)
    assert data.x_train.mean(dim=0).abs().max() < 1e-4
    assert data.x_train.std(dim=0, unbiased=False) == pytest.approx(torch.ones(len(fraud.FEATURES)), rel=1e-3)
    assert data.x_val.mean(dim=0).abs().max() > 1e-3
    train_rows = {tuple(r) for r in data.x_train[:, :3].tolist()}
    assert not any(tuple(r) in train_rows for r in data.x_val[:, :3].tolist())  # no row in both


def test_weighted_cross_entropy_weights_only_the_positives():
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0])
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0])
    plain = nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    loss = fraud.imbalance_loss({"loss": "bce", "pos_weight": 10.0})(logits, labels)
    assert float(loss) == pytest.approx(float((plain * torch.tensor([10.0, 1.0, 10.0, 1.0])).mean()))
    assert float(fraud.imbalance_loss({})(logits, labels)) == pytest.approx(float(plain.mean()))


def test_focal_loss_by_formula_and_equal_to_cross_entropy_at_gamma_zero():
    logits = torch.tensor([3.0, -3.0, 0.0])
    labels = torch.tensor([1.0, 1.0, 0.0])
    p_true = torch.tensor([torch.sigmoid(torch.tensor(3.0)), torch.sigmoid(torch.tensor(-3.0)), 0.5])
    expected = (-((1 - p_true) ** 2) * torch.log(p_true) * torch.tensor([4.0, 4.0, 1.0])).mean()
    focal = fraud.imbalance_loss({"loss": "focal", "gamma": 2.0, "pos_weight": 4.0})
    assert float(focal(logits, labels)) == pytest.approx(float(expected), rel=1e-5)
    at_zero = fraud.imbalance_loss({"loss": "focal", "gamma": 0.0, "pos_weight": 4.0})
    weighted = fraud.imbalance_loss({"loss": "bce", "pos_weight": 4.0})
    assert float(at_zero(logits, labels)) == pytest.approx(float(weighted(logits, labels)))


def test_unknown_loss_is_an_error():
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        fraud.imbalance_loss({"loss": "hinge"})


def test_the_credit_card_csv_loads_from_a_local_path(tmp_path):
    frame = fraud.generate_transactions(5_000, 0.02, seed=3)
    path = tmp_path / "creditcard.csv"
    frame.to_csv(path, index=False)
    data = fraud.load_data({"dataset": "csv", "path": str(path)})
    assert data.info["feature_names"] == fraud.FEATURES and data.info["positive"] == "1"
    assert len(data.x_train) + len(data.x_val) + len(data.x_test) == 5_000
    assert int(data.y_train.sum() + data.y_val.sum() + data.y_test.sum()) == int(frame["Class"].sum())
    frame.drop(columns=["Class"]).to_csv(path, index=False)
    with pytest.raises(ValueError, match="target: column 'Class' is not in"):
        fraud.DataConfig.model_validate({"dataset": "csv", "path": str(path)})


def test_served_model_names_the_feature_columns():
    data = fraud.load_data({"smoke": True})
    example = fraud.TASK.input_example(data)
    assert list(example.columns) == fraud.FEATURES
    served = fraud.serving_model(fraud.build_model({}, data.info), data.info)
    probabilities = served(example)
    assert list(probabilities.columns) == ["probability"] and len(probabilities) == len(example)


@pytest.mark.slow
def test_mlp_beats_the_logistic_regression_baseline_on_the_default_data():
    """The non-linear part of the fraud pattern is there to be found: one reasonable MLP
    configuration clearly beats the linear baseline on average precision."""
    data = fraud.load_data({})
    _, baseline = fraud.logistic_regression_baseline(data)
    assert baseline["val_auprc"] > 5 * data.info["positive_rate"]  # the linear part is real
    torch.manual_seed(0)
    config = {"lr": 3e-3, "optimizer": "adam", "hidden_size": 128, "batch_size": 512, "pos_weight": 5.0}
    model = fraud.build_model(config, data.info)
    optimizer = make_optimizer(model.parameters(), config)
    loss_fn = fraud.imbalance_loss(config)
    best = 0.0
    for epoch in range(8):
        batches = shuffled_batches(data.x_train, data.y_train, 512, torch.Generator().manual_seed(epoch))
        train_one_epoch(model, optimizer, loss_fn, batches, torch.device("cpu"))
        best = max(best, fraud.evaluate(model, data, loss_fn, torch.device("cpu"))["val_auprc"])
    assert best > 1.5 * baseline["val_auprc"]
