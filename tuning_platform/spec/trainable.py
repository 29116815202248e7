"""Find the trainable a spec names and check the spec against what that trainable supports.

A built-in name (`cnn`, `mlp`, ...) or `package.module:function`. A module that also exposes a
`TASK` (like the built-ins) gets its data loaded once by the driver and its best model
registered; a bare function is tuned and tracked, but there is no model to register.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import ValidationError

from trainables import TRAINABLES
from tuning_platform.contract import Task
from tuning_platform.spec import Spec, SpecError


@dataclass
class ResolvedTrainable:
    ref: str
    function: Callable[..., None]
    module: ModuleType

    @property
    def task(self) -> Task | None:
        """The shared-loop task (data, model rebuild, serving form) when the module has one."""
        return getattr(self.module, "TASK", None)

    @property
    def metrics(self) -> tuple[str, ...] | None:
        return getattr(self.module, "METRICS", None)


def resolve_trainable(spec: Spec, file: str) -> ResolvedTrainable:
    ref = spec.trainable
    if ":" not in ref:
        if ref not in TRAINABLES:
            hint = difflib.get_close_matches(ref, TRAINABLES, n=1)
            rule = f"unknown trainable, did you mean '{hint[0]}'?" if hint else "unknown trainable"
            rule += f" (built-in: {', '.join(TRAINABLES)}; or package.module:function)"
            raise SpecError(file, "trainable", rule, ref)
        module_name, function_name = TRAINABLES[ref], "train"
    else:
        module_name, _, function_name = ref.partition(":")
    # A user's own module lives in the working directory (Ray's workers import it from there too).
    if str(Path.cwd()) not in sys.path:
        sys.path.append(str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - any import failure is the user's to fix
        raise SpecError(
            file, "trainable", f"cannot import module {module_name!r}: {err.__class__.__name__}: {err}", ref
        ) from None
    function = getattr(module, function_name, None)
    if function is None:
        raise SpecError(file, "trainable", f"module {module_name!r} has no attribute {function_name!r}", ref)
    if not callable(function):
        raise SpecError(file, "trainable", f"{module_name}.{function_name} is not callable", ref)
    return ResolvedTrainable(ref, function, module)


def check_against_trainable(spec: Spec, trainable: ResolvedTrainable, file: str) -> dict[str, Any]:
    """Validate the data block and the metric; returns the data block with defaults filled in."""
    data = dict(spec.data)
    schema = getattr(trainable.module, "DataConfig", None)
    if schema is not None:
        try:
            data = schema.model_validate(data).model_dump()
        except ValidationError as err:
            error = err.errors()[0]
            loc = [str(p) for p in error["loc"]]
            message = error["msg"].removeprefix("Value error, ")
            # Our own validators name the key first: "root: folder does not exist ...".
            key, sep, rest = message.partition(": ")
            if sep and not loc and " " not in key:
                loc, message = [key], rest
            got = error.get("input")
            if error["type"] == "extra_forbidden":
                hint = difflib.get_close_matches(loc[-1], list(schema.model_fields), n=1)
                message = "unknown key" + (f", did you mean '{hint[0]}'?" if hint else "")
                got = loc[-1]
            elif isinstance(got, dict):
                got = spec.data.get(loc[0]) if loc else None
            path = ".".join(["data", *loc])
            raise SpecError(file, path, message[:1].lower() + message[1:], got) from None
    if trainable.metrics is None:  # a user's trainable: a metric it never reports fails its first result
        return data
    for path, metric in _named_metrics(spec):
        if metric not in trainable.metrics:
            hint = difflib.get_close_matches(metric, trainable.metrics, n=1)
            rule = f"{spec.trainable} does not report this metric"
            rule += f", did you mean '{hint[0]}'?" if hint else f"; it reports {', '.join(trainable.metrics)}"
            raise SpecError(file, path, rule, metric)
    return data


def _named_metrics(spec: Spec) -> list[tuple[str, str]]:
    """Each metric the spec names, with its key path: the metric, or each objective, and each
    constraint's."""
    if spec.objectives is None:
        named = [("metric", spec.metric)]
    else:
        named = [(f"objectives.{i}.metric", o.metric) for i, o in enumerate(spec.objectives)]
    named += [(f"constraints.{i}", c.metric) for i, c in enumerate(spec.constraint_list)]
    return named
