"""One tuning job: connect to Ray, run Optuna TPE + ASHA through a Tuner, record it in MLflow,
register the best model. The CLI in `platform.tune` is a thin layer over `run_job`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from platform.resolve import ResolvedTrainable
from platform.spec import Spec, param_space

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class JobError(Exception):
    """A problem found once Ray is up (resources that can never be met, ...): exit 2."""


@dataclass
class JobRequest:
    spec: Spec
    spec_file: str
    spec_text: str
    trainable: ResolvedTrainable
    data: dict[str, Any]
    tracking_uri: str
    storage_path: str
    address: str | None = None
    smoke_test: bool = False


@dataclass
class TrialRow:
    trial_id: str
    status: str  # completed | early_stopped | failed
    epochs: int
    value: float | None  # best value of the spec's metric over the trial's epochs
    params: dict[str, Any]


@dataclass
class JobOutcome:
    exit_code: int
    rows: list[TrialRow] = field(default_factory=list)
    best: TrialRow | None = None
    experiment_name: str = ""
    experiment_id: str = ""
    parent_run_id: str = ""
    model_name: str | None = None
    model_version: str | None = None
    champion_version: str | None = None
    wall_s: float = 0.0
    experiment_path: str = ""
    notes: list[str] = field(default_factory=list)
    # (name, metrics) of the trainable's simple reference model on the same split
    baseline: tuple[str, dict[str, float]] | None = None


def connect_ray(address: str | None, cpu_per_trial: float) -> None:
    """Join the cluster at `address`, or start an embedded Ray of all local CPUs.

    `address="local"` makes the embedded mode start its own Ray and never attach to a stray
    cluster that happens to run on this machine.
    """
    import ray

    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        return
    cpus = os.cpu_count() or 1
    if cpu_per_trial > cpus:
        raise JobError(f"resources.cpu: a trial asks for {cpu_per_trial:g} CPUs but this machine has {cpus}")
    ray.init(
        address="local",
        num_cpus=cpus,
        include_dashboard=False,
        logging_level=logging.WARNING,
        # Trials import `trainables` from the project, whatever the working directory.
        runtime_env={
            "env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
        },
    )


def fit_resources(spec: Spec, embedded: bool) -> tuple[dict[str, float], list[str]]:
    """Per-trial resources the cluster can satisfy; a GPU ask without GPUs never hangs silently."""
    import ray

    total = ray.cluster_resources()
    notes: list[str] = []
    cpu, gpu = spec.resources.cpu, spec.resources.gpu
    if cpu > total.get("CPU", 0) and not embedded:
        raise JobError(f"resources.cpu: a trial asks for {cpu:g} CPUs; the cluster has {total.get('CPU', 0):g}")
    if gpu > 0 and total.get("GPU", 0) == 0:
        if embedded:
            notes.append(f"warning: resources.gpu={gpu:g} but this machine has no GPU; running trials on CPU")
            gpu = 0.0
        else:
            raise JobError(f"resources.gpu: trials ask for {gpu:g} GPU but the cluster has none")
    return {"cpu": cpu, "gpu": gpu}, notes


def build_search(spec: Spec) -> Any:
    if spec.search.algorithm == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=spec.search.seed))
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=spec.search.seed)


def build_scheduler(spec: Spec) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if spec.scheduler.type == "asha":
        return ASHAScheduler(
            time_attr="epoch",
            max_t=spec.max_t,
            grace_period=spec.scheduler.grace_period,
            reduction_factor=spec.scheduler.reduction_factor,
        )
    return FIFOScheduler()


def run_job(request: JobRequest, tracker: Any) -> JobOutcome:
    """Run the job; `tracker` is a `platform.tracking.JobTracker` for the tracking URI."""
    import ray
    from ray import tune

    # Snapshots are forced by checkpoint retention every epoch on short trials; the warning
    # about it is noise for jobs this size.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    spec = request.spec
    started = time.time()
    connect_ray(request.address, spec.resources.cpu)
    try:
        resources, notes = fit_resources(spec, embedded=not request.address)
        for note in notes:
            print(note, flush=True)
        task = request.trainable.task
        data = dict(request.data)
        dataset = task.load_data(data) if task is not None else None
        baseline = _baseline(task, dataset)
        trainable: Any = request.trainable.function
        if dataset is not None:
            # Loaded once here; Ray ships it to each node once through the object store.
            trainable = tune.with_parameters(trainable, data=dataset)
        trainable = tune.with_resources(trainable, resources)

        run_name = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        tracker.start(
            run_name=run_name,
            tags={
                "spec_file": request.spec_file,
                "trainable": spec.trainable,
                "ray_run_name": run_name,
                "smoke_test": str(request.smoke_test).lower(),
            },
            params=_parent_params(spec, data),
            artifacts={"spec.yaml": request.spec_text, "resolved_spec.yaml": _resolved_yaml(spec)},
        )
        outcome = JobOutcome(
            exit_code=1,
            experiment_name=tracker.experiment_name,
            experiment_id=tracker.experiment_id,
            parent_run_id=tracker.parent_run_id,
            baseline=baseline,
        )
        if baseline is not None:
            name, metrics = baseline
            tracker.log_to_parent(metrics={f"baseline_{k}": v for k, v in metrics.items()}, tags={"baseline": name})
            shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
            print(f"Baseline ({name}) on the same validation split: {shown}", flush=True)
        try:
            results = _fit(spec, request, trainable, data, run_name, tracker)
            outcome.experiment_path = results.experiment_path
            _summarize(spec, results, outcome)
            unfinished = _unfinished_trial_ids(results)
            if unfinished:  # Ctrl-C: Tune stopped the trials and saved its state
                tracker.mark_trials_killed(unfinished)
                tracker.finish("KILLED")
                outcome.exit_code = 130
                outcome.wall_s = time.time() - started
                return outcome
            if outcome.best is not None:
                _register(spec, request, results, dataset, tracker, outcome)
            outcome.exit_code = 0 if outcome.best is not None else 1
            tracker.log_to_parent(
                metrics={f"best_{spec.metric}": outcome.best.value} if outcome.best else {},
                params={f"best.{k}": v for k, v in (outcome.best.params if outcome.best else {}).items()},
                tags={
                    "trials_completed": str(sum(r.status != "failed" for r in outcome.rows)),
                    "trials_failed": str(sum(r.status == "failed" for r in outcome.rows)),
                },
            )
            tracker.finish("FINISHED" if outcome.exit_code == 0 else "FAILED")
        except BaseException:
            tracker.finish("FAILED")
            raise
        outcome.wall_s = time.time() - started
        return outcome
    finally:
        ray.shutdown()


def _baseline(task: Any, dataset: Any) -> tuple[str, dict[str, float]] | None:
    """The trainable's reference model (popularity, logistic regression), once per job."""
    compute = getattr(task, "baseline", None)
    if compute is None or dataset is None:
        return None
    name, metrics = compute(dataset)
    return name, {k: float(v) for k, v in metrics.items()}


def _fit(spec: Spec, request: JobRequest, trainable: Any, data: dict[str, Any], run_name: str, tracker: Any) -> Any:
    from ray import tune

    config = param_space(spec, data)
    config.setdefault("seed", spec.search.seed)
    tuner = tune.Tuner(
        trainable,
        param_space=config,
        tune_config=tune.TuneConfig(
            metric=spec.metric,
            mode=spec.mode,
            search_alg=build_search(spec),
            scheduler=build_scheduler(spec),
            num_samples=spec.search.num_samples,
            max_concurrent_trials=spec.search.max_concurrent,
            # Ray 2.60 defaults to False, and each fresh actor costs seconds.
            reuse_actors=True,
            time_budget_s=spec.budget.time_s,
            # Short trial folders: the default repeats every parameter in the name.
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=run_name,
            storage_path=request.storage_path,
            stop={"epoch": spec.max_t} if spec.max_t < spec.epochs else None,
            callbacks=[tracker.trial_callback(spec.metric, spec.max_t)],
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute=spec.metric, checkpoint_score_order=spec.mode
            ),
            failure_config=tune.FailureConfig(max_failures=spec.failure.max_failures),
        ),
    )
    return tuner.fit()


def _unfinished_trial_ids(results: Any) -> list[str]:
    """Trials an interruption (Ctrl-C) left unfinished, from the state Tune saved last.

    After a Ctrl-C Tune stops the trials and `fit()` returns normally; only the saved experiment
    state still says which trials were running. Remote storage is not read here.
    """
    folder = Path(str(results.experiment_path))
    states = sorted(folder.glob("experiment_state-*.json")) if folder.is_dir() else []
    if not states:
        return []
    unfinished = []
    for entry in json.loads(states[-1].read_text()).get("trial_data", []):
        trial = json.loads(entry[0])
        if trial.get("status") not in ("TERMINATED", "ERROR"):
            unfinished.append(str(trial.get("trial_id")))
    return unfinished


def _trial_dirname(trial: Any) -> str:
    return f"{trial.trainable_name}_{trial.trial_id}"


def _summarize(spec: Spec, results: Any, outcome: JobOutcome) -> None:
    # Imported here: platform.tracking loads MLflow and Ray, which input checks never need.
    from platform.tracking import finished_status

    for result in results:
        history = result.metrics_dataframe
        trial_id = str((result.metrics or {}).get("trial_id") or Path(result.path).name.rsplit("_", 1)[-1])
        epochs = int((result.metrics or {}).get("epoch", 0) or 0)
        value = None
        if history is not None and spec.metric in history:
            series = history[spec.metric].dropna()
            series = series[series.map(math.isfinite)]
            if len(series):
                value = float(series.max() if spec.mode == "max" else series.min())
        status = "failed" if result.error is not None else finished_status(epochs, spec.max_t)
        params = {k: v for k, v in (result.config or {}).items() if k in spec.search.space}
        outcome.rows.append(TrialRow(trial_id, status, epochs, value, params))
    scored = [row for row in outcome.rows if row.value is not None]
    if scored:
        pick = max if spec.mode == "max" else min
        outcome.best = pick(scored, key=lambda row: row.value)


def _register(spec: Spec, request: JobRequest, results: Any, dataset: Any, tracker: Any, outcome: JobOutcome) -> None:
    """Rebuild the best trial's best checkpoint into a model and register it."""
    from trainables.loop import rebuild_model

    name = spec.registered_model_name
    task = request.trainable.task
    if name is None:
        return
    if task is None or dataset is None:
        outcome.notes.append(f"note: {spec.trainable} exposes no TASK, so no model was registered")
        return
    best_result = next(r for r in results if str((r.metrics or {}).get("trial_id")) == outcome.best.trial_id)
    checkpoint = best_result.get_best_checkpoint(spec.metric, spec.mode) or best_result.checkpoint
    if checkpoint is None:
        outcome.notes.append("warning: the best trial left no checkpoint, so no model was registered")
        return
    with checkpoint.as_directory() as directory:
        model, state = rebuild_model(task, directory)
    served = task.serving_model(model, state["info"])
    value = outcome.best.value
    version, champion = tracker.register_model(
        served,
        task.input_example(dataset),
        name,
        spec.metric,
        spec.mode,
        value,
        tags={"trial_id": outcome.best.trial_id, "epoch": str(state["epoch"]), "parent_run_id": tracker.parent_run_id},
        code_paths=[str(PROJECT_ROOT / "trainables")],
    )
    outcome.model_name, outcome.model_version = name, version
    outcome.champion_version = version if champion else tracker.champion_version(name)


def _parent_params(spec: Spec, data: dict[str, Any]) -> dict[str, str]:
    params = {
        "trainable": spec.trainable,
        "metric": spec.metric,
        "mode": spec.mode,
        "search.algorithm": spec.search.algorithm,
        "search.num_samples": str(spec.search.num_samples),
        "search.seed": str(spec.search.seed),
        "scheduler.type": spec.scheduler.type,
        "resources.cpu": str(spec.resources.cpu),
        "resources.gpu": str(spec.resources.gpu),
    }
    params.update({f"data.{k}": str(v) for k, v in data.items()})
    return params


def _resolved_yaml(spec: Spec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
