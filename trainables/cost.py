"""What a model costs to keep and to run: `params`, `size_mb` and `latency_ms`, reported by every
built-in trainable beside its quality metrics, so a search can trade one against the other.

Pure functions of a model (and, for latency, a batch of its own input rows); they import
nothing of Ray, so tests call them directly.
"""

from __future__ import annotations

import io
import statistics
import time

import torch
from torch import nn

COST_METRICS = ("params", "size_mb", "latency_ms")
# Rows of the fixed batch a forward pass is timed on: the first validation rows, the same count
# in every trial whatever its `batch_size`, so the trials' latencies compare.
LATENCY_ROWS = 64
LATENCY_WARMUP = 2
LATENCY_REPEATS = 7
BYTES_PER_MB = 1_000_000


def parameter_count(model: nn.Module) -> int:
    """Trainable parameters: elements of the tensors the optimizer updates."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def state_dict_mb(model: nn.Module) -> float:
    """Megabytes (10**6 bytes) of the model's state dict as `torch.save` writes it, which is how a
    checkpoint and the registered model hold the weights: parameters, buffers (normalization
    statistics, batch-norm running means) and the archive's own few kilobytes."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes / BYTES_PER_MB


@torch.inference_mode()
def forward_latency_ms(
    model: nn.Module, batch: torch.Tensor, repeats: int = LATENCY_REPEATS, warmup: int = LATENCY_WARMUP
) -> float:
    """Median milliseconds of one forward pass over `batch`, in evaluation mode, on the device
    the model and batch are on, with the threads torch has (in a trial: the CPUs Ray gave it).

    `warmup` passes first (allocator, kernel selection and caches), then `repeats` timed ones.
    The median, because on a shared machine a single pass now and then waits for the scheduler
    several times as long: the mean and the maximum jump with those stalls, the median does not
    unless most of the passes are hit.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    was_training = model.training
    model.eval()
    try:
        for _ in range(warmup):
            model(batch)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            model(batch)
            times.append(time.perf_counter() - started)
    finally:
        model.train(was_training)
    return statistics.median(times) * 1000.0
