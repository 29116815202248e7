"""The best trial as a registered model: rebuilt from its best checkpoint, scored once on the
test split, logged on the parent run with its code and requirements, registered, and the
`champion` alias settled (`champion.py`)."""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

from mlflow.exceptions import MlflowException

from tuning_platform._compat.mlflow import tracking_uri_for_the_call
from tuning_platform.contract import SplitDataset, Task
from tuning_platform.execution.results import best_checkpoint, result_of
from tuning_platform.outcome import Registration, TrialRow
from tuning_platform.records import PARETO_RANK_TAG, TRIAL_ID_TAG, test_metric_name
from tuning_platform.registry.champion import (
    CONSTRAINTS_TAG,
    DATA_TAG,
    METRIC_TAG,
    MODE_TAG,
    OBJECTIVE_PREFIX,
    OBJECTIVES_TAG,
    RULE_TAG,
    VALUE_TAG,
    comparable_key,
    comparable_key_of,
    data_fingerprint,
    objectives_text,
    registered_name,
    settle_champion,
)
from tuning_platform.registry.packaging import code_paths, code_requirements
from tuning_platform.tracking.client import store_uri
from tuning_platform.tracking.server_access import refused_registration

if TYPE_CHECKING:
    from ray.tune import ResultGrid

    from tuning_platform.request import JobRequest
    from tuning_platform.search.front import Front
    from tuning_platform.spec import Spec
    from tuning_platform.tracking.parent import JobTracker

logger = logging.getLogger(__name__)


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
    name = registered_name(spec.registered_model_name, request.smoke_test)
    task = request.trainable.task
    if name is None:
        return None
    if task is None or dataset is None:
        logger.info("note: %s exposes no TASK, so no model was registered", spec.trainable)
        return None
    # Imported here: it imports torch (1.7 s), which a job that registers nothing never needs.
    from trainables.loop import Task as LoopTask
    from trainables.loop import rebuild_model

    compared = best.value
    if spec.scheduler.type == "pbt":
        checkpoint, compared = _pbt_checkpoint(spec, results, best.trial_id, compared)
    else:
        checkpoint = best_checkpoint(spec, results, best.trial_id)
    if checkpoint is None:
        logger.warning("warning: the best trial left no checkpoint, so no model was registered")
        return None
    with checkpoint.as_directory() as directory:
        # The checkpoint was written by the trainables' own loop, so its task is a whole one.
        model, state = rebuild_model(cast(LoopTask, task), directory)
    test_metrics = score_on_test(task, model, state, dataset)
    code = code_paths(request.trainable.module)
    try:
        version = _log_model(
            tracker,
            task.serving_model(model, state["info"]),
            task.input_example(dataset),
            name,
            code,
            code_requirements(code),
        )
    except MlflowException as err:
        if err.error_code != "PERMISSION_DENIED":
            raise
        # A tracking server with users: this one may write runs but not this model's versions.
        # The trials and the parent run stand; no retry mends a permission.
        logger.warning(refused_registration(name, err.error_code))
        return None
    tags = {
        METRIC_TAG: spec.metric,
        VALUE_TAG: repr(compared),
        MODE_TAG: spec.mode,
        DATA_TAG: data_fingerprint(request.data),
        "smoke_test": str(request.smoke_test).lower(),
        TRIAL_ID_TAG: best.trial_id,
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
        if comparable_key(held) != comparable_key_of(tags):
            registration.notes.append(
                f"note: version {version} was trained on other data (or another metric) than champion "
                f"version {champion}, so they were not compared and the champion stays; register other data "
                "under its own name (tracking.register_model)"
            )
    return registration


def _pbt_checkpoint(spec: Spec, results: ResultGrid, trial_id: str, value: float | None) -> tuple[Any, float | None]:
    """A PBT trial's checkpoint trained after its last copy of another trial, which its schedule
    describes, and that checkpoint's value (what the champion rule compares)."""
    from tuning_platform.execution.pbt import final_lineage_checkpoint  # imports Ray Tune's PBT

    result = result_of(results, trial_id)
    picked = final_lineage_checkpoint(result, spec.metric, spec.mode) if result is not None else None
    if picked is None:
        return None, value
    checkpoint, metrics = picked
    reached = metrics.get(spec.metric)
    return checkpoint, float(reached) if isinstance(reached, (int, float)) else value


def front_tags(spec: Spec, front: Front | None, registered: TrialRow, source_trial: str) -> dict[str, str]:
    """A version of a job of several objectives or with constraints: what it was chosen among
    and by (the champion compares only versions where these agree), its value of each objective
    (its last ones; with `selection`, the means over seeds) and the Pareto rank of the trial it
    comes from (`source_trial`: itself, or the search trial a reseeded run trained again)."""
    if front is None:
        return {}
    tags = {
        OBJECTIVES_TAG: objectives_text(front.objectives) if spec.multi_objective else "",
        CONSTRAINTS_TAG: "; ".join(c.text for c in front.constraints),
        RULE_TAG: _rule_text(spec.selection_rule, spec.metric) if spec.multi_objective else "",
        **{
            OBJECTIVE_PREFIX + o.metric: repr(registered.finals[o.metric])
            for o in front.objectives
            if o.metric in registered.finals
        },
    }
    point = next((p for p in front.points if p.trial_id == source_trial), None)
    if point is not None:
        tags[PARETO_RANK_TAG] = str(point.rank)
    return {key: value for key, value in tags.items() if value}


def _rule_text(rule: Any, primary: str) -> str:
    """The rule as its version tag: `knee`, or `prefer:METRIC` (also the default rule's, the
    primary objective's, so that a job naming it and one leaving it out compare)."""
    return "knee" if rule == "knee" else f"prefer:{primary}"


def score_on_test(task: Task, model: Any, state: dict[str, Any], dataset: Any) -> dict[str, float]:
    """The model's metrics on the dataset's held-out test split, named `test_*` for `val_*`.

    Done once, for the model the job registers: no trial ever had the test split, so this
    score was never used to choose anything.
    """
    import torch

    view = dataset.test_view() if isinstance(dataset, SplitDataset) else None
    if view is None:
        return {}
    metrics = task.evaluate(model, view, task.loss_fn(state["config"]), torch.device("cpu"))
    return {test_metric_name(key): float(value) for key, value in metrics.items() if math.isfinite(value)}


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
    # call only and puts back what the caller had (`_compat.mlflow.tracking_uri_for_the_call`).
    with (
        tracking_uri_for_the_call(store_uri(tracker.tracking_uri)),
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
