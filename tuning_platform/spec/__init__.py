"""A job's spec: its schema, how it is read (YAML, `--set`, the smoke test), the rules across
keys, a validation error as one line, and its search space as Ray Tune domains.

Every problem a user can make in a spec becomes one `SpecError` whose text is
`FILE: key.path: rule (got VALUE)`; the CLI prints it as `error: ...` and exits 2 before
anything is started or written. Light: pydantic and PyYAML only.
"""

from tuning_platform.errors import SpecError
from tuning_platform.spec.domains import param_space, to_tune_domain
from tuning_platform.spec.load import (
    MAPPING_SPEC_NAME,
    apply_override,
    load_spec,
    parse_yaml,
    set_value,
    smoke_overrides,
    validate_spec,
)
from tuning_platform.spec.schema import (
    DOMAIN_TYPES,
    ChoiceDomain,
    GridDomain,
    IntDomain,
    LogUniformDomain,
    SamplerSpec,
    Spec,
    UniformDomain,
    spec_settings,
)

__all__ = [
    "DOMAIN_TYPES",
    "MAPPING_SPEC_NAME",
    "ChoiceDomain",
    "GridDomain",
    "IntDomain",
    "LogUniformDomain",
    "SamplerSpec",
    "Spec",
    "SpecError",
    "UniformDomain",
    "spec_settings",
    "apply_override",
    "load_spec",
    "param_space",
    "parse_yaml",
    "set_value",
    "smoke_overrides",
    "to_tune_domain",
    "validate_spec",
]
