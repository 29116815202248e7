"""The `champion` alias of a registered model: the best comparable version, settled so that
jobs finishing together still leave the right one.

Versions are compared only when they share the metric, the mode and the data fingerprint (the
resolved data block plus the content of the files it names). The alias is recomputed from the
registry after every registration and checked again after it is set, so two jobs that finish
together still leave the best comparable version as the champion. A `--smoke-test` job
registers under `NAME-smoke`, never beside the real versions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuning_platform.errors import JobError
from tuning_platform.objectives import Objective
from tuning_platform.ranking import score

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

logger = logging.getLogger(__name__)

CHAMPION_ALIAS = "champion"
SMOKE_SUFFIX = "-smoke"
# Version tags the champion rule reads.
METRIC_TAG, VALUE_TAG, MODE_TAG, DATA_TAG = "metric", "metric_value", "mode", "data_fingerprint"
# A version of a job of several objectives or with constraints: the objectives
# (`val_accuracy:max,latency_ms:min`), the constraints (`params <= 200000; ...`), the selection
# rule (`knee`, `prefer:METRIC`), each objective's value (`objective.METRIC`) and its Pareto rank.
# Absent on a one-objective version without constraints, which compares as before.
OBJECTIVES_TAG, CONSTRAINTS_TAG, RULE_TAG = "objectives", "constraints", "selection_rule"
OBJECTIVE_PREFIX = "objective."
# Rounds of "set the alias, read again" a job makes before it gives up: each round that does not
# settle saw another job register or set the alias meanwhile.
SETTLE_ROUNDS = 20


def registered_name(name: str | None, smoke_test: bool) -> str | None:
    """The registered model a job's versions go to: the spec's, or with `--smoke-test` its
    `NAME-smoke`, never beside the real versions."""
    return name + SMOKE_SUFFIX if name is not None and smoke_test else name


def data_fingerprint(data: dict[str, Any]) -> str:
    """The resolved data block, and the content of every file it names (a folder: its files'
    names and sizes), so that versions trained on other data are never compared."""
    digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode())
    for key, value in sorted(data.items()):
        if not isinstance(value, str) or not value:
            continue
        path = Path(value).expanduser()
        if path.is_file():
            digest.update(key.encode())
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        elif path.is_dir():
            digest.update(key.encode())
            for item in sorted(p for p in path.rglob("*") if p.is_file()):
                digest.update(f"{item.relative_to(path)}:{item.stat().st_size}".encode())
    return digest.hexdigest()[:16]


def settle_champion(client: MlflowClient, name: str) -> str | None:
    """Point `champion` at the best version comparable with it, and check again until no
    version appeared meanwhile; returns the champion version.

    Comparable versions share metric, mode and data fingerprint with the current champion (or,
    when there is none or it predates the fingerprint, with the newest fingerprinted version).
    A job whose read missed a version registered by a job finishing beside it reads again
    after its write, so the last write always saw every version.
    """
    from mlflow.exceptions import MlflowException

    versions = _versions(client, name)
    for _ in range(SETTLE_ROUNDS):
        current = _champion(client, name)
        target = best_comparable(versions, current)
        if target is not None and (current is None or str(current.version) != target):
            try:
                client.set_registered_model_alias(name, CHAMPION_ALIAS, target)
            except MlflowException as err:
                if not _alias_race(err):  # no permission, a server that refused: no retry mends it
                    raise JobError(f"registry: the champion alias of {name} could not be set: {err.message}") from None
                # Two first settings of the alias at once: MLflow's SQL store inserts the alias
                # row without a lock and one insert fails (UNIQUE constraint). Read and try again.
                versions = _versions(client, name)
                continue
            current = client.get_model_version(name, target)
        again = _versions(client, name)
        if {v.version for v in again} == {v.version for v in versions}:
            return None if current is None else str(current.version)
        versions = again
    raise JobError(
        f"registry: the champion alias of {name} did not settle in {SETTLE_ROUNDS} rounds: other jobs kept "
        "registering versions of it; run the job again to settle it"
    )


def _alias_race(err: Exception) -> bool:
    """The failure of one of two jobs setting a model's first alias at once: MLflow's SQL store
    turns the database's unique-key refusal into BAD_REQUEST (mlflow/store/db/utils.py,
    `make_managed_session`: any other SQLAlchemy error), with the database's words in it."""
    text = str(err).lower()
    return getattr(err, "error_code", "") == "BAD_REQUEST" and ("unique" in text or "duplicate" in text)


def best_comparable(versions: list[ModelVersion], champion: ModelVersion | None) -> str | None:
    keyed = [v for v in versions if comparable_key(v) is not None]
    if not keyed:
        return None
    anchor = comparable_key(champion) if champion is not None else None
    if anchor is None:
        anchor = comparable_key(max(keyed, key=lambda v: int(v.version)))
    if anchor is None:  # cannot be: `keyed` holds only versions with a key
        return None
    group = [v for v in keyed if comparable_key(v) == anchor]
    if anchor[5] == "knee":
        return _knee_version(group, anchor[3])
    mode = anchor[1]
    best = max(group, key=lambda v: (score(float(v.tags[VALUE_TAG]), mode), -int(v.version)))
    return str(best.version)


def _knee_version(group: list[ModelVersion], objectives_text: str) -> str:
    """Of versions chosen by `knee`, the knee of their non-dominated points (as the rule picks
    a trial from a job's front; the newest first on a tie)."""
    from tuning_platform import pareto
    from tuning_platform.objectives import signed_point

    objectives = objectives_of(objectives_text)
    group = sorted(group, key=lambda v: -int(v.version))
    points = [signed_point([float(v.tags[OBJECTIVE_PREFIX + o.metric]) for o in objectives], objectives) for v in group]
    front = [i for i, rank in enumerate(pareto.nondominated_ranks(points)) if rank == 1]
    return str(group[front[pareto.knee([points[i] for i in front])]].version)


def objectives_of(text: str) -> list[Objective]:
    """`val_accuracy:max,latency_ms:min` (the objectives tag) as objectives."""
    return [Objective(*item.rsplit(":", 1)) for item in text.split(",") if item]


def objectives_text(objectives: list[Objective]) -> str:
    return ",".join(f"{o.metric}:{o.mode}" for o in objectives)


def comparable_key(version: ModelVersion | None) -> tuple[str, str, str, str, str, str] | None:
    return comparable_key_of(version.tags if version is not None else {})


def comparable_key_of(tags: dict[str, str]) -> tuple[str, str, str, str, str, str] | None:
    """What must agree for two versions to be compared: metric, mode, data fingerprint, and for
    a job of several objectives or with constraints its objectives, constraints and rule."""
    try:
        value = float(tags.get(VALUE_TAG, "nan"))
    except ValueError:
        return None
    if not all(tags.get(tag) for tag in (METRIC_TAG, MODE_TAG, DATA_TAG)) or not math.isfinite(value):
        return None
    objectives, rule = tags.get(OBJECTIVES_TAG, ""), tags.get(RULE_TAG, "")
    if rule == "knee":
        try:
            if not all(math.isfinite(float(tags[OBJECTIVE_PREFIX + o.metric])) for o in objectives_of(objectives)):
                return None
        except (KeyError, ValueError, TypeError):
            return None
    return tags[METRIC_TAG], tags[MODE_TAG], tags[DATA_TAG], objectives, tags.get(CONSTRAINTS_TAG, ""), rule


def _versions(client: MlflowClient, name: str) -> list[ModelVersion]:
    return list(client.search_model_versions(f"name = '{name}'"))


def _champion(client: MlflowClient, name: str) -> ModelVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException as err:
        # No alias yet: MLflow's SQL store says INVALID_PARAMETER_VALUE ("alias ... not found"),
        # a tracking server RESOURCE_DOES_NOT_EXIST; anything else (no permission) is an error.
        if err.error_code in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST"):
            return None
        raise


def champion_version(client: MlflowClient, name: str) -> str | None:
    champion = _champion(client, name)
    return None if champion is None else str(champion.version)
