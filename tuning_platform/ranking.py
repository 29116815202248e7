"""Which value is better: the one rule of a spec's `mode` (`max` or `min`), for trials, reseeded
configurations, registered versions, pictures and Optuna's study alike."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

Mode = Literal["max", "min"]


def score(value: float, mode: str) -> float:
    """The value with larger always better: sort by it, compare by it."""
    return value if mode == "max" else -value


def best(values: Iterable[float], mode: str) -> float:
    """The best of some values (at least one)."""
    return max(values, key=lambda value: score(value, mode))


def worst_value(mode: str) -> float:
    """A value every real one beats: what a diverged trial tells the search."""
    return -math.inf if mode == "max" else math.inf


def direction(mode: str) -> Literal["maximize", "minimize"]:
    """Optuna's name for the mode."""
    return "maximize" if mode == "max" else "minimize"
