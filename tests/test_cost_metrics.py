"""What a model costs: `params`, `size_mb` and `latency_ms`, measured by `trainables/cost.py` and
reported by every built-in trainable with each epoch's metrics (issue 30), in-process, without Ray."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from tests.helpers import smoke_data
from trainables import TRAINABLES, builtin, loop
from trainables.cost import (
    BYTES_PER_MB,
    COST_METRICS,
    LATENCY_ROWS,
    forward_latency_ms,
    parameter_count,
    state_dict_mb,
)
from trainables.loop import Worker, load_state, train_epochs

CPU = torch.device("cpu")
# Small models of each trainable, two epochs on its smoke data.
CONFIGS = {
    "cnn": {"channels": 8, "batch_size": 64},
    "mlp": {"hidden_size": 32, "num_layers": 2, "batch_size": 32},
    "recommender": {"embedding_dim": 8, "num_layers": 1, "batch_size": 1024, "num_negatives": 2},
    "fraud": {"hidden_size": 32, "num_layers": 1, "batch_size": 1024},
}


def test_parameter_count_is_the_trainable_elements():
    assert parameter_count(nn.Linear(10, 3)) == 10 * 3 + 3
    frozen = nn.Sequential(nn.Linear(10, 3), nn.Linear(3, 2))
    frozen[0].requires_grad_(False)
    assert parameter_count(frozen) == 3 * 2 + 2  # what the optimizer updates
    with_buffers = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    assert parameter_count(with_buffers) == 20 + 8  # running statistics are not parameters


def test_state_dict_size_is_what_torch_save_writes_and_grows_with_the_model():
    small, large = nn.Linear(10, 3), nn.Linear(1000, 300)
    buffer = io.BytesIO()
    torch.save(large.state_dict(), buffer)
    assert state_dict_mb(large) == len(buffer.getvalue()) / BYTES_PER_MB
    assert state_dict_mb(small) < state_dict_mb(large)
    # float32 weights: 4 bytes each, plus the archive's few kilobytes
    assert 4 * parameter_count(large) / 1e6 < state_dict_mb(large) < 4 * parameter_count(large) / 1e6 + 0.01


class Stalls(nn.Module):
    """Each forward takes the next of `seconds` (busy-waiting), to check which statistic is reported."""

    def __init__(self, seconds: list[float]):
        super().__init__()
        self.seconds = iter(seconds)
        self.modes: list[bool] = []
        self.grad: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import time

        self.modes.append(self.training)
        self.grad.append(torch.is_grad_enabled())
        until = time.perf_counter() + next(self.seconds)
        while time.perf_counter() < until:
            pass
        return x


def test_latency_is_the_median_of_timed_passes_after_the_warm_up():
    # 2 slow warm-ups are not counted; one stall of 5 passes does not move the median
    model = Stalls([0.05, 0.05, 0.001, 0.05, 0.001, 0.001, 0.001])
    model.train()
    latency = forward_latency_ms(model, torch.zeros(4), repeats=5, warmup=2)
    assert 1.0 <= latency < 5.0
    assert model.modes == [False] * 7 and model.grad == [False] * 7  # eval mode, no autograd
    assert model.training  # handed back as it came


def test_latency_of_a_real_model_is_positive_finite_and_grows_with_the_work():
    torch.manual_seed(0)
    small, large = nn.Linear(16, 4), nn.Sequential(nn.Linear(16, 2048), nn.ReLU(), nn.Linear(2048, 2048))
    batch = torch.randn(LATENCY_ROWS, 16)
    latencies = [forward_latency_ms(m, batch) for m in (small, large)]
    assert all(math.isfinite(v) and v > 0 for v in latencies)
    assert latencies[0] < latencies[1]
    with pytest.raises(ValueError, match="repeats"):
        forward_latency_ms(small, batch, repeats=0)


@pytest.fixture(scope="module", params=sorted(TRAINABLES))
def trained(request):
    """The reports of a 2-epoch trial of each built-in trainable, through the shared loop as a
    trial runs it (Ray's report replaced by a list), the size of the weights each checkpoint
    held, the batches the latency was timed on, and a fresh model of the same configuration."""
    name = request.param
    module = builtin(name)
    data = smoke_data(name)
    config = {"lr": 3e-3, "optimizer": "adam", "epochs": 2, **CONFIGS[name]}
    reports: list[dict] = []
    checkpoint_mb: list[float] = []
    timed: list[torch.Tensor] = []

    def timing(model, batch):
        timed.append(batch)
        return forward_latency_ms(model, batch)

    def report(metrics, directory):
        reports.append(metrics)
        buffer = io.BytesIO()
        torch.save(load_state(directory)["model"], buffer)
        checkpoint_mb.append(len(buffer.getvalue()) / BYTES_PER_MB)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "node_id", lambda: "here")  # the one call that would start Ray
        patch.setattr(loop, "forward_latency_ms", timing)
        train_epochs(module.TASK, config, data, Worker(CPU, report, None))
    model = module.build_model(config, data.info)
    return module, data, model, reports, checkpoint_mb, timed


def test_every_epoch_reports_the_model_costs_beside_its_metrics(trained):
    module, _, model, reports, checkpoint_mb, _ = trained
    assert [r["epoch"] for r in reports] == [1, 2]
    for result in reports:
        assert set(module.METRICS) <= set(result)  # what the spec's metric and objectives are checked against
        assert set(COST_METRICS) <= set(module.METRICS)
        assert result["params"] == parameter_count(model) > 0
        # the model's weights as its checkpoint holds them (MB = 10**6 bytes)
        assert result["size_mb"] == pytest.approx(checkpoint_mb[0], rel=1e-3)
        assert math.isfinite(result["latency_ms"]) and result["latency_ms"] > 0
    # measured once per trial: the architecture does not change between epochs
    assert len({(r["params"], r["size_mb"], r["latency_ms"]) for r in reports}) == 1


def test_latency_is_timed_once_on_the_first_validation_rows(trained):
    _, data, model, _, _, timed = trained
    assert len(timed) == 1  # once per trial, not per epoch
    # the trainable's own validation rows, as many whatever the trial's batch_size
    assert torch.equal(timed[0], data.x_val[:LATENCY_ROWS]) and len(timed[0]) == LATENCY_ROWS
    with torch.inference_mode():
        assert len(model.eval()(timed[0])) == LATENCY_ROWS  # rows this model takes as they are


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_model_on_a_gpu_is_timed_on_the_cpu_without_changing_training_draws():
    module = builtin("mlp")
    data = module.load_data({"smoke": True})
    config = {"hidden_size": 32, "num_layers": 2}
    model = module.build_model(config, data.info).to("cuda")
    before = torch.get_rng_state()
    latency = loop.cpu_latency_ms(module.TASK, config, data, model)
    assert torch.equal(torch.get_rng_state(), before)
    assert math.isfinite(latency) and latency > 0
    assert next(model.parameters()).device.type == "cuda"  # the trained model stays where it trains
