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
