"""MLflow records of a job: one parent run, one nested child run per trial, the registered model.

Only the driver talks to MLflow (a Tune `Callback` runs in the driver), so workers on other
nodes never need to reach the tracking server and a SQLite store sees a single writer per job.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ray.tune import Callback
from ray.tune.result import AUTO_RESULT_KEYS

logger = logging.getLogger(__name__)

PARENT_RUN_ID_TAG = "mlflow.parentRunId"
CHAMPION_ALIAS = "champion"
# Result keys Tune adds itself; the trainable's own keys are what we log.
_SKIPPED_RESULT_KEYS = set(AUTO_RESULT_KEYS) | {"done", "trial_id", "experiment_tag", "should_checkpoint"}
_MAX_PARAM_LENGTH = 6000


def is_better(value: float, than: float, mode: str) -> bool:
    return value > than if mode == "max" else value < than


def finished_status(epochs: int, max_t: int) -> str:
    """A trial that ended without error: `early_stopped` when ASHA cut it before max_t."""
    return "completed" if epochs >= max_t else "early_stopped"


def trial_params(config: dict[str, Any]) -> dict[str, str]:
    """A trial's hyperparameters as MLflow params (the data block is the parent run's)."""
    return {key: str(value)[:_MAX_PARAM_LENGTH] for key, value in config.items() if key != "data"}


def result_metrics(result: dict[str, Any]) -> dict[str, float]:
    return {
        key: float(value)
        for key, value in result.items()
        if key not in _SKIPPED_RESULT_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


class JobTracker:
    """The parent run of one tuning job and everything logged around it."""

    def __init__(self, tracking_uri: str, experiment_name: str):
        self.tracking_uri = tracking_uri
        self._client: MlflowClient | None = None
        self._callback: TrialRunsCallback | None = None
        self.experiment_name = experiment_name
        self.experiment_id = ""
        self.parent_run_id = ""

    @property
    def client(self) -> MlflowClient:
        # Made on first use: opening a SQLite store creates the file, and nothing may be
        # written before the job really starts.
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def start(self, run_name: str, tags: dict[str, str], params: dict[str, str], artifacts: dict[str, str]) -> str:
        experiment = self.client.get_experiment_by_name(self.experiment_name)
        if experiment is None:
            self.experiment_id = self.client.create_experiment(self.experiment_name)
        else:
            self.experiment_id = experiment.experiment_id
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.parent_run_id = run.info.run_id
        self.client.log_batch(
            self.parent_run_id, params=[Param(k, str(v)[:_MAX_PARAM_LENGTH]) for k, v in params.items()]
        )
        for artifact_file, text in artifacts.items():
            self.client.log_text(self.parent_run_id, text, artifact_file)
        return self.parent_run_id

    def trial_callback(self, metric: str, max_t: int) -> TrialRunsCallback:
        self._callback = TrialRunsCallback(self.client, self.experiment_id, self.parent_run_id, metric, max_t)
        return self._callback

    def mark_trials_killed(self, trial_ids: list[str]) -> None:
        """Child runs of trials an interruption left unfinished: KILLED, not RUNNING forever."""
        for trial_id in trial_ids:
            run_id = self._callback.run_ids.get(trial_id) if self._callback else None
            if run_id:
                self.client.log_batch(run_id, tags=[RunTag("trial_status", "interrupted")])
                self.client.set_terminated(run_id, "KILLED")

    def log_to_parent(
        self,
        metrics: dict[str, float] | None = None,
        params: dict[str, str] | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        metrics, params, tags = metrics or {}, params or {}, tags or {}
        now = int(time.time() * 1000)
        self.client.log_batch(
            self.parent_run_id,
            metrics=[Metric(k, v, now, 0) for k, v in metrics.items() if v is not None and math.isfinite(v)],
            params=[Param(k, str(v)[:_MAX_PARAM_LENGTH]) for k, v in params.items()],
            tags=[RunTag(k, str(v)) for k, v in tags.items()],
        )

    def finish(self, status: str) -> None:
        """status: FINISHED, FAILED or KILLED."""
        self.client.set_terminated(self.parent_run_id, status)

    def register_model(
        self,
        model: Any,
        input_example: Any,
        registered_name: str,
        metric: str,
        mode: str,
        value: float,
        tags: dict[str, str],
        code_paths: list[str],
    ) -> tuple[str, bool]:
        """Log the model on the parent run and register it as a new version.

        Returns the version and whether it became the `champion`: the alias moves only when
        this version beats the current champion on the same metric.
        """
        import mlflow
        import mlflow.pytorch
        import torch
        from mlflow.models import infer_signature

        rows = input_example.to_numpy(dtype="float32") if hasattr(input_example, "to_numpy") else input_example
        with torch.no_grad():
            output = model(torch.tensor(rows, dtype=torch.float32)).numpy()
        mlflow.set_tracking_uri(self.tracking_uri)
        with mlflow.start_run(run_id=self.parent_run_id), warnings.catch_warnings():
            # MLflow's own check of the input example trips torch's read-only-array warning.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            # Integer id columns (the recommender's) are meant: a missing id is an error anyway.
            warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
            signature = infer_signature(input_example, output)
            info = mlflow.pytorch.log_model(
                model,
                name="model",
                signature=signature,
                input_example=input_example,
                code_paths=code_paths,
                # Pickle takes named table columns as input; MLflow's default (pt2) takes only arrays.
                serialization_format="pickle",
                # Explicit so MLflow does not spend seconds inferring them in a subprocess.
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy", "pandas"],
                registered_model_name=registered_name,
            )
        version = str(info.registered_model_version)
        version_tags = {"metric": metric, "metric_value": repr(value), "mode": mode, **tags}
        for key, tag_value in version_tags.items():
            self.client.set_model_version_tag(registered_name, version, key, tag_value)

        champion = self._champion(registered_name)
        takes_alias = (
            champion is None
            or champion.tags.get("metric") != metric
            or is_better(value, float(champion.tags.get("metric_value", "nan")), mode)
            or math.isnan(float(champion.tags.get("metric_value", "nan")))
        )
        if takes_alias:
            self.client.set_registered_model_alias(registered_name, CHAMPION_ALIAS, version)
        return version, takes_alias

    def _champion(self, registered_name: str) -> Any | None:
        try:
            return self.client.get_model_version_by_alias(registered_name, CHAMPION_ALIAS)
        except MlflowException:
            return None

    def champion_version(self, registered_name: str) -> str | None:
        champion = self._champion(registered_name)
        return None if champion is None else str(champion.version)


class TrialRunsCallback(Callback):
    """Writes each trial as a child run: params at start, one batched write per result."""

    def __init__(self, client: MlflowClient, experiment_id: str, parent_run_id: str, metric: str, max_t: int):
        self.client = client
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.metric = metric
        self.max_t = max_t
        self.run_ids: dict[str, str] = {}
        self._placed: set[str] = set()

    def setup(self, **info: Any) -> None:
        # Child runs already made for this parent (a resumed job) are reused, never duplicated.
        for run in self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{PARENT_RUN_ID_TAG}` = '{self.parent_run_id}'",
            max_results=50000,
        ):
            trial_id = run.data.tags.get("trial_id")
            if trial_id:
                self.run_ids[trial_id] = run.info.run_id

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.trial_id in self.run_ids:
            return
        run = self.client.create_run(
            self.experiment_id,
            run_name=str(trial),
            tags={PARENT_RUN_ID_TAG: self.parent_run_id, "trial_id": trial.trial_id, "trial_status": "running"},
        )
        self.run_ids[trial.trial_id] = run.info.run_id
        params = trial_params(trial.config)
        self.client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        run_id = self.run_ids.get(trial.trial_id)
        if run_id is None:
            return
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        timestamp = int(float(result.get("timestamp", time.time())) * 1000)
        metrics = [Metric(k, v, timestamp, step) for k, v in result_metrics(result).items()]
        tags = []
        if trial.trial_id not in self._placed and result.get("node_id"):
            # Where the trial ran (a data-parallel trial: its rank-0 worker), once per trial.
            self._placed.add(trial.trial_id)
            tags = [RunTag("node_id", str(result["node_id"])), RunTag("node_ip", str(result.get("node_ip", "")))]
        self.client.log_batch(run_id, metrics=metrics, tags=tags)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self.run_ids.get(trial.trial_id)
        if run_id is None:
            return
        last = trial.last_result or {}
        epochs = int(last.get("epoch", last.get("training_iteration", 0)))
        status = finished_status(epochs, self.max_t)
        self.client.log_batch(run_id, tags=[RunTag("trial_status", status), RunTag("epochs_run", str(epochs))])
        self.client.set_terminated(run_id, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self.run_ids.get(trial.trial_id)
        if run_id is None:
            return
        tags = [RunTag("trial_status", "failed"), RunTag("error", last_error_line(trial))]
        self.client.log_batch(run_id, tags=tags)
        self.client.set_terminated(run_id, "FAILED")


def last_error_line(trial: Any) -> str:
    """The last non-empty line of a failed trial's error, as a user would quote it."""
    path = getattr(trial, "error_file", None)
    text = ""
    if path:
        try:
            with open(path) as handle:
                text = handle.read()
        except OSError:
            text = ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:500] if lines else "unknown error"
