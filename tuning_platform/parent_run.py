"""What a job writes on its parent run: at the start its description, params, tags and spec
(a new job), or the tags of a resume or an extension; its baseline; and at the end the figures
of the search, of `selection` and of the outcome. The job's steps (`job.py`) call these."""

from __future__ import annotations

import getpass
import logging
from typing import Any

import yaml

from tuning_platform.execution.resume import (
    budget_tags,
    driver_tags,
    job_of,
    settings_fingerprint,
    spec_fingerprint,
)
from tuning_platform.outcome import TuneResult
from tuning_platform.records import (
    ENDED,
    EXTENDED_TAG,
    NOTE_TAG,
    RESUMED_TAG,
    RUN_NAME_TAG,
    SETTINGS_HASH_TAG,
    SPEC_HASH_TAG,
    STORAGE_TAG,
    TrialStatus,
)
from tuning_platform.request import JobRequest
from tuning_platform.search.selection import Selection
from tuning_platform.spec import Spec, spec_settings
from tuning_platform.tracking.database import printable
from tuning_platform.tracking.jobs import (
    CHAMPION_AT_END_TAG,
    REGISTERED_MODEL_TAG,
    REGISTERED_VERSION_TAG,
    TRIALS_TAG_PREFIX,
    USER_TAG,
)
from tuning_platform.tracking.parent import JobTracker

logger = logging.getLogger(__name__)


def open_parent_run(
    request: JobRequest,
    tracker: JobTracker,
    run_name: str,
    storage_path: str,
    baseline: tuple[str, dict[str, float]] | None,
) -> None:
    """A new job's parent run, or the parent run of the job `resume` continues."""
    spec, resume = request.spec, request.resume
    if resume and resume.extends:
        tags = {
            RUN_NAME_TAG: run_name,
            SPEC_HASH_TAG: spec_fingerprint(spec),
            EXTENDED_TAG: str(resume.extensions),
            NOTE_TAG: f"{_description(request)} Extended {resume.extensions} time(s).",
            **budget_tags(spec),
            **driver_tags(),
        }
        tracker.reattach(resume.parent_run_id, tags)
        logger.info(
            "Extending job %s by %d trials (MLflow parent run %s)",
            job_of(run_name),
            resume.extend_samples,
            tracker.parent_run_id,
        )
    elif resume:
        tracker.reattach(resume.parent_run_id, {RESUMED_TAG: str(resume.times_resumed + 1), **driver_tags()})
        logger.info("Resuming job %s (MLflow parent run %s)", run_name, tracker.parent_run_id)
    else:
        tracker.start(
            run_name=run_name,
            tags={
                "spec_file": request.spec_file,
                "trainable": spec.trainable,
                "smoke_test": str(request.smoke_test).lower(),
                # The run's description in the MLflow UI.
                NOTE_TAG: _description(request),
                RUN_NAME_TAG: run_name,
                STORAGE_TAG: storage_path,
                SPEC_HASH_TAG: spec_fingerprint(spec),
                SETTINGS_HASH_TAG: settings_fingerprint(spec),
                **budget_tags(spec),
                **_warm_start_tags(request),
                **driver_tags(),
                # Who ran it, as MLflow's own runs record it (its UI's User column, `jobs`).
                USER_TAG: _user(),
            },
            params=_parent_params(spec, request.data),
            # A database password in the spec's tracking.uri stays out of the store's records.
            artifacts={
                "spec.yaml": printable(request.spec_text),
                "resolved_spec.yaml": printable(_resolved_yaml(spec)),
            },
        )
    warm = request.warm_start
    if warm is not None and not resume:
        logger.info(
            "note: warm start from %d earlier jobs: %d trials seed the searcher, %d skipped (they do not fit "
            "this spec's space or fixed values)",
            len(warm.parent_run_ids),
            warm.used,
            warm.skipped,
        )
    if spec.search.algorithm == "grid" and not resume:
        configurations = spec.planned_trials // spec.search.num_samples
        logger.info(
            "note: a grid of %d configurations, run %d time(s) (search.num_samples): %d trials",
            configurations,
            spec.search.num_samples,
            spec.planned_trials,
        )
    if request.resume_command:
        logger.info("Job %s; if it stops, continue it with: %s", run_name, request.resume_command)
    if baseline is not None:
        name, metrics = baseline
        if not resume:  # the parent run has it already
            tracker.log_to_parent(metrics={f"baseline_{k}": v for k, v in metrics.items()}, tags={"baseline": name})
        shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
        logger.info("Baseline (%s) on the same validation split: %s", name, shown)


def log_selection(tracker: JobTracker, spec: Spec, selection: Selection | None) -> dict[str, str]:
    """The chosen configuration of `selection` on the parent run; the tags its model version
    gets (none without a choice)."""
    if selection is None or selection.chosen is None:
        return {}
    chosen = selection.chosen
    metrics = {f"selection.std_{spec.metric}": chosen.std}
    if chosen.mean is not None:
        metrics[f"selection.mean_{spec.metric}"] = chosen.mean
    tracker.log_to_parent(
        metrics=metrics,
        params={f"chosen.{k}": v for k, v in chosen.source.params.items()},
        tags={"selection_chosen_trial": chosen.source.trial_id},
    )
    return {
        "selection_mean": repr(chosen.mean),
        "selection_std": repr(chosen.std),
        "selection_seeds": str(len(chosen.values)),
    }


def log_outcome(tracker: JobTracker, spec: Spec, result: TuneResult) -> None:
    """The best trial's value and params, how many trials ended each way, and what was
    registered (empty: nothing, this time) with the champion of that moment: what
    `tuning-platform jobs` lists without reading a trial run or the registry's versions."""
    best, registration = result.best, result.registration
    chosen = {f"best.{k}": str(v) for k, v in (best.params if best else {}).items()}
    # MLflow refuses to change a param: an extension whose best trial is another keeps the first
    # best's params (all of them, none added: a conditional space's bests may hold different
    # parameters), and every end writes the current best's configuration as tags too, without
    # the tags of parameters the current best does not have.
    logged = tracker.client.get_run(tracker.parent_run_id).data if chosen else None
    first_end = logged is None or not any(key.startswith("best.") for key in logged.params)
    for key in logged.tags if logged is not None else ():
        if key.startswith("best.") and key not in chosen:
            tracker.client.delete_tag(tracker.parent_run_id, key)
    tracker.log_to_parent(
        metrics={f"best_{spec.metric}": best.value} if best and best.value is not None else {},
        params=chosen if first_end else {},
        tags={
            **chosen,
            **{
                f"{TRIALS_TAG_PREFIX}{status}": str(sum(r.status == status for r in result.rows))
                for status in ENDED
                if status != TrialStatus.INTERRUPTED
            },
            REGISTERED_MODEL_TAG: registration.name if registration else "",
            REGISTERED_VERSION_TAG: registration.version if registration else "",
            CHAMPION_AT_END_TAG: (registration.champion_version or "") if registration else "",
        },
    )


def _parent_params(spec: Spec, data: dict[str, Any]) -> dict[str, str]:
    params = {
        "trainable": spec.trainable,
        "metric": spec.metric,
        "mode": spec.mode,
        "search.algorithm": spec.search.algorithm,
        "search.num_samples": str(spec.search.num_samples),
        "search.seed": str(spec.search.seed),
        **{f"search.sampler.{k}": str(v) for k, v in spec.search.sampler.model_dump().items()},
        "scheduler.type": spec.scheduler.type,
        "resources.cpu": str(spec.resources.cpu),
        "resources.gpu": str(spec.resources.gpu),
    }
    params.update({f"data.{k}": str(v) for k, v in data.items()})
    return params


def _description(request: JobRequest) -> str:
    """What the job was, in a sentence or two (Markdown, as the MLflow UI shows it)."""
    spec = request.spec
    search = {"optuna": "Optuna TPE", "random": "random search", "grid": "a grid"}[spec.search.algorithm]
    if spec.search.sampler.type == "nsga2" and spec.search.algorithm == "optuna":
        search = "Optuna NSGA-II"
    scheduler = {
        "asha": "ASHA early stopping",
        "fifo": "no early stopping",
        "pbt": "population-based training",
    }[spec.scheduler.type]
    data = ", ".join(f"{k}={v}" for k, v in request.data.items()) or "its defaults"
    text = (
        f"Tuning job **{spec.name}**: {spec.planned_trials} trials of `{spec.trainable}` proposed by {search} "
        f"with {scheduler}, ranked by `{spec.metric}` ({spec.mode}). Spec `{request.spec_file}`; data: {data}."
    )
    if request.smoke_test:
        text += " Smoke test (shrunk to run in a minute)."
    return f"{spec.description.strip()}\n\n{text}" if spec.description else text


def _user() -> str:
    """Who ran the job: the MLflow user the job authenticates as on a tracking server with users
    (MLFLOW_TRACKING_USERNAME, ~/.mlflow/credentials), else the login name, as MLflow's own runs
    take it (`mlflow.tracking.context`)."""
    from mlflow.utils.credentials import read_mlflow_creds

    if username := read_mlflow_creds().username:
        return username
    try:
        return getpass.getuser()
    except (OSError, KeyError, ImportError):  # no login name in the environment or passwd
        return "unknown"


def _warm_start_tags(request: JobRequest) -> dict[str, str]:
    warm = request.warm_start
    if warm is None:
        return {}
    return {"warm_start_parent_runs": ",".join(warm.parent_run_ids), "warm_start_skipped": str(warm.skipped)}


def _resolved_yaml(spec: Spec) -> str:
    return yaml.safe_dump(spec_settings(spec), sort_keys=False)
