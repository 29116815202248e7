"""Trainable helpers without Ray: data splits, shapes, learning, checkpoints, served form.

Every built-in trainable goes through the same tests; what each one must reach after a few
epochs on its smoke data is in LEARNS (the chance level is well below each bar).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tests.helpers import smoke_data
from trainables import TRAINABLES, builtin
from trainables.classification import split_indices
from trainables.cost import COST_METRICS
from trainables.loop import (
    load_state,
    make_optimizer,
    predict,
    rebuild_model,
    save_state,
    shuffled_batches,
    train_one_epoch,
)
from tuning_platform import tuner

CPU = torch.device("cpu")
CONFIGS = {
    "cnn": {"lr": 3e-3, "optimizer": "adam", "channels": 8, "dropout": 0.1, "batch_size": 64, "epochs": 2},
    "mlp": {"lr": 3e-3, "optimizer": "adam", "hidden_size": 32, "num_layers": 2, "batch_size": 32, "epochs": 2},
    "recommender": {"lr": 3e-3, "optimizer": "adam", "embedding_dim": 16, "batch_size": 256, "num_negatives": 4},
    "fraud": {"lr": 3e-3, "optimizer": "adam", "hidden_size": 64, "batch_size": 256, "pos_weight": 5.0},
}
# metric, the value it must exceed after three epochs on smoke data (chance level in comments)
LEARNS = {
    "cnn": ("val_accuracy", 0.8),  # 10 classes: 0.1
    "mlp": ("val_accuracy", 0.8),  # the majority class: 0.63
    "recommender": ("val_ndcg_at_10", 0.15),  # a random ranking: 0.046
    "fraud": ("val_auprc", 0.15),  # the smoke set's fraud rate: 0.05
}


@pytest.fixture(scope="module", params=sorted(TRAINABLES))
def trainable(request):
    module = builtin(request.param)
    return request.param, module, smoke_data(request.param)


def epoch_batches(module, data, config, seed):
    """The batches the shared loop would train one epoch on."""
    generator = torch.Generator().manual_seed(seed)
    if module.TASK.train_batches is not None:
        return module.TASK.train_batches(data, config, generator)
    return shuffled_batches(data.x_train, data.y_train, int(config["batch_size"]), generator)


def test_data_split_is_fixed_and_shapes_match(trainable):
    name, module, data = trainable
    again = module.load_data({"smoke": True})
    assert torch.equal(data.x_train, again.x_train) and torch.equal(data.x_val, again.x_val)
    assert torch.equal(data.y_val, again.y_val)
    assert len(data.x_train) == len(data.y_train) > 0 and len(data.x_val) == len(data.y_val) > 0
    model = module.build_model(CONFIGS[name], data.info)
    outputs = predict(model, data.x_val, CPU)
    expected = (len(data.x_val), data.info["num_classes"]) if "num_classes" in data.info else (len(data.x_val),)
    assert outputs.shape == expected


def test_a_test_split_is_held_out_that_no_trial_gets(trainable):
    name, module, data = trainable
    assert data.x_test is not None and len(data.x_test) == len(data.y_test) > 0
    shipped = tuner.trial_data(data)  # what Ray hands every trial
    assert shipped.x_test is None and shipped.y_test is None
    assert torch.equal(shipped.x_val, data.x_val) and torch.equal(shipped.x_train, data.x_train)
    view = data.test_view()
    assert torch.equal(view.x_val, data.x_test)
    if name == "recommender":  # the test item of each user is neither trained on nor validated on
        positives = {tuple(row) for row in data.x_test[data.y_test == 1].tolist()}
        assert not positives & {tuple(row) for row in data.x_train.tolist()}
        assert not positives & {tuple(row) for row in data.x_val[data.y_val == 1].tolist()}
    elif name != "cnn":  # table rows are distinct: none of the test rows is in another split
        seen = {tuple(row) for row in torch.cat([data.x_train, data.x_val]).tolist()}
        assert not any(tuple(row) in seen for row in data.x_test.tolist())


def test_split_indices_are_disjoint_and_the_test_rows_do_not_move_with_the_validation_split():
    labels = np.repeat([0, 1, 2], 100)
    rows = split_indices(labels, val_fraction=0.2, test_fraction=0.2, seed=0)
    assert sorted(np.concatenate(list(rows.values())).tolist()) == list(range(300))
    assert [len(rows[k]) for k in ("train", "val", "test")] == [180, 60, 60]
    other = split_indices(labels, val_fraction=0.3, test_fraction=0.2, seed=0)
    assert np.array_equal(np.sort(rows["test"]), np.sort(other["test"]))


def test_three_epochs_learn_well_above_chance(trainable):
    name, module, data = trainable
    torch.manual_seed(0)
    config = CONFIGS[name]
    model = module.build_model(config, data.info)
    loss_fn = module.TASK.loss_fn(config)
    before = module.TASK.evaluate(model, data, loss_fn, CPU)
    optimizer = make_optimizer(model.parameters(), config)
    for epoch in range(3):
        train_one_epoch(model, optimizer, loss_fn, epoch_batches(module, data, config, epoch), CPU)
    after = module.TASK.evaluate(model, data, loss_fn, CPU)
    metric, bar = LEARNS[name]
    assert after["val_loss"] < before["val_loss"]
    assert after[metric] > bar, after
    # What evaluation returns, plus what the loop adds: the loss, the epoch and the model's costs.
    assert set(module.METRICS) == set(after) | {"train_loss", "epoch", *COST_METRICS}


def test_checkpoint_round_trip_rebuilds_the_same_model(trainable, tmp_path):
    name, module, data = trainable
    model = module.build_model(CONFIGS[name], data.info)
    optimizer = make_optimizer(model.parameters(), CONFIGS[name])
    train_one_epoch(model, optimizer, module.TASK.loss_fn({}), epoch_batches(module, data, CONFIGS[name], 0), CPU)
    save_state(str(tmp_path), model, optimizer, 1, CONFIGS[name], data.info)
    rebuilt, state = rebuild_model(module.TASK, str(tmp_path))
    assert state["epoch"] == 1 and load_state(str(tmp_path))["config"] == CONFIGS[name]
    assert torch.allclose(predict(model, data.x_val, CPU), predict(rebuilt, data.x_val, CPU))
    fresh = make_optimizer(rebuilt.parameters(), CONFIGS[name])
    fresh.load_state_dict(state["optimizer"])  # a resumed trial continues its optimizer too


def test_served_model_takes_raw_rows_and_gives_probabilities(trainable):
    name, module, data = trainable
    model = module.TASK.serving_model(module.build_model(CONFIGS[name], data.info), data.info)
    example = module.TASK.input_example(data)
    if isinstance(model, torch.nn.Module):
        rows = example.to_numpy(dtype="float32") if isinstance(example, pd.DataFrame) else example
        # What MLflow's pytorch flavor hands the model: the input as one float32 tensor.
        output = model(torch.tensor(rows))
    else:  # a table model: the raw rows, column names and all
        assert list(example.columns) == data.info["feature_names"]
        output = torch.tensor(model(example).to_numpy())
    assert len(output) == len(example)
    assert ((output >= 0) & (output <= 1)).all()
    if output.ndim == 2 and output.shape[1] > 1:  # class probabilities
        assert torch.allclose(output.sum(dim=1), torch.ones(len(example), dtype=output.dtype), atol=1e-5)


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
    # Standardized with the training split's statistics: mean 0 there, not on validation.
    assert data.x_train.mean(dim=0).abs().max() < 1e-4
    assert data.x_val.mean(dim=0).abs().max() > 1e-3


def test_mlp_reads_any_csv_with_a_target_column(tmp_path):
    module = builtin("mlp")
    frame = pd.DataFrame(
        {
            "a": [(i * 37) % 101 for i in range(100)],
            "b": [i % 7 for i in range(100)],
            "label": ["yes" if i % 2 else "no" for i in range(100)],
        }
    )
    path = tmp_path / "table.csv"
    frame.to_csv(path, index=False)
    data = module.load_data({"dataset": "csv", "path": str(path), "target": "label"})
    assert data.info["feature_names"] == ["a", "b"] and data.info["classes"] == ["no", "yes"]
    assert len(data.x_train) + len(data.x_val) + len(data.x_test) == 100
