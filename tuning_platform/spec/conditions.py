"""Conditional parameters: which parameters of a space a trial has, and the configurations a
grid of such a space has.

A parameter with `when: {optimizer: sgd}` (or `{optimizer: [adam, adamw]}`; several keys must all
hold) is searched only in the trials whose config has that value for each named parameter; the
others never hold it, not even as a placeholder, so a sampler learns nothing from a value that did
nothing, and MLflow shows only what the trial used. A parameter whose `when` names a parameter
that is itself inactive is inactive too. Every searcher (`search/conditional.py` for Optuna and
random search, `search/grid.py` for a grid), the records and the study rebuilt from them read the
rule here. Pure Python, so the spec's rules use it before anything heavy is imported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tuning_platform.spec.schema import IntDomain


def conditions(domain: Any) -> dict[str, list[Any]]:
    """A domain's `when`, each value a list of the values that make it hold."""
    when = getattr(domain, "when", None) or {}
    return {name: list(value) if isinstance(value, list) else [value] for name, value in when.items()}


def is_conditional(space: Mapping[str, Any]) -> bool:
    return any(getattr(domain, "when", None) for domain in space.values())


def cycle(space: Mapping[str, Any]) -> list[str] | None:
    """A cycle of `when`s (`[a, b, a]`: a's `when` names b, whose `when` names a), or None."""
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> list[str] | None:
        if state.get(name) == "open":
            return path[path.index(name) :] + [name]
        if state.get(name) == "done" or name not in space:
            return None
        state[name] = "open"
        for parent in conditions(space[name]):
            found = visit(parent, path + [name])
            if found:
                return found
        state[name] = "done"
        return None

    for name in space:
        found = visit(name, [])
        if found:
            return found
    return None


def in_order(space: Mapping[str, Any]) -> list[str]:
    """The space's parameter names, each after every parameter its `when` names (and otherwise
    in the spec's order), so a trial's values are drawn in an order where each condition can be
    judged. The spec's rules have refused cycles."""
    ordered: list[str] = []

    def place(name: str) -> None:
        if name in ordered:
            return
        for parent in conditions(space[name]):
            if parent in space:
                place(parent)
        ordered.append(name)

    for name in space:
        place(name)
    return ordered


def holds(domain: Any, values: Mapping[str, Any]) -> bool:
    """Whether a parameter is active given the values drawn so far (its parents' among them; a
    parent that is absent is inactive, so its children are too)."""
    return all(name in values and values[name] in allowed for name, allowed in conditions(domain).items())


def active(space: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    """The names of the parameters a config of this space holds, in the space's order."""
    return [name for name in space if name in config and holds(space[name], config)]


def grid_values(domain: Any) -> list[Any]:
    if isinstance(domain, IntDomain):
        return list(range(domain.low, domain.high + 1))
    return list(domain.values)


def grid_points(space: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every configuration of the grid, the last parameter of the spec varying fastest."""
    points: list[dict[str, Any]] = [{}]
    for name in in_order(space):
        domain = space[name]
        points = [
            {**point, name: value} if holds(domain, point) else point
            for point in points
            for value in (grid_values(domain) if holds(domain, point) else [None])
        ]
    order = list(space)
    return [{name: point[name] for name in order if name in point} for point in points]
