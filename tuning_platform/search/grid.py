"""Grid search: every combination of the space's values, each run once per repetition
(`search.num_samples`, as in Ray, where `num_samples` repeats a `grid_search`).

A `grid` or `choice` parameter contributes its values, an `int` parameter every integer from
`low` to `high`. A conditional parameter (`when:`) is combined only with the values that make it
active, so a grid over `optimizer: [sgd, adam]` and `momentum: [0.8, 0.9] when sgd` is three
configurations (sgd with each momentum, adam alone), not four with a momentum adam ignores.

A Tune `Searcher` rather than Ray's `tune.grid_search` in the param space, because Ray's
variant generator gives every trial every key, active or not. It keeps its place in the grid
through Tune's saved state (`save`/`restore`), so `--resume` never runs a configuration twice.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from typing import Any

from ray.tune.search import Searcher

from tuning_platform.spec.conditions import grid_points


class PointsSearch(Searcher):
    """Suggests the given configurations in order, `repeats` times over, then FINISHED: the
    reseeded runs of `selection` over a conditional space (Tune's own `points_to_evaluate`
    needs every key of a point in the param space, which then holds no domains).

    Tune pickles it into a job's saved state by this import path: it never moves without an
    alias (`_compat/moved.py`)."""

    def __init__(self, points: list[dict[str, Any]], repeats: int = 1):
        super().__init__()
        self.points = [dict(point) for point in points]
        self.repeats = repeats
        self.suggested = 0

    @property
    def total(self) -> int:
        return len(self.points) * self.repeats

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        # Tune's metric and mode are not needed to walk a grid; the param space holds no domains.
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self.suggested >= self.total:
            return Searcher.FINISHED  # type: ignore[return-value]  # Tune's own sentinel
        point = self.points[self.suggested % len(self.points)]
        self.suggested += 1
        return dict(point)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass  # a list of configurations learns nothing

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.get_state(), file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self.set_state(pickle.load(file))  # noqa: S301 - Tune's own saved state of this job

    def get_state(self) -> dict[str, Any]:
        return {"points": self.points, "repeats": self.repeats, "suggested": self.suggested}

    def set_state(self, state: dict[str, Any]) -> None:
        self.points, self.repeats, self.suggested = state["points"], state["repeats"], state["suggested"]


class GridSearch(PointsSearch):
    """Suggests the grid's configurations in order, `repeats` times over, then FINISHED."""

    def __init__(self, space: Mapping[str, Any], repeats: int = 1):
        super().__init__(grid_points(space), repeats)
