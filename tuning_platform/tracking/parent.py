"""The parent run of one tuning job: opened (or reattached by `--resume`), written to, and ended
whatever way the job ends; the trial runs it still has RUNNING are closed with it."""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tuning_platform._compat.mlflow import set_new_experiments_artifact_root
from tuning_platform.errors import JobError
from tuning_platform.records import (
    ERROR_TAG,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    MAX_PARAM_LENGTH,
    OUTCOME_TAG,
    RUN_STATUS,
    TRIAL_ID_TAG,
    TRIAL_STATUS_TAG,
    TrialStatus,
)
from tuning_platform.tracking.client import artifacts_beside_store, first_use_lock, open_client
from tuning_platform.tracking.queries import child_runs
from tuning_platform.tracking.writer import flush_run_writers

if TYPE_CHECKING:
    from tuning_platform.tracking.callback import TrialRunsCallback


class JobTracker:
    """The parent run of one tuning job and everything logged around it."""

    def __init__(self, tracking_uri: str, experiment_name: str):
        self.tracking_uri = tracking_uri
        self._client: MlflowClient | None = None
        self.experiment_name = experiment_name
        self.experiment_id = ""
        self.parent_run_id = ""

    @property
    def client(self) -> MlflowClient:
        # Made on first use: opening a SQLite store creates the file, and nothing may be
        # written before the job really starts.
        if self._client is None:
            self._client = open_client(self.tracking_uri)
        return self._client

    def start(self, run_name: str, tags: dict[str, str], params: dict[str, str], artifacts: dict[str, str]) -> str:
        try:
            return self._start(run_name, tags, params, artifacts)
        except MlflowException as err:
            # A tracking server with users, whose permission the pre-flight could not ask
            # (`server_access`): nothing of the job was written yet.
            if err.error_code != "PERMISSION_DENIED":
                raise
            raise JobError(
                f"MLflow refused to create the experiment or a run in {self.experiment_name!r} "
                f"({err.error_code}): a job needs EDIT on its experiment; ask an MLflow admin to grant it"
            ) from None

    def _start(self, run_name: str, tags: dict[str, str], params: dict[str, str], artifacts: dict[str, str]) -> str:
        with first_use_lock(self.tracking_uri):
            experiment = self.client.get_experiment_by_name(self.experiment_name)
            if experiment is None:
                if (root := artifacts_beside_store(self.tracking_uri)) is not None:
                    set_new_experiments_artifact_root(self.client, root)
                self.experiment_id = self.client.create_experiment(self.experiment_name)
            else:
                self.experiment_id = experiment.experiment_id
        # MLflow 3's UI opens an experiment of this kind on its runs table, not on GenAI traces.
        self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.parent_run_id = run.info.run_id
        self.client.log_batch(
            self.parent_run_id, params=[Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()]
        )
        for artifact_file, text in artifacts.items():
            self.client.log_text(self.parent_run_id, text, artifact_file)
        return self.parent_run_id

    def reattach(self, parent_run_id: str, tags: dict[str, str]) -> None:
        """Continue an unfinished job's parent run (`--resume`): RUNNING again, never a new one."""
        run = self.client.get_run(parent_run_id)
        self.parent_run_id = parent_run_id
        self.experiment_id = run.info.experiment_id
        self.client.update_run(parent_run_id, status="RUNNING")
        self.client.log_batch(parent_run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def trial_callback(
        self,
        metric: str,
        max_t: int | None,
        ray_run: str = "",
        shown_params: tuple[str, ...] = (),
        reseed: dict[str, str] | None = None,
        required: tuple[str, ...] = (),
    ) -> TrialRunsCallback:
        # Imported here: it imports Ray Tune (seconds), which a process that only opens, reads
        # or closes runs (the checks of `--resume`, a second job's store) never needs.
        from tuning_platform.tracking.callback import TrialRunsCallback

        return TrialRunsCallback(
            self.tracking_uri,
            self.experiment_id,
            self.parent_run_id,
            metric,
            max_t,
            ray_run,
            shown_params,
            reseed,
            required,
        )

    def close_trial_runs(self, statuses: dict[str, TrialStatus], errors: dict[str, str] | None = None) -> None:
        """Every child run still RUNNING gets its trial's final status.

        The Tune callback does this as trials end; what it could not (the driver was killed
        between a trial's end and its record, or Ctrl-C stopped trials mid-epoch) is settled
        here. A trial Tune no longer knows of (started after Ray's last saved state) and a
        trial an interruption left unfinished are KILLED with `trial_status=interrupted`.
        """
        errors = errors or {}
        flush_run_writers()  # the trial callback's writes still queued
        for run in child_runs(self.client, self.experiment_id, self.parent_run_id, status="RUNNING"):
            trial_id = run.data.tags.get(TRIAL_ID_TAG, "")
            status = TrialStatus(statuses.get(trial_id, TrialStatus.INTERRUPTED))
            # A reseeded run of `selection` keeps its status and says how it ended beside it.
            reseeded = run.data.tags.get(TRIAL_STATUS_TAG) == TrialStatus.RESEED
            tags = [RunTag(OUTCOME_TAG if reseeded else TRIAL_STATUS_TAG, status.value)]
            if trial_id in errors:
                tags.append(RunTag(ERROR_TAG, errors[trial_id][:500]))
            end_run(self.client, run.info.run_id, tags, RUN_STATUS[status])

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
            params=[Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()],
            tags=[RunTag(k, str(v)) for k, v in tags.items()],
        )

    def log_bytes(self, content: bytes, artifact_file: str) -> None:
        """A file (a picture) on the parent run, at `artifact_file` (`folder/name.png`)."""
        folder, _, name = artifact_file.rpartition("/")
        with tempfile.TemporaryDirectory() as tmp:
            path = f"{tmp}/{name}"
            with open(path, "wb") as handle:
                handle.write(content)
            self.client.log_artifact(self.parent_run_id, path, artifact_path=folder or None)

    def finish(self, status: str, error: str | None = None) -> None:
        """status: FINISHED, FAILED or KILLED; a failed job says why in its `error` tag."""
        if error:
            self.client.set_tag(self.parent_run_id, ERROR_TAG, error[:500])
        self.client.set_terminated(self.parent_run_id, status)

    @contextmanager
    def closed_on_error(self) -> Iterator[None]:
        """The parent run's end when the job does not reach its own: KILLED on Ctrl-C or
        SIGTERM (a second one: Tune stopped without saving its last state), FAILED with the
        error on anything else; the trial runs still RUNNING get the same."""
        try:
            yield
        except KeyboardInterrupt:
            self.close_trial_runs({})
            self.finish("KILLED")
            raise
        except BaseException as err:
            self.close_trial_runs({})
            self.finish("FAILED", error=f"{type(err).__name__}: {err}")
            raise


def end_run(client: MlflowClient, run_id: str, tags: list[RunTag], status: str) -> None:
    """A trial run's last record: its outcome tags, then its MLflow status."""
    client.log_batch(run_id, tags=tags)
    client.set_terminated(run_id, status)
