"""The MLflow records of a job, as a contract: the names of tags and params, how a trial ended
(`TrialStatus`), and how runs are named.

Stores that exist hold these strings (a job is resumed, extended and warm-started from them), so
they never change; every module reads and writes them through the names here. Imports nothing
heavy: the CLI's checks, the summary and the tests use it without loading MLflow or Ray.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from enum import Enum
from typing import Any

# --- Tags of a trial run (a child run of the job's parent run) ---------------------------------
PARENT_RUN_ID_TAG = "mlflow.parentRunId"
TRIAL_ID_TAG = "trial_id"
TRIAL_STATUS_TAG = "trial_status"
# The Ray run (experiment folder) the trial belongs to: an extended job has several.
RAY_RUN_TAG = "ray_run"
# A reseeded run of `selection`: the search trial whose configuration it trains again, and how
# the reseeded run itself ended (its trial_status stays `reseed`).
RESEED_OF_TAG = "reseed_of"
OUTCOME_TAG = "outcome"
EPOCHS_RUN_TAG = "epochs_run"
ERROR_TAG = "error"  # a failed trial's (or job's) last error line
# Where the trial's latest attempt ran (a data-parallel trial: its rank-0 worker), when it reports
# `node_id` (the built-in trainables do).
NODE_ID_TAG, NODE_IP_TAG = "node_id", "node_ip"
# A trial whose node was lost (a crashed machine, a pre-empted spot node) and that went on from its
# last checkpoint elsewhere: the last node it lost, and how many nodes it lost in all. Such a loss
# is not the trial's failure: `failure.max_failures` counts the trial's own errors only.
MOVED_FROM_NODE_TAG, MOVED_FROM_NODE_IP_TAG = "moved_from_node", "moved_from_node_ip"
NODE_LOSSES_TAG = "node_losses"
# A trial of a job of several objectives or with constraints (`insight/front.py`): its rank (1: on
# the feasible Pareto front; infeasible trials rank after every feasible one), whether its last
# result meets the constraints ("true"/"false"), and an infeasible one's broken constraints
# ("latency_ms <= 5; params <= 200000").
PARETO_RANK_TAG, FEASIBLE_TAG, VIOLATED_TAG = "pareto_rank", "feasible", "violated"

# A trial of population-based training (`execution/pbt.py`): the values of the parameters PBT
# perturbs, as metrics `config.NAME` at each epoch (step = epoch: MLflow's chart of one is the
# trial's schedule); each time it copied another trial's checkpoint, the epoch of that checkpoint
# as the metric `pbt.copied_epoch` at the trial's epoch then, a line in the artifact
# `pbt/exploits.txt` ("epoch 8: copied trial t03 at epoch 8, lr 0.01 -> 0.012"), the last line
# and the count of copies as tags.
CONFIG_METRIC_PREFIX = "config."
PBT_COPIED_EPOCH_METRIC = "pbt.copied_epoch"
PBT_EXPLOITS_ARTIFACT = "pbt/exploits.txt"
PBT_LAST_EXPLOIT_TAG, PBT_EXPLOITS_TAG = "pbt_last_exploit", "pbt_exploits"
# The searched parameters a PBT trial goes on with after its latest copy, as JSON: its params stay
# those it started with, and `show` reads its configuration at its end from here.
PBT_CONFIG_TAG = "pbt_config"
# The parent run of a PBT job: the best trial's schedule (`pbt/pbt_policy_TRIAL.txt`, the file Ray's
# `PopulationBasedTrainingReplay` replays) and the population's picture; the registered version
# names the schedule's artifact URI in `pbt_schedule`.
PBT_FOLDER, PBT_PICTURE = "pbt", "pbt/population.png"
PBT_SCHEDULE_TAG = "pbt_schedule"

# --- Tags of the parent run that `--resume` reads back -----------------------------------------
SPEC_HASH_TAG = "spec_hash"
RUN_NAME_TAG = "ray_run_name"
STORAGE_TAG = "ray_storage_path"
HOST_TAG = "driver_host"
PID_TAG = "driver_pid"
STARTED_TAG = "driver_started"
RESUMED_TAG = "resumed"
# What an extension may change, and the fingerprint of everything else.
SETTINGS_HASH_TAG = "settings_hash"
SAMPLES_TAG = "budget_num_samples"
TIME_TAG = "budget_time_s"
EXTENDED_TAG = "extended"

# The front's hypervolume on the parent run (step: how many counted trials had ended), and the
# reference point it is measured from ("val_accuracy=0.81, latency_ms=3.2").
HYPERVOLUME_METRIC, HYPERVOLUME_REFERENCE_TAG = "hypervolume", "hypervolume_reference"

# --- The experiment ---------------------------------------------------------------------------
# MLflow 3's UI opens an experiment of this kind on its runs table, not on GenAI traces.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
# The run's description in the MLflow UI.
NOTE_TAG = "mlflow.note.content"

# MLflow refuses longer param values.
MAX_PARAM_LENGTH = 6000
# A trainable's result key set on a diverged result (by the driver's guard), so MLflow and the
# summary can say `diverged` instead of guessing.
DIVERGED_KEY = "diverged"


class TrialStatus(str, Enum):
    """How a trial ended, as its run's `trial_status` tag says (and `TrialRow.status`)."""

    COMPLETED = "completed"
    EARLY_STOPPED = "early_stopped"  # the scheduler (ASHA) cut it before max_t
    DIVERGED = "diverged"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # Ctrl-C, SIGTERM, or a driver that died before it ended
    RUNNING = "running"  # on a run only, while the trial runs
    RESEED = "reseed"  # on a run only: a reseeded run of `selection`, never a search trial

    # A status prints, formats and is written as its value: `f"{status}"` is `completed`.
    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


# The statuses a finished search trial can have, in the order the summary counts them.
ENDED = (
    TrialStatus.COMPLETED,
    TrialStatus.EARLY_STOPPED,
    TrialStatus.DIVERGED,
    TrialStatus.FAILED,
    TrialStatus.INTERRUPTED,
)
# Trials whose configuration is unstable: never the best, never learned from, never averaged.
UNSTABLE = frozenset({TrialStatus.FAILED, TrialStatus.DIVERGED})
# Trials a searcher may learn from.
LEARNED_FROM = frozenset({TrialStatus.COMPLETED, TrialStatus.EARLY_STOPPED})

# MLflow run status of each trial status.
RUN_STATUS = {
    TrialStatus.COMPLETED: "FINISHED",
    TrialStatus.EARLY_STOPPED: "FINISHED",
    TrialStatus.DIVERGED: "FINISHED",
    TrialStatus.FAILED: "FAILED",
    TrialStatus.INTERRUPTED: "KILLED",
}


def result_step(result: dict[str, Any]) -> int:
    """The epoch a result reports (Tune's iteration for a trainable that names none)."""
    return int(result.get("epoch", result.get("training_iteration", 0)) or 0)


def finished_status(last_result: dict[str, Any], metric: str | Sequence[str], max_t: int | None) -> TrialStatus:
    """How a trial that ended without an exception ended: `diverged`, `failed` (it never
    reported the metric, or one of `metric` when several are given: every objective and
    constraint's), `early_stopped` (the scheduler cut it before max_t) or `completed`."""
    if last_result.get(DIVERGED_KEY):
        return TrialStatus.DIVERGED
    if missing_metric(last_result, metric) is not None:
        return TrialStatus.FAILED
    if max_t is None or result_step(last_result) >= max_t:
        return TrialStatus.COMPLETED
    return TrialStatus.EARLY_STOPPED


def missing_metric(result: dict[str, Any], metric: str | Sequence[str]) -> str | None:
    """The first of the metrics the result lacks, or None."""
    names = [metric] if isinstance(metric, str) else list(metric)
    return next((name for name in names if name not in result), None)


def is_search_trial(tags: dict[str, str]) -> bool:
    """A child run made for a trial of the search (not a reseeded run of `selection`)."""
    return TRIAL_ID_TAG in tags and tags.get(TRIAL_STATUS_TAG) != TrialStatus.RESEED


def trial_params(config: dict[str, Any]) -> dict[str, str]:
    """A trial's hyperparameters as MLflow params (the data block is the parent run's)."""
    return {key: str(value)[:MAX_PARAM_LENGTH] for key, value in config.items() if key != "data"}


def config_key(config: dict[str, Any], params: tuple[str, ...]) -> str:
    """The searched parameters of a configuration as one JSON string, to match it by."""
    return json.dumps({name: config.get(name) for name in params}, sort_keys=True, default=str)


def trial_run_name(number: int, config: dict[str, Any], shown: tuple[str, ...], limit: int = 3) -> str:
    """A trial run's name a person can scan in a list: `t07 lr=5.1e-3 adamw` (number, then the
    first searched parameters; a string choice shown bare)."""
    parts = [f"t{number:02d}"]
    for name in shown[:limit]:
        if name not in config:
            continue
        value = config[name]
        parts.append(value if isinstance(value, str) else f"{name}={compact_number(value)}")
    return " ".join(parts)[:120]


def compact_number(value: Any) -> str:
    """5.1e-3, 0.25, 128: short, and as precise as a list of runs needs."""
    if isinstance(value, float):
        if value != 0 and not 1e-2 <= abs(value) < 1e4:
            mantissa, _, exponent = f"{value:.1e}".partition("e")
            return f"{mantissa.removesuffix('.0')}e{int(exponent)}"
        return f"{value:.3g}"
    return str(value)


def last_error_text(text: str) -> str:
    """The last line of an error's text, as a user would quote it."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:500] if lines else "unknown error"


def test_metric_name(metric: str) -> str:
    """The registered model's score on the test split, as the parent run and version hold it:
    `val_accuracy` -> `test_accuracy`."""
    return f"test_{metric.removeprefix('val_')}"
