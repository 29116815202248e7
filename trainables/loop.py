"""The training loop every built-in trainable shares.

A trainable module describes its task with a `Task` (data, model, loss, evaluation, serving
form) and hands it to `run_trial`, which does the rest: threads and device, optimizer, resume
from the last checkpoint, one report and one checkpoint per epoch. The helpers below take plain
arguments and do not import Ray, so tests call them directly; only `run_trial` talks to Tune.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from trainables.cost import LATENCY_ROWS, forward_latency_ms, parameter_count, state_dict_mb

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "state.pt"
COMPUTE_TIME_KEY = "compute_s"
# Part of a GPU share kept free for the CUDA context and the allocator's slack.
GPU_MEMORY_HEADROOM = 0.05


@dataclass
class Dataset:
    """Tensors of one fixed train/validation/test split, plus what a model needs to be rebuilt.

    The test split is held out from the search: trials get `for_trials()`, which has none, and
    the job scores only its final model on it (`test_view()`), once.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    # JSON-like facts (shapes, classes, feature names, normalization) stored in checkpoints.
    info: dict[str, Any] = field(default_factory=dict)
    x_test: torch.Tensor | None = None
    y_test: torch.Tensor | None = None

    def for_trials(self) -> Dataset:
        """What a trial may see: training and validation data only."""
        return dataclasses.replace(self, x_test=None, y_test=None)

    def test_view(self) -> Dataset | None:
        """The test split where the task's `evaluate` reads validation data, or None without one."""
        if self.x_test is None or self.y_test is None:
            return None
        return dataclasses.replace(self, x_val=self.x_test, y_val=self.y_test, x_test=None, y_test=None)


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Task:
    """What differs between trainables; everything else is the shared loop."""

    load_data: Callable[[dict[str, Any]], Dataset]
    build_model: Callable[[dict[str, Any], dict[str, Any]], nn.Module]
    loss_fn: Callable[[dict[str, Any]], LossFn]
    # (model, dataset, loss_fn, device) -> {"val_loss": ..., task metrics}
    evaluate: Callable[[nn.Module, Dataset, LossFn, torch.device], dict[str, float]]
    # (model, info) -> what the registry serves: probabilities instead of logits, raw ids
    # instead of indices. `info` is the checkpoint's, so the served form matches its data.
    serving_model: Callable[[nn.Module, dict[str, Any]], nn.Module]
    # A few raw input rows in the form the served model takes.
    input_example: Callable[[Dataset], Any]
    # (data, config, generator) -> batches of one epoch; the default shuffles (x_train, y_train)
    # in `batch_size` slices. The recommender draws fresh negatives here.
    train_batches: Callable[[Dataset, dict[str, Any], torch.Generator], Batches] | None = None
    # data -> (name, metrics) of a simple model the tuned ones should beat, computed once per
    # job on the same split and logged on the parent run.
    baseline: Callable[[Dataset], tuple[str, dict[str, float]]] | None = None


def make_optimizer(params: Any, config: dict[str, Any]) -> torch.optim.Optimizer:
    """sgd | adam | adamw from `optimizer`, `lr`, and `momentum` (sgd), `beta2` (adam, adamw) and
    `weight_decay` when given: a conditional space gives each only the trials it applies to."""
    name = _optimizer_name(config)
    lr = float(config["lr"])
    weight_decay = float(config.get("weight_decay", 0.0))
    if name == "sgd":
        momentum = float(config.get("momentum", 0.9))
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    betas = (0.9, float(config.get("beta2", 0.999)))  # torch's defaults
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=float(config.get("weight_decay", 0.01)))
    raise ValueError(f"unknown optimizer {name!r}: expected sgd, adam or adamw")


def shuffled_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator) -> Batches:
    # Slicing tensors in memory beats a DataLoader by far on datasets of this size.
    order = torch.randperm(len(x), generator=generator)
    for start in range(0, len(x), batch_size):
        index = order[start : start + batch_size]
        yield x[index], y[index]


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    batches: Batches,
    device: torch.device,
) -> float:
    """One pass over the batches; returns the mean training loss per example."""
    model.train()
    total, count = 0.0, 0
    for xb, yb in batches:
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(xb), yb)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(xb)
        count += len(xb)
    return total / max(count, 1)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 2048) -> torch.Tensor:
    """Model outputs for `x`, in evaluation mode, gathered on the CPU."""
    model.eval()
    outs = [model(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(outs) if outs else torch.empty(0)


def save_state(
    directory: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    config: dict[str, Any],
    info: dict[str, Any],
) -> None:
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch,
            "config": config,
            "info": info,
        },
        os.path.join(directory, CHECKPOINT_FILE),
    )


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any], config: dict[str, Any]) -> None:
    """The checkpoint's optimizer state (momentum buffers, Adam's moments), with the
    hyperparameters of `config` kept: `load_state_dict` also restores the checkpoint's lr,
    weight decay and momentum, and a trial that population-based training restarted from another
    trial's checkpoint goes on with its own, perturbed values. A trial resumed from its own
    checkpoint has the same values in both. With another optimizer than the checkpoint's, its
    state does not fit: the optimizer starts fresh."""
    saved = state.get("config")
    if saved is not None and _optimizer_name(saved) != _optimizer_name(config):
        return
    settings = [{key: value for key, value in group.items() if key != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(state["optimizer"])
    for group, own in zip(optimizer.param_groups, settings, strict=True):
        group.update(own)


def _optimizer_name(config: dict[str, Any]) -> str:
    return str(config.get("optimizer", "adam")).lower()


def load_state(directory: str) -> dict[str, Any]:
    return torch.load(os.path.join(directory, CHECKPOINT_FILE), map_location="cpu", weights_only=True)


def rebuild_model(task: Task, directory: str) -> tuple[nn.Module, dict[str, Any]]:
    """The trained model of a checkpoint directory, on the CPU, plus the checkpoint's state."""
    state = load_state(directory)
    model = task.build_model(state["config"], state["info"])
    model.load_state_dict(state["model"])
    model.eval()
    return model, state


def select_device(
    gpu_ids: list[Any], gpu_share: float, cuda_device: Callable[[], torch.device] | None = None
) -> torch.device:
    """CUDA when Ray gave this process a GPU that really exists; the CPU otherwise.

    With a fractional share the process caps its own memory so trials packed onto one GPU
    cannot starve each other. `cuda_device` picks the device among the visible ones (Ray Train
    workers on one node see all of its GPUs); by default the first, which is the one Ray
    assigned to a plain trial.
    """
    if not gpu_ids:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        logger.warning("Ray assigned GPU %s but CUDA is not available here; training on CPU", gpu_ids)
        return torch.device("cpu")
    device = cuda_device() if cuda_device is not None else torch.device("cuda", 0)
    if 0 < gpu_share < 1:
        torch.cuda.set_per_process_memory_fraction(max(gpu_share - GPU_MEMORY_HEADROOM, 0.01), device)
    return device


# (metrics, checkpoint directory or None) -> None: Tune's report, or Ray Train's.
Report = Callable[[dict[str, Any], str | None], None]


@dataclass
class Worker:
    """Where the loop runs: a plain trial (rank 0 of 1), or one worker of a data-parallel group."""

    device: torch.device
    report: Report
    checkpoint: Any | None  # the Tune or Train checkpoint to resume from
    rank: int = 0
    world_size: int = 1


def quiet_ray_logs() -> None:
    # One "checkpoint created" line per epoch per trial drowns the progress table.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    logging.getLogger("ray.tune").setLevel(logging.WARNING)


def node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def use_assigned_resources(cuda_device: Callable[[], torch.device] | None = None) -> torch.device:
    """Torch threads to match the CPUs Ray gave this process, and the device to train on."""
    import ray

    assigned = ray.get_runtime_context().get_assigned_resources()
    torch.set_num_threads(max(1, int(assigned.get("CPU", 1))))
    return select_device(ray.get_gpu_ids(), float(assigned.get("GPU", 0)), cuda_device)


def run_trial(task: Task, config: dict[str, Any], data: Dataset | None = None) -> None:
    """A Tune trial in one process: trains for `config["epochs"]`, reporting and checkpointing
    once per epoch, resuming from the trial's last checkpoint when Tune restarts it."""
    from ray import tune

    quiet_ray_logs()
    device = use_assigned_resources()
    if data is None:
        data = task.load_data(config.get("data", {}))

    def report(metrics: dict[str, Any], directory: str | None) -> None:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory) if directory else None)

    train_epochs(task, config, data, Worker(device, report, tune.get_checkpoint()))


def train_epochs(task: Task, config: dict[str, Any], data: Dataset, worker: Worker) -> None:
    """The epoch loop every trial runs, alone or as one of `world_size` data-parallel workers.

    With several workers the model is wrapped in DistributedDataParallel (the process group is
    Ray Train's), each worker trains on its share of every epoch's batches, and rank 0
    evaluates, checkpoints and reports the metrics, the model's costs among them.
    """
    seed = int(config.get("seed", 0))
    torch.manual_seed(seed)
    model = task.build_model(config, data.info).to(worker.device)
    state = None
    if worker.checkpoint is not None:
        with worker.checkpoint.as_directory() as directory:
            state = load_state(directory)
        model.load_state_dict(state["model"])
    trained: nn.Module = model
    if worker.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [worker.device.index] if worker.device.type == "cuda" else None
        trained = DistributedDataParallel(model, device_ids=device_ids)
    optimizer = make_optimizer(trained.parameters(), config)
    if state is not None:
        load_optimizer_state(optimizer, state, config)
    loss_fn = task.loss_fn(config)
    batch_size = int(config.get("batch_size", 64))
    here = node_id()
    # The architecture is fixed for the whole trial, so its size is measured once.
    costs: dict[str, float] = {"params": parameter_count(model), "size_mb": state_dict_mb(model)}

    generator = torch.Generator()
    for epoch in range((int(state["epoch"]) if state else 0) + 1, int(config["epochs"]) + 1):
        # Seeded per epoch so a resumed trial sees the batches it would have seen; every worker
        # draws the same batches and keeps its own share.
        started = time.perf_counter()
        generator.manual_seed(seed * 100_003 + epoch)
        if task.train_batches is not None:
            batches = task.train_batches(data, config, generator)
        else:
            batches = shuffled_batches(data.x_train, data.y_train, batch_size, generator)
        if worker.world_size > 1:
            batches = worker_share(list(batches), worker.rank, worker.world_size)
        train_loss = train_one_epoch(trained, optimizer, loss_fn, batches, worker.device)
        if worker.world_size > 1:
            train_loss = mean_over_workers(train_loss, worker.device)
        result = {"epoch": epoch, "train_loss": train_loss, "node_id": here}
        if worker.rank == 0:
            result.update(task.evaluate(model, data, loss_fn, worker.device))
            if "latency_ms" not in costs:
                costs["latency_ms"] = cpu_latency_ms(task, config, data, model)
            result.update(costs)
        # Seconds of training and evaluation: the useful part of the epoch, without the
        # checkpoint and the report (the benchmarks measure the platform's share against it).
        result[COMPUTE_TIME_KEY] = time.perf_counter() - started
        if worker.rank == 0:
            with tempfile.TemporaryDirectory() as directory:
                save_state(directory, model, optimizer, epoch, config, data.info)
                worker.report(result, directory)
        else:
            worker.report(result, None)
        if not math.isfinite(train_loss):
            return  # a diverged trial has nothing left to learn


def cpu_latency_ms(task: Task, config: dict[str, Any], data: Dataset, model: nn.Module) -> float:
    """`latency_ms` of the model: a forward pass over the first `LATENCY_ROWS` validation rows,
    on the CPU with the threads the trial holds, even when it trains on a GPU (a copy is timed).

    Measured once per trial process, after its first epoch has trained and evaluated (warm
    kernels and allocator), and reported with every epoch: the time of a forward pass follows
    the architecture and the batch's shape, not the values of the weights, so timing it again
    each epoch would only draw the noise again, and cost 10-14% of every epoch of the cnn on the
    digits (1% of a 12-epoch trial once). A retried or resumed trial measures again where it
    now runs.
    """
    batch = data.x_val[:LATENCY_ROWS]
    timed = model
    if any(p.device.type != "cpu" for p in model.parameters()):
        # A fresh CPU model takes the weights: no second copy on the GPU, whose share may be
        # capped. Its initialization draws from a forked generator, so training draws the same.
        with torch.random.fork_rng(devices=[]):
            timed = task.build_model(config, data.info)
        timed.load_state_dict(model.state_dict())
    return forward_latency_ms(timed, batch)


def worker_share(batches: list[Any], rank: int, world_size: int) -> list[Any]:
    """Every `world_size`-th batch from `rank` on, the same count on every worker.

    DistributedDataParallel syncs gradients at each step, so a worker with one step more would
    wait forever; the at most `world_size - 1` batches left over are skipped this epoch (the
    order is reshuffled every epoch, so it is never the same ones).
    """
    usable = len(batches) - len(batches) % world_size
    return batches[rank:usable:world_size]


def mean_over_workers(value: float, device: torch.device) -> float:
    import torch.distributed as dist

    total = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return float(total.item()) / dist.get_world_size()
