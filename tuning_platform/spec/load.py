"""Reading a spec: YAML (a file, or a mapping from the Python API), `--set` overrides, the
smoke test's shrinking, and validation against the schema and the rules."""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tuning_platform.errors import SpecError
from tuning_platform.spec.messages import first_error
from tuning_platform.spec.rules import check_relations
from tuning_platform.spec.schema import Spec

# A spec given as a mapping (the Python API) is named like this in messages.
MAPPING_SPEC_NAME = "<spec>"


class _SpecLoader(yaml.SafeLoader):
    """Safe loader that also reads `1e-4` as a float.

    PyYAML follows YAML 1.1, where a float needs a dot (`1.0e-4`); everyone writes `1e-4`.
    """


_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - a SafeLoader subclass


def load_spec(
    spec: str | os.PathLike[str] | Mapping[str, Any],
    overrides: list[str] | Mapping[str, Any] | None = None,
    *,
    name: str | None = None,
) -> tuple[Spec, dict[str, Any], str]:
    """Read, override and validate a spec: a YAML file, or a mapping of the same keys.

    `overrides` are `KEY=VALUE` items (values parsed as YAML, as `--set` takes them) or a
    mapping of dotted keys to values. Returns the validated spec, the raw mapping after
    overrides, and the spec's text (a mapping is written out as YAML).
    """
    if isinstance(spec, Mapping):
        file, raw = MAPPING_SPEC_NAME, copy.deepcopy(dict(spec))
        text = yaml.safe_dump(raw, sort_keys=False)
    else:
        file = str(spec)
        raw, text = _read_spec_file(spec)
        raw = copy.deepcopy(raw)
    if isinstance(overrides, Mapping):
        for key, value in overrides.items():
            set_value(raw, str(key), value, file, f"{key}={value}")
    else:
        for item in overrides or []:
            apply_override(raw, item, file)
    if name is not None:
        raw["name"] = name
    return validate_spec(raw, file), raw, text


def _read_spec_file(path: str | os.PathLike[str]) -> tuple[dict[str, Any], str]:
    file = str(path)
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise SpecError(file, "", "spec file not found", has_got=False) from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as err:
        raise SpecError(file, "", f"cannot read spec file: {err.__class__.__name__}", has_got=False) from None
    try:
        raw = parse_yaml(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid syntax"
        raise SpecError(file, "", f"not valid YAML{where}: {problem}", has_got=False) from None
    if not isinstance(raw, dict):
        raise SpecError(file, "", "top level must be a mapping of keys", type(raw).__name__)
    return raw, text


def apply_override(raw: dict[str, Any], item: str, file: str) -> None:
    """Apply one `--set key.path=value` (value parsed as YAML) to the raw mapping."""
    if "=" not in item:
        raise SpecError(file, "--set", "expected KEY=VALUE", item)
    key, _, value_text = item.partition("=")
    try:
        value = parse_yaml(value_text) if value_text.strip() else None
    except yaml.YAMLError:
        raise SpecError(file, f"--set {key}", "value is not valid YAML", value_text) from None
    set_value(raw, key, value, file, item)


def set_value(raw: dict[str, Any], key: str, value: Any, file: str, item: str) -> None:
    """Set the dotted `key` of the raw mapping to `value`, making mappings on the way."""
    parts = key.strip().split(".")
    if not all(parts):
        raise SpecError(file, "--set", "key must be a dotted path like search.num_samples", item)
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            path = ".".join(parts[: depth + 1])
            raise SpecError(file, f"--set {key}", f"{path} is not a mapping", child)
        node = child
    node[parts[-1]] = value


def validate_spec(raw: dict[str, Any], file: str) -> Spec:
    # `--set metric=` (null) clears a file's metric, so a one-metric spec takes objectives.
    if raw.get("objectives") is not None and (raw.get("metric") is not None or raw.get("mode") is not None):
        key = "metric" if raw.get("metric") is not None else "mode"
        raise SpecError(file, key, "give either metric:/mode: (one objective) or objectives:, not both", raw[key])
    try:
        spec = Spec.model_validate(raw)
    except ValidationError as err:
        raise first_error(err, raw, file) from None
    check_relations(spec, file)
    return spec


def smoke_overrides(spec: Spec) -> list[str]:
    """`--set` items that shrink any spec to a run of well under a minute."""
    items = [
        f"search.num_samples={min(spec.search.num_samples, 4)}",
        "data.smoke=true",
    ]
    if spec.epochs is not None:
        items.append("search.fixed.epochs=2")
    if spec.scheduler.max_t is not None:
        items.append("scheduler.max_t=2")
    if spec.scheduler.grace_period > 1:
        items.append("scheduler.grace_period=1")
    if spec.scheduler.type == "pbt":
        items.append("scheduler.perturbation_interval=1")  # below the 2 epochs, so PBT still perturbs
    return items
