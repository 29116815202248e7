"""A pydantic validation error as one line a user can act on: the file, the key path, the rule,
the bad value, and the keys allowed where a key is unknown."""

from __future__ import annotations

import difflib
import types
import typing
from typing import Annotated, Any, Union

from pydantic import BaseModel, ValidationError

from tuning_platform.errors import SpecError
from tuning_platform.spec.schema import DOMAIN_TYPES, Spec


def first_error(err: ValidationError, raw: dict[str, Any], file: str) -> SpecError:
    errors = err.errors()
    # A misspelt key also makes its real key "missing": the typo is the error to report.
    error = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = _clean_loc(error["loc"])
    path = ".".join(str(part) for part in loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        allowed = _allowed_keys(loc[:-1], raw)
        hint = difflib.get_close_matches(key, allowed, n=1)
        rule = "unknown key"
        if hint:
            rule += f", did you mean '{hint[0]}'?"
        elif allowed:
            rule += f"; allowed: {', '.join(allowed)}"
        return SpecError(file, path, rule, key)
    if kind == "missing":
        return SpecError(file, path, "required key is missing", has_got=False)
    if kind == "union_tag_invalid" or kind == "union_tag_not_found":
        got = _lookup(raw, loc + ("type",))
        return SpecError(file, f"{path}.type", f"must be one of {', '.join(DOMAIN_TYPES)}", got)
    message = error["msg"]
    message = message.removeprefix("Value error, ")
    message = message[:1].lower() + message[1:]
    return SpecError(file, path, message, error.get("input"))


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Drop the discriminator tag pydantic puts after `search.space.NAME`."""
    out: list[Any] = []
    for i, part in enumerate(loc):
        if i >= 3 and loc[i - 3 : i - 1] == ("search", "space") and part in DOMAIN_TYPES:
            continue
        out.append(part)
    return tuple(out)


def _allowed_keys(loc: tuple[Any, ...], raw: dict[str, Any]) -> list[str]:
    """The keys the model at `loc` accepts, for a "did you mean" hint."""
    model: Any = Spec
    for part in loc:
        model = _field_model(model, part)
        if model is None:
            return []
    if isinstance(model, tuple):  # a search domain: its `type` picks the model
        model = _field_model(model, _lookup(raw, loc + ("type",)))
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _field_model(model: Any, part: Any) -> Any:
    if isinstance(model, type) and issubclass(model, BaseModel):
        field = model.model_fields.get(str(part))
        return _unwrap(field.annotation) if field else None
    if typing.get_origin(model) is dict:
        return _unwrap(typing.get_args(model)[1])
    if isinstance(model, tuple):  # a union of domain models: pick by tag
        for member in model:
            if part in typing.get_args(member.model_fields["type"].annotation):
                return member
    return None


def _unwrap(annotation: Any) -> Any:
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (Union, types.UnionType):
        models = tuple(
            arg for arg in typing.get_args(annotation) if isinstance(arg, type) and issubclass(arg, BaseModel)
        )
        return models[0] if len(models) == 1 else models
    return annotation


def _lookup(raw: Any, loc: tuple[Any, ...]) -> Any:
    for part in loc:
        if not isinstance(raw, dict):
            return None
        raw = raw.get(part)
    return raw
