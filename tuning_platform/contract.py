"""The trainable contract as the driver sees it: what it uses of a trainable module's `TASK`
and of the dataset the task loads. `trainables.loop.Task` and `trainables.loop.Dataset` are
the built-in implementations; a user's `TASK` (a `dataclasses.replace` of a built-in one, or
an object of their own) needs these members for the driver to load its data once, ship it to
trials, and register the best model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Dataset(Protocol):
    """What a task's `load_data` returns. `info` holds JSON-like facts every checkpoint keeps
    (a table's encoding, class names); `notes` in it are shown to the user once."""

    @property
    def info(self) -> dict[str, Any]: ...


@runtime_checkable
class SplitDataset(Dataset, Protocol):
    """A dataset with a test split no trial receives: trials get `for_trials()`, and the
    registered model alone is scored once on `test_view()` (None when there is none)."""

    def for_trials(self) -> Any: ...

    def test_view(self) -> Any | None: ...


class Task(Protocol):
    """What the driver calls on a trainable module's `TASK` (read-only members; a frozen
    dataclass of callables satisfies it). An optional `baseline(dataset) -> (name, metrics)`
    is read with getattr: a reference model scored on the same split."""

    @property
    def load_data(self) -> Callable[[dict[str, Any]], Any]: ...

    @property
    def loss_fn(self) -> Callable[[dict[str, Any]], Any]: ...

    @property
    def evaluate(self) -> Callable[..., dict[str, float]]: ...

    @property
    def serving_model(self) -> Callable[[Any, dict[str, Any]], Any]: ...

    @property
    def input_example(self) -> Callable[[Any], Any]: ...
