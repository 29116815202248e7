"""Data-parallel trials: each Tune trial launches a Ray Train `TorchTrainer`.

With `resources.workers > 1` a trial is a small driver (Ray Train V2, the default in Ray 2.60:
a Tune function starts the trainer; `Tuner(TorchTrainer)` is the deprecated path). Its workers
run the same epoch loop as a single-process trial (`loop.train_epochs`) under
DistributedDataParallel, gloo on CPU and nccl on GPU. Rank 0's metrics and checkpoints reach
Tune through `TuneReportCallback`; Ray Train keeps the checkpoints in its own run folder, and a
retried trial reruns the trainer under the same name, so it resumes from the last one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from trainables.loop import Dataset, Task, Worker, quiet_ray_logs, train_epochs, use_assigned_resources

# What the Tune trial itself holds while its workers train: memory but no CPU, so a driver
# never takes a CPU its own workers wait for (Tune refuses an empty request).
DRIVER_RESOURCES = {"cpu": 0, "memory": 64 * 1024**2}


def data_parallel(
    task: Task,
    workers: int,
    cpu: float,
    gpu: float,
    storage_path: str,
    run_name: str,
    max_failures: int,
    metric: str,
    mode: str,
) -> Callable[..., None]:
    """A Tune function trainable that trains each trial on `workers` Ray Train workers with
    `cpu` and `gpu` each; Train's run state goes under `storage_path/run_name/train`, where it
    keeps the two checkpoints best by `metric` (and the latest, to resume from)."""

    def train(config: dict[str, Any], data: Any = None) -> None:
        import ray
        from ray import train as ray_train
        from ray import tune
        from ray.train.torch import TorchConfig, TorchTrainer
        from ray.tune.integration.ray_train import TuneReportCallback

        quiet_ray_logs()
        # The driver got the dataset through the object store as a reference inside a list, so
        # that the workers fetch it there too instead of receiving a copy each.
        data_ref = data[0] if isinstance(data, list) else ray.put(task.load_data(config.get("data", {})))
        use_gpu = gpu > 0
        trainer = TorchTrainer(
            _worker_loop,
            train_loop_config={"task": task, "config": config, "data": data_ref},
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            scaling_config=ray_train.ScalingConfig(
                num_workers=workers,
                use_gpu=use_gpu,
                resources_per_worker={"CPU": cpu, **({"GPU": gpu} if use_gpu else {})},
            ),
            run_config=ray_train.RunConfig(
                # The trial id survives retries and restores, so a rerun finds its checkpoints.
                name=f"{run_name}-{tune.get_context().get_trial_id()}",
                storage_path=f"{storage_path.rstrip('/')}/{run_name}/train",
                callbacks=[TuneReportCallback()],
                # Ranked by the metric, as Tune keeps a single-process trial's: the registered
                # model is then the epoch its version is tagged with.
                checkpoint_config=ray_train.CheckpointConfig(
                    num_to_keep=2, checkpoint_score_attribute=metric, checkpoint_score_order=mode
                ),
                failure_config=ray_train.FailureConfig(max_failures=max_failures),
            ),
        )
        trainer.fit()

    return train


def _worker_loop(loop_config: dict[str, Any]) -> None:
    import ray
    from ray import train as ray_train

    quiet_ray_logs()
    context = ray_train.get_context()
    device = use_assigned_resources(_train_cuda_device)
    data: Dataset = ray.get(loop_config["data"])

    def report(metrics: dict[str, Any], directory: str | None) -> None:
        checkpoint = ray_train.Checkpoint.from_directory(directory) if directory else None
        ray_train.report(metrics, checkpoint=checkpoint)

    worker = Worker(device, report, ray_train.get_checkpoint(), context.get_world_rank(), context.get_world_size())
    train_epochs(loop_config["task"], loop_config["config"], data, worker)


def _train_cuda_device() -> Any:
    from ray.train.torch import get_device

    return get_device()
