"""The best trial as a registered model: rebuilt from its best checkpoint, logged on the parent
run with its code and every requirement that code imports, and the `champion` alias settled.

Champion rule: versions are compared only when they share the metric, the mode and the data
fingerprint (the resolved data block plus the content of the files it names). The alias is
recomputed from the registry after every registration and checked again after it is set, so
two jobs that finish together still leave the best comparable version as the champion.
A `--smoke-test` job registers under `NAME-smoke`, never beside the real versions.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib.metadata
import json
import logging
import math
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient
    from ray.tune import ResultGrid

    from tuning_platform.request import JobRequest
    from tuning_platform.results import TrialRow
    from tuning_platform.tracking import JobTracker

logger = logging.getLogger(__name__)

CHAMPION_ALIAS = "champion"
SMOKE_SUFFIX = "-smoke"
# Version tags the champion rule reads.
METRIC_TAG, VALUE_TAG, MODE_TAG, DATA_TAG = "metric", "metric_value", "mode", "data_fingerprint"


@dataclass
class Registration:
    name: str
    version: str
    champion_version: str | None
    notes: list[str] = field(default_factory=list)
    # The model's scores on the test split no trial saw (`test_accuracy`, ...); empty without one.
    test_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def took_champion(self) -> bool:
        return self.champion_version == self.version

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def register_best(
    request: JobRequest,
    results: ResultGrid,
    dataset: Any,
    tracker: JobTracker,
    best: TrialRow,
    extra_tags: dict[str, str] | None = None,
) -> Registration | None:
    """Rebuild the best trial's best checkpoint into a model, register it and settle the alias.
    None (with a logged note) when there is nothing to register. `best.value` is the figure
    the champion rule compares (with `selection`: the configuration's mean over seeds)."""
    spec = request.spec
    name = spec.registered_model_name
    task = request.trainable.task
    if name is None:
        return None
    if task is None or dataset is None:
        logger.info("note: %s exposes no TASK, so no model was registered", spec.trainable)
        return None
    # Imported here: it imports torch (1.7 s), which a job that registers nothing never needs.
    from trainables.loop import rebuild_model
    from tuning_platform.results import best_checkpoint

    checkpoint = best_checkpoint(spec, results, best.trial_id)
    if checkpoint is None:
        logger.warning("warning: the best trial left no checkpoint, so no model was registered")
        return None
    if request.smoke_test:
        name += SMOKE_SUFFIX
    with checkpoint.as_directory() as directory:
        model, state = rebuild_model(task, directory)
    test_metrics = score_on_test(task, model, state, dataset)
    code = code_paths(request.trainable.module)
    version = _log_model(
        tracker,
        task.serving_model(model, state["info"]),
        task.input_example(dataset),
        name,
        code,
        code_requirements(code),
    )
    tags = {
        METRIC_TAG: spec.metric,
        VALUE_TAG: repr(best.value),
        MODE_TAG: spec.mode,
        DATA_TAG: data_fingerprint(request.data),
        "smoke_test": str(request.smoke_test).lower(),
        "trial_id": best.trial_id,
        "epoch": str(state["epoch"]),
        "parent_run_id": tracker.parent_run_id,
        **{key: repr(value) for key, value in test_metrics.items()},
        **(extra_tags or {}),
    }
    tracker.log_to_parent(metrics=test_metrics)
    for key, value in tags.items():
        tracker.client.set_model_version_tag(name, version, key, value)
    registration = Registration(name, version, settle_champion(tracker.client, name), test_metrics=test_metrics)
    if request.smoke_test:
        registration.notes.append(
            f"note: --smoke-test: registered as {name} (smoke data differs), never as {spec.registered_model_name}"
        )
    champion = registration.champion_version
    if champion and not registration.took_champion:
        held = tracker.client.get_model_version(name, champion)
        if _comparable_key(held) != (spec.metric, spec.mode, tags[DATA_TAG]):
            registration.notes.append(
                f"note: version {version} was trained on other data (or another metric) than champion "
                f"version {champion}, so they were not compared and the champion stays; register other data "
                "under its own name (tracking.register_model)"
            )
    return registration


def score_on_test(task: Any, model: Any, state: dict[str, Any], dataset: Any) -> dict[str, float]:
    """The model's metrics on the dataset's held-out test split, named `test_*` for `val_*`.

    Done once, for the model the job registers: no trial ever had the test split, so this
    score was never used to choose anything.
    """
    import torch

    view = dataset.test_view() if hasattr(dataset, "test_view") else None
    if view is None:
        return {}
    metrics = task.evaluate(model, view, task.loss_fn(state["config"]), torch.device("cpu"))
    return {test_metric_name(key): float(value) for key, value in metrics.items() if math.isfinite(value)}


def test_metric_name(metric: str) -> str:
    """`val_accuracy` scored on the test split is `test_accuracy`."""
    return f"test_{metric.removeprefix('val_')}"


def _log_model(
    tracker: JobTracker, model: Any, input_example: Any, name: str, code: list[str], requirements: list[str]
) -> str:
    """Log the model on the parent run and register it as a new version of `name`.

    A torch module goes through MLflow's pytorch flavor and takes one float tensor (images, ids).
    Anything else is a callable on the raw table (`trainables.tables.TablePredictor`: it encodes
    strings and gaps itself), logged as a python-function model.
    """
    import mlflow
    import mlflow.pyfunc
    import mlflow.pytorch
    import torch
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    is_module = isinstance(model, torch.nn.Module)
    if is_module:
        rows = input_example.to_numpy(dtype="float32") if hasattr(input_example, "to_numpy") else input_example
        with torch.no_grad():
            output = model(torch.tensor(rows, dtype=torch.float32)).numpy()
    else:
        output = model(input_example)
    flavor_arguments = (
        # Pickle takes named table columns as input; MLflow's default (pt2) takes only arrays.
        {"pytorch_model": model, "serialization_format": "pickle"} if is_module else {"python_model": model}
    )
    # `log_model` works on MLflow's active run and global tracking URI; this sets both for the
    # call only and puts back what the caller had (mlflow/tracking/_tracking_service/utils.py,
    # `_use_tracking_uri`; tests/test_api.py fails if it stops restoring the URI).
    with (
        _use_tracking_uri(tracker.tracking_uri),
        mlflow.start_run(run_id=tracker.parent_run_id),
        warnings.catch_warnings(),
    ):
        # MLflow's own check of the input example trips torch's read-only-array warning.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        # Integer id columns (the recommender's) are meant: a missing id is an error anyway.
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
        # The signature is given outright, so type hints on the callable would add nothing.
        warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method")
        flavor = mlflow.pytorch if is_module else mlflow.pyfunc
        signature = infer_signature(input_example, output)
        if not is_module:
            signature = ModelSignature(inputs=_table_inputs(signature.inputs), outputs=signature.outputs)
        with _quiet(logging.getLogger("mlflow.pyfunc"), logging.ERROR):
            # Its cloudpickle caution concerns loading models from strangers; this one is ours.
            info = flavor.log_model(
                name="model",
                signature=signature,
                input_example=input_example,
                code_paths=code,
                # Listed from the code's imports, so MLflow does not infer them in a subprocess.
                pip_requirements=requirements,
                registered_model_name=name,
                **flavor_arguments,
            )
    return str(info.registered_model_version)


def _table_inputs(inferred: Any) -> Any:
    """The input schema of a table model: every feature column by name, of MLflow's `Any` type,
    none required (the model fills a gap in any column).

    Not the inferred `double`/`string`: MLflow enforces a column's declared type before the
    model sees the rows, and no type it has takes the columns a table arrives with. A `double`
    column refuses int64 (`pd.read_csv` of whole numbers), nullable `Int64` and booleans; only
    integers of up to 6 bytes may become doubles (mlflow/models/utils.py,
    `_enforce_mlflow_datatype`: `is_upcast = values.dtype.itemsize <= 6`); `long` refuses floats;
    `string` refuses booleans and `category`. `Any` columns pass as they are, and
    `TablePredictor` reads each one itself: numbers from any numeric, boolean, category or text
    dtype, categories as one spelling per value (`trainables.tables`). JSON to `mlflow models
    serve` is parsed without casting an `Any` column (mlflow/utils/proto_json_utils.py,
    `cast_df_types_according_to_schema`), so integers there are read the same way.
    """
    from mlflow.types import ColSpec, Schema
    from mlflow.types.schema import AnyType

    return Schema([ColSpec(AnyType(), column.name, required=False) for column in inferred.inputs])


@contextlib.contextmanager
def _quiet(log: logging.Logger, level: int) -> Iterator[None]:
    before = log.level
    log.setLevel(level)
    try:
        yield
    finally:
        log.setLevel(before)


# --- What travels with the model ----------------------------------------------------------------


def code_paths(module: Any) -> list[str]:
    """The code a loaded model needs: the `trainables` package, and a user's own trainable
    module (a file, or its package's folder) when it lives outside it."""
    from tuning_platform.cluster import trainables_folder

    paths = [str(trainables_folder())]
    file = getattr(module, "__file__", None)
    if file is None or module.__name__.split(".")[0] == "trainables":
        return paths
    top = sys.modules.get(module.__name__.split(".")[0], module)
    top_file = Path(getattr(top, "__file__", file)).resolve()
    paths.append(str(top_file.parent if top_file.name == "__init__.py" else top_file))
    return paths


def code_requirements(paths: list[str]) -> list[str]:
    """`dist==version` for every installed distribution the code imports when it is loaded
    (module-level imports, class bodies included; not those inside functions, which loading
    does not run), the standard library and the shipped code itself left out."""
    local = {Path(path).stem for path in paths}
    names: set[str] = set()
    for file in _python_files(paths):
        names |= _imported_at_load(ast.parse(file.read_text(), str(file)))
    names -= local | set(sys.stdlib_module_names) | {"__future__"}
    distributions = importlib.metadata.packages_distributions()
    requirements = set()
    for name in names:
        for dist in distributions.get(name, []):
            version = importlib.metadata.version(dist).split("+")[0]  # torch's +cpu is a local build tag
            requirements.add(f"{dist}=={version}")
    return sorted(requirements, key=str.lower)


def _python_files(paths: list[str]) -> Iterator[Path]:
    for path in map(Path, paths):
        yield from sorted(path.rglob("*.py")) if path.is_dir() else [path]


def _imported_at_load(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    pending = list(ast.iter_child_nodes(tree))
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        pending.extend(ast.iter_child_nodes(node))
    return names


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


# --- The champion --------------------------------------------------------------------------------


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
    while True:
        current = _champion(client, name)
        target = best_comparable(versions, current)
        if target is not None and (current is None or str(current.version) != target):
            try:
                client.set_registered_model_alias(name, CHAMPION_ALIAS, target)
            except MlflowException:
                # Two first settings of the alias at once: MLflow's SQL store inserts the alias
                # row without a lock and one insert fails (UNIQUE constraint). Read and try again.
                versions = _versions(client, name)
                continue
            current = client.get_model_version(name, target)
        again = _versions(client, name)
        if {v.version for v in again} == {v.version for v in versions}:
            return None if current is None else str(current.version)
        versions = again


def best_comparable(versions: list[ModelVersion], champion: ModelVersion | None) -> str | None:
    keyed = [v for v in versions if _comparable_key(v) is not None]
    if not keyed:
        return None
    anchor = _comparable_key(champion) if champion is not None else None
    if anchor is None:
        anchor = _comparable_key(max(keyed, key=lambda v: int(v.version)))
    group = [v for v in keyed if _comparable_key(v) == anchor]
    sign = 1 if anchor[1] == "max" else -1
    best = max(group, key=lambda v: (sign * float(v.tags[VALUE_TAG]), -int(v.version)))
    return str(best.version)


def _comparable_key(version: ModelVersion | None) -> tuple[str, str, str] | None:
    tags = version.tags if version is not None else {}
    try:
        value = float(tags.get(VALUE_TAG, "nan"))
    except ValueError:
        return None
    if not all(tags.get(tag) for tag in (METRIC_TAG, MODE_TAG, DATA_TAG)) or not math.isfinite(value):
        return None
    return tags[METRIC_TAG], tags[MODE_TAG], tags[DATA_TAG]


def _versions(client: MlflowClient, name: str) -> list[ModelVersion]:
    return list(client.search_model_versions(f"name = '{name}'"))


def _champion(client: MlflowClient, name: str) -> ModelVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException:
        return None


def champion_version(client: MlflowClient, name: str) -> str | None:
    champion = _champion(client, name)
    return None if champion is None else str(champion.version)
