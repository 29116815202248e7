"""Trainables made for the benchmarks, run through the platform as any `module:function` is."""

from __future__ import annotations

from typing import Any


def trivial(config: dict[str, Any]) -> None:
    """One result and no training: what is left of a trial's time is the platform's."""
    from ray import tune

    tune.report({"epoch": 1, "score": -((config["x"] - 0.3) ** 2) - (config["y"] - 0.6) ** 2})


def short(config: dict[str, Any]) -> None:
    """A few short epochs (about 0.1 s each) of a function that peaks at x = 0.3."""
    import time

    from ray import tune

    for epoch in range(1, int(config.get("epochs", 3)) + 1):
        time.sleep(0.1)
        tune.report({"epoch": epoch, "score": -((config["x"] - 0.3) ** 2) * (1 + 1 / epoch)})


# The metric `weighted` adds: the accuracy-against-cost scalarization ASHA (one metric)
# optimizes in `benchmarks/multiobjective.py`.
WEIGHTED_METRIC = "weighted_score"


def weighted(config: dict[str, Any]) -> None:
    """A built-in trial (`base_trainable`, default mlp: its data block, the shared loop, every
    metric it reports) that also reports `weighted_score = QUALITY - cost_weight * COST /
    cost_scale` each epoch, QUALITY and COST being the reported metrics `quality_metric` and
    `cost_metric`; all five come from `search.fixed`. A plain trial of one process (not the Ray
    Train group of `resources.workers > 1`).

    It runs `trainables.loop.train_epochs` as the built-in's `train` does through `run_trial`,
    with a report that adds the metric before handing the result to Tune. This module has no
    `TASK`, so each trial loads its own data (breast cancer or digits: well under a second) and
    nothing is registered."""
    from ray import tune

    from trainables import builtin
    from trainables.loop import Worker, quiet_ray_logs, train_epochs, use_assigned_resources

    module = builtin(str(config.get("base_trainable", "mlp")))
    quality, cost = str(config["quality_metric"]), str(config["cost_metric"])
    weight, scale = float(config["cost_weight"]), float(config["cost_scale"])

    def report(metrics: dict[str, Any], directory: str | None) -> None:
        if quality in metrics and cost in metrics:
            metrics = {**metrics, WEIGHTED_METRIC: metrics[quality] - weight * metrics[cost] / scale}
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory) if directory else None)

    quiet_ray_logs()
    device = use_assigned_resources()
    data = module.load_data(config.get("data", {})).for_trials()
    train_epochs(module.TASK, config, data, Worker(device, report, tune.get_checkpoint()))


def quick(config: dict[str, Any]) -> None:
    """One result in a few milliseconds, shorter than an actor's start, with the process that
    ran it: how many actors a job of short trials really uses (`benchmarks/actor_reuse.py`)."""
    import os

    from ray import tune

    tune.report({"epoch": 1, "score": -((config["x"] - 0.3) ** 2), "process": os.getpid()})
