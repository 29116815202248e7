"""Trainable helpers without Ray: data splits, shapes, learning, checkpoints, optimizers."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from trainables import TRAINABLES, builtin
from trainables.loop import (
    load_state,
    make_optimizer,
    predict,
    rebuild_model,
    save_state,
    shuffled_batches,
    train_one_epoch,
)

CPU = torch.device("cpu")
CONFIGS = {
    "cnn": {"lr": 3e-3, "optimizer": "adam", "channels": 8, "dropout": 0.1, "batch_size": 64, "epochs": 2},
    "mlp": {"lr": 3e-3, "optimizer": "adam", "hidden_size": 32, "num_layers": 2, "batch_size": 32, "epochs": 2},
}


@pytest.fixture(scope="module", params=sorted(TRAINABLES))
def trainable(request):
    module = builtin(request.param)
    return request.param, module, module.load_data({"smoke": True})


def test_data_split_is_fixed_and_shapes_match(trainable):
    name, module, data = trainable
    again = module.load_data({"smoke": True})
    assert torch.equal(data.x_train, again.x_train) and torch.equal(data.y_val, again.y_val)
    assert len(data.x_train) == len(data.y_train) > len(data.x_val) == len(data.y_val) > 0
    model = module.build_model(CONFIGS[name], data.info)
    logits = predict(model, data.x_val, CPU)
    assert logits.shape == (len(data.x_val), data.info["num_classes"])


def test_one_epoch_lowers_the_loss(trainable):
    name, module, data = trainable
    torch.manual_seed(0)
    model = module.build_model(CONFIGS[name], data.info)
    loss_fn = module.TASK.loss_fn(CONFIGS[name])
    before = module.TASK.evaluate(model, data, loss_fn, CPU)["val_loss"]
    optimizer = make_optimizer(model.parameters(), CONFIGS[name])
    for epoch in range(3):
        batches = shuffled_batches(data.x_train, data.y_train, 32, torch.Generator().manual_seed(epoch))
        train_one_epoch(model, optimizer, loss_fn, batches, CPU)
    after = module.TASK.evaluate(model, data, loss_fn, CPU)
    assert after["val_loss"] < before
    assert after["val_accuracy"] > 0.8
    assert set(module.METRICS) >= set(after) | {"train_loss", "epoch"}


def test_checkpoint_round_trip_rebuilds_the_same_model(trainable, tmp_path):
    name, module, data = trainable
    model = module.build_model(CONFIGS[name], data.info)
    optimizer = make_optimizer(model.parameters(), CONFIGS[name])
    train_one_epoch(
        model,
        optimizer,
        module.TASK.loss_fn({}),
        shuffled_batches(data.x_train, data.y_train, 32, torch.Generator().manual_seed(0)),
        CPU,
    )
    save_state(str(tmp_path), model, optimizer, 1, CONFIGS[name], data.info)
    rebuilt, state = rebuild_model(module.TASK, str(tmp_path))
    assert state["epoch"] == 1 and load_state(str(tmp_path))["config"] == CONFIGS[name]
    assert torch.allclose(predict(model, data.x_val, CPU), predict(rebuilt, data.x_val, CPU))
    fresh = make_optimizer(rebuilt.parameters(), CONFIGS[name])
    fresh.load_state_dict(state["optimizer"])  # a resumed trial continues its optimizer too


def test_served_model_gives_probabilities_on_raw_input(trainable):
    name, module, data = trainable
    model = module.TASK.serving_model(module.build_model(CONFIGS[name], data.info))
    example = module.TASK.input_example(data)
    rows = example.to_numpy(dtype="float32") if isinstance(example, pd.DataFrame) else example
    probabilities = model(torch.tensor(rows))
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(len(rows)), atol=1e-5)


@pytest.mark.parametrize(
    "name, cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)]
)
def test_optimizer_factory(name, cls):
    params = [torch.nn.Parameter(torch.zeros(2))]
    optimizer = make_optimizer(params, {"optimizer": name, "lr": 0.01, "weight_decay": 1e-4, "momentum": 0.5})
    assert isinstance(optimizer, cls)
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.01 and group["weight_decay"] == 1e-4
    if name == "sgd":
        assert group["momentum"] == 0.5


def test_unknown_optimizer_is_an_error():
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        make_optimizer([torch.nn.Parameter(torch.zeros(1))], {"optimizer": "rmsprop", "lr": 0.1})


def test_mlp_scaling_uses_training_split_only():
    module = builtin("mlp")
    data = module.load_data({})
    assert data.info["mean"] == pytest.approx(data.x_train.mean(dim=0).tolist(), rel=1e-4)
    assert data.info["mean"] != pytest.approx(data.x_val.mean(dim=0).tolist(), rel=1e-4)


def test_mlp_reads_any_csv_with_a_target_column(tmp_path):
    module = builtin("mlp")
    frame = pd.DataFrame(
        {"a": range(100), "b": [i % 7 for i in range(100)], "label": ["yes" if i % 2 else "no" for i in range(100)]}
    )
    path = tmp_path / "table.csv"
    frame.to_csv(path, index=False)
    data = module.load_data({"dataset": "csv", "path": str(path), "target": "label"})
    assert data.info["feature_names"] == ["a", "b"] and data.info["classes"] == ["no", "yes"]
    assert len(data.x_train) + len(data.x_val) == 100
