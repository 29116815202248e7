"""Typed schema of a search-space YAML file, and its conversion to Ray Tune domains.

Every problem a user can make in a spec becomes one `SpecError` whose text is
`FILE: key.path: rule (got VALUE)`; the CLI prints it as `error: ...` and exits 2 before
anything is started or written.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
PARAM_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
# A spec given as a mapping (the Python API) is named like this in messages.
MAPPING_SPEC_NAME = "<spec>"


class SpecError(Exception):
    """A user mistake in a spec: file, key path, rule and the bad value, on one line."""

    def __init__(self, file: str, path: str, rule: str, got: Any = None, *, has_got: bool = True):
        self.file, self.path, self.rule, self.got = file, path, rule, got
        text = f"{file}: {path}: {rule}" if path else f"{file}: {rule}"
        if has_got:
            text += f" (got {_show(got)})"
        super().__init__(text)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --- YAML -------------------------------------------------------------------------------------


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


# --- Schema -----------------------------------------------------------------------------------


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


def _high_above_low(high: float, info: ValidationInfo) -> float:
    low = info.data.get("low")
    if low is not None and high <= low:
        raise ValueError(f"high must be > low ({low})")
    return high


class _Bounded(StrictModel):
    low: float
    high: float

    _check_high = field_validator("high")(_high_above_low)


class UniformDomain(_Bounded):
    type: Literal["uniform"]


class LogUniformDomain(_Bounded):
    type: Literal["loguniform"]

    @field_validator("low")
    @classmethod
    def _positive(cls, low: float) -> float:
        if low <= 0:
            raise ValueError("low must be > 0 for loguniform")
        return low


class IntDomain(StrictModel):
    """Integers from low to high, both inclusive."""

    type: Literal["int"]
    low: int
    high: int
    log: bool = False

    _check_high = field_validator("high")(_high_above_low)

    @field_validator("log")
    @classmethod
    def _log_needs_positive(cls, log: bool, info: ValidationInfo) -> bool:
        low = info.data.get("low")
        if log and low is not None and low < 1:
            raise ValueError(f"log: true needs low >= 1 (low is {low})")
        return log


class ChoiceDomain(StrictModel):
    type: Literal["choice"]
    values: list[Any] = Field(min_length=1)


Domain = Annotated[UniformDomain | LogUniformDomain | IntDomain | ChoiceDomain, Field(discriminator="type")]
DOMAIN_TYPES = ("uniform", "loguniform", "int", "choice")


class SamplerSpec(StrictModel):
    """Optuna TPE's settings, stated rather than left to Optuna's defaults (Optuna 5 changed
    several), so a job proposes the same way on another Optuna version. Logged on the parent run."""

    n_startup_trials: int = Field(default=10, ge=0)
    n_ei_candidates: int = Field(default=24, ge=1)
    # One joint density over all parameters instead of one per parameter.
    multivariate: bool = True
    # Trials still running count as bad results, so parallel trials do not all propose alike.
    constant_liar: bool = True
    # Past this many trials TPE looks at the best 25 and the last `window` only, so a proposal
    # costs the same at trial 10,000 as at 500 (tuning_platform/sampler.py); null: all trials.
    window: int | None = Field(default=500, ge=1)


class WarmStartSpec(StrictModel):
    """Earlier jobs whose trials seed the searcher: every job of an experiment, or parent runs."""

    experiment: str | None = None
    parent_runs: list[str] = Field(default_factory=list)

    @field_validator("parent_runs")
    @classmethod
    def _one_source(cls, parent_runs: list[str], info: ValidationInfo) -> list[str]:
        if bool(parent_runs) == bool(info.data.get("experiment")):
            raise ValueError("give either experiment: NAME or parent_runs: [RUN_ID, ...]")
        return parent_runs


class SearchSpec(StrictModel):
    algorithm: Literal["optuna", "random"] = "optuna"
    num_samples: int = Field(default=16, ge=1)
    max_concurrent: int | None = Field(default=None, ge=1)
    seed: int = 0
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    warm_start: WarmStartSpec | None = None
    space: dict[str, Domain] = Field(default_factory=dict)
    fixed: dict[str, Any] = Field(default_factory=dict)


class SchedulerSpec(StrictModel):
    type: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(default=1, ge=1)
    reduction_factor: float = Field(default=3, gt=1)
    max_t: int | None = Field(default=None, ge=1)


class ResourcesSpec(StrictModel):
    cpu: float = Field(default=1, gt=0)
    gpu: float = Field(default=0, ge=0)
    workers: int = Field(default=1, ge=1)

    @field_validator("gpu")
    @classmethod
    def _whole_above_one(cls, gpu: float) -> float:
        if gpu > 1 and gpu != int(gpu):
            raise ValueError("gpu above 1 must be a whole number (Ray packs only fractions of one GPU)")
        return gpu


class TrackingSpec(StrictModel):
    uri: str | None = None
    # None: register under the spec's name; false: do not register.
    register_model: str | Literal[False] | None = None


class FailureSpec(StrictModel):
    max_failures: int = Field(default=1, ge=0)


class BudgetSpec(StrictModel):
    time_s: float | None = Field(default=None, gt=0)


class SelectionSpec(StrictModel):
    """A robust champion: the `top_k` configurations of the search trained again with `seeds`
    new seeds each, to the full epoch budget; the best mean wins."""

    top_k: int = Field(default=3, ge=1)
    seeds: int = Field(default=3, ge=2)


class Spec(StrictModel):
    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    trainable: str = Field(min_length=1)
    metric: str = Field(min_length=1)
    mode: Literal["max", "min"]
    data: dict[str, Any] = Field(default_factory=dict)
    search: SearchSpec = Field(default_factory=SearchSpec)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    failure: FailureSpec = Field(default_factory=FailureSpec)
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    selection: SelectionSpec | None = None
    storage_path: str | None = None

    @property
    def epochs(self) -> int | None:
        """The epochs a trial may train (`search.fixed.epochs`); None when the spec leaves it to
        the trainable, which only a scheduler without a horizon (FIFO) allows."""
        epochs = self.search.fixed.get("epochs")
        return None if epochs is None else int(epochs)

    @property
    def max_t(self) -> int | None:
        """The horizon in epochs: ASHA's `max_t`; None when there is none (FIFO without epochs)."""
        return self.scheduler.max_t or self.epochs

    @property
    def registered_model_name(self) -> str | None:
        if self.tracking.register_model is False:
            return None
        return self.tracking.register_model or self.name


# --- Loading ----------------------------------------------------------------------------------


def load_spec(
    spec: str | Path | Mapping[str, Any],
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


def _read_spec_file(path: str | Path) -> tuple[dict[str, Any], str]:
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
    try:
        spec = Spec.model_validate(raw)
    except ValidationError as err:
        raise _first_error(err, raw, file) from None
    _check_relations(spec, file)
    return spec


def _check_relations(spec: Spec, file: str) -> None:
    """Rules that span several keys, after each key is valid on its own."""
    for param in spec.search.space:
        if not re.match(PARAM_PATTERN, param):
            raise SpecError(file, f"search.space.{param}", "parameter names must be identifiers", param)
    for param in spec.search.fixed:
        if not re.match(PARAM_PATTERN, param):
            raise SpecError(file, f"search.fixed.{param}", "parameter names must be identifiers", param)
    clash = sorted(set(spec.search.space) & set(spec.search.fixed))
    if clash:
        raise SpecError(file, f"search.fixed.{clash[0]}", "is also in search.space; keep one", clash[0])
    if "data" in spec.search.space or "data" in spec.search.fixed:
        raise SpecError(file, "search", "'data' is reserved for the spec's data block", "data")

    epochs = spec.search.fixed.get("epochs")
    if epochs is None and spec.scheduler.type == "asha" and spec.scheduler.max_t is None:
        raise SpecError(
            file,
            "search.fixed.epochs",
            "required by the asha scheduler, which needs a horizon (max_t): set it, or scheduler.max_t, "
            "or use scheduler.type: fifo",
            None,
        )
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise SpecError(file, "search.fixed.epochs", "must be an integer >= 1", epochs)

    if spec.selection is not None and "seed" in spec.search.space:
        raise SpecError(file, "selection", "reseeds the best configurations, so seed cannot be searched", "seed")
    if spec.search.warm_start is not None and spec.search.algorithm != "optuna":
        raise SpecError(
            file, "search.warm_start", "needs algorithm: optuna (random search learns nothing)", spec.search.algorithm
        )
    if spec.search.algorithm == "optuna":
        for param, domain in spec.search.space.items():
            if isinstance(domain, ChoiceDomain):
                for value in domain.values:
                    if not (value is None or isinstance(value, (bool, int, float, str))):
                        raise SpecError(
                            file,
                            f"search.space.{param}.values",
                            "optuna choices must be numbers, strings, booleans or null",
                            value,
                        )

    if spec.scheduler.max_t is not None and spec.epochs is not None and spec.scheduler.max_t > spec.epochs:
        raise SpecError(
            file, "scheduler.max_t", f"must be <= search.fixed.epochs ({spec.epochs})", spec.scheduler.max_t
        )
    if spec.scheduler.type == "asha" and spec.max_t is not None and spec.scheduler.grace_period > spec.max_t:
        raise SpecError(
            file,
            "scheduler.grace_period",
            f"must be <= the epochs a trial may train ({spec.max_t})",
            spec.scheduler.grace_period,
        )
    if spec.resources.workers > 1 and spec.resources.gpu > 1:
        # Each data-parallel worker drives one device; more GPUs per trial means more workers.
        raise SpecError(
            file,
            "resources.gpu",
            f"with workers > 1 it is per worker and must be <= 1 (use workers: "
            f"{spec.resources.workers * math.ceil(spec.resources.gpu)} and gpu: 1 instead)",
            spec.resources.gpu,
        )
    if spec.resources.workers > 1 and 0 < spec.resources.gpu < 1:
        # Workers of one trial would share a GPU, which NCCL refuses ("Duplicate GPU detected").
        raise SpecError(
            file,
            "resources.gpu",
            "with workers > 1 each worker needs a whole GPU (gpu: 1): NCCL refuses two ranks on one GPU; "
            "share GPUs between trials with workers: 1 instead",
            spec.resources.gpu,
        )


# --- Turning pydantic errors into one line ----------------------------------------------------


def _first_error(err: ValidationError, raw: dict[str, Any], file: str) -> SpecError:
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


# --- Conversion to Ray Tune -------------------------------------------------------------------


def to_tune_domain(domain: UniformDomain | LogUniformDomain | IntDomain | ChoiceDomain) -> Any:
    """One spec domain as a Ray Tune search domain (which OptunaSearch converts in turn)."""
    from ray import tune

    if isinstance(domain, UniformDomain):
        return tune.uniform(domain.low, domain.high)
    if isinstance(domain, LogUniformDomain):
        return tune.loguniform(domain.low, domain.high)
    if isinstance(domain, IntDomain):
        # Tune's integer upper bound is exclusive; the spec's is inclusive.
        sampler = tune.lograndint if domain.log else tune.randint
        return sampler(domain.low, domain.high + 1)
    return tune.choice(list(domain.values))


def param_space(spec: Spec, data: dict[str, Any]) -> dict[str, Any]:
    """The Tune `param_space`: sampled domains, fixed constants and the data block."""
    space: dict[str, Any] = {name: to_tune_domain(d) for name, d in spec.search.space.items()}
    space.update(spec.search.fixed)
    space["data"] = data
    return space


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
    return items
