"""The Tune callback that writes each trial as a child run of the job's parent run: params at
its start, its results, its end status, and the nodes it lost on the way. Its writes go through
a `RunWriter`, off Tune's loop."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback
from ray.tune.result import EXPR_RESULT_FILE

from tuning_platform._compat.ray import LostNode, take_lost_node
from tuning_platform.execution.guard import TUNE_RESULT_KEYS, is_diverged, missing_metric_error
from tuning_platform.execution.pbt import Exploit, mutated_params, take_exploits
from tuning_platform.records import (
    CONFIG_METRIC_PREFIX,
    EPOCHS_RUN_TAG,
    ERROR_TAG,
    MOVED_FROM_NODE_IP_TAG,
    MOVED_FROM_NODE_TAG,
    NODE_ID_TAG,
    NODE_IP_TAG,
    NODE_LOSSES_TAG,
    OUTCOME_TAG,
    PARENT_RUN_ID_TAG,
    PBT_CONFIG_TAG,
    PBT_COPIED_EPOCH_METRIC,
    PBT_EXPLOITS_ARTIFACT,
    PBT_EXPLOITS_TAG,
    PBT_LAST_EXPLOIT_TAG,
    RAY_RUN_TAG,
    RESEED_OF_TAG,
    RUN_STATUS,
    TRIAL_ID_TAG,
    TRIAL_STATUS_TAG,
    TrialStatus,
    config_key,
    finished_status,
    last_error_text,
    missing_metric,
    result_step,
    trial_params,
    trial_run_name,
)
from tuning_platform.tracking import writer as run_writer
from tuning_platform.tracking.queries import child_runs, metric_histories
from tuning_platform.tracking.writer import RunWriter

logger = logging.getLogger(__name__)


def result_metrics(result: dict[str, Any]) -> dict[str, float]:
    return {
        key: float(value)
        for key, value in result.items()
        if key not in TUNE_RESULT_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


class TrialRunsCallback(Callback):
    """Writes each trial as a child run: params at start, its results, its end status.

    The writes go through a `RunWriter`, off Tune's event loop; `on_experiment_end` (the end of
    `fit`, also after Ctrl-C) waits for them. The callback is pickled into Tune's saved run
    config and comes back with `--resume`, so it keeps only the tracking URI and ids.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str,
        parent_run_id: str,
        metric: str,
        max_t: int | None,
        ray_run: str = "",
        shown_params: tuple[str, ...] = (),
        reseed: dict[str, str] | None = None,
        required: tuple[str, ...] = (),
    ):
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.metric = metric
        self.max_t = max_t
        # The Ray run the trials belong to (an extended job has several under one parent run).
        self.ray_run = ray_run
        # Searched parameters shown in a trial run's name, in the spec's order.
        self.shown_params = tuple(shown_params)
        # Reseeded runs of `selection` (trial_status=reseed): their config key -> source trial.
        self.reseed = dict(reseed or {})
        # The other metrics a trial must report: further objectives and the constraints' metrics.
        self.required = tuple(required)
        self._writer: RunWriter | None = None
        # Trial runs of this parent so far: the next one is numbered after them.
        self._numbered = 0
        # Trials that have a child run (made by this callback, or by the job it resumes).
        self._known: set[str] = set()
        # The last step already logged per trial, for child runs of a resumed job: a trial
        # resumed from an earlier checkpoint repeats epochs MLflow already has.
        self._logged_until: dict[str, int] = {}
        # And when MLflow has its last one (ms): epochs written later never go before it.
        self._logged_at: dict[str, int] = {}
        self._placed: set[str] = set()
        # The last step logged per trial in this run, and for a trial Tune retried (after its own
        # error or a lost node) the step up to which its new attempt repeats epochs MLflow has:
        # an attempt goes on from the last checkpoint, which may be older than the last result.
        self._last_step: dict[str, int] = {}
        self._repeats_until: dict[str, int] = {}
        # Per trial: the nodes it lost (a resumed job's count included), and the last of them.
        self._node_losses: dict[str, int] = {}
        self._moved_from: dict[str, str] = {}
        # Population-based training: each trial's run name's first word (`t03`, how an exploit
        # names its donor) and how many times it copied another trial (a resumed job's included).
        self._names: dict[str, str] = {}
        self._copies: dict[str, int] = {}
        self._last_ms: dict[str, int] = {}  # when each trial's last result was logged

    def __getstate__(self) -> dict[str, Any]:
        return {
            **self.__dict__,
            "_writer": None,
            "_known": set(),
            "_logged_until": {},
            "_logged_at": {},
            "_placed": set(),
            "_numbered": 0,
            "_last_step": {},
            "_repeats_until": {},
            "_node_losses": {},
            "_moved_from": {},
            "_names": {},
            "_copies": {},
            "_last_ms": {},
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A job saved before a field existed pickled a callback without it (`--resume`).
        for name in ("_last_step", "_repeats_until", "_node_losses", "_moved_from", "_names", "_copies", "_last_ms"):
            state.setdefault(name, {})
        self.__dict__.update(state)

    @property
    def writer(self) -> RunWriter:
        if self._writer is None:
            self._writer = RunWriter(self.tracking_uri)
        return self._writer

    def setup(
        self, stop: Any = None, num_samples: int | None = None, total_num_samples: int | None = None, **info: Any
    ) -> None:
        # Child runs already made for this parent (a resumed job) are reused, never duplicated.
        client = self.writer.client  # the thread has not started yet
        existing = child_runs(client, self.experiment_id, self.parent_run_id)
        self._numbered = len(existing)
        histories = metric_histories(client, [run.info.run_id for run in existing], self.metric)
        copied = [run.info.run_id for run in existing if run.data.tags.get(PBT_EXPLOITS_TAG)]
        copies = metric_histories(client, copied, PBT_COPIED_EPOCH_METRIC) if copied else {}
        for run in existing:
            trial_id = run.data.tags.get(TRIAL_ID_TAG)
            if trial_id:
                self.writer.run_ids[trial_id] = run.info.run_id
                self._known.add(trial_id)
                self._names[trial_id] = (run.info.run_name or "").split(" ", 1)[0]
                # Finished runs too: after a kill, the state Ray saved last can be older than the
                # trial's end, and then the trial runs its last epochs again.
                history = histories[run.info.run_id]
                self._logged_until[trial_id] = max((m.step for m in history), default=0)
                self._logged_at[trial_id] = max((m.timestamp for m in history), default=0)
                if run.info.run_id in copies:
                    self._copies[trial_id] = int(run.data.tags[PBT_EXPLOITS_TAG])
                    self._logged_until[trial_id] = lineage_epoch(history, copies[run.info.run_id])
                losses = run.data.tags.get(NODE_LOSSES_TAG, "")
                if losses.isdigit():
                    self._node_losses[trial_id] = int(losses)
                    self._moved_from[trial_id] = run.data.tags.get(MOVED_FROM_NODE_TAG, "")

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.trial_id in self._known:  # resumed or retried: the same child run goes on
            self.writer.update(trial.trial_id, _mark_running)
            return
        self._known.add(trial.trial_id)
        self._numbered += 1
        experiment_id, trial_id = self.experiment_id, trial.trial_id
        run_name = trial_run_name(self._numbered, trial.config, self.shown_params)
        self._names[trial_id] = run_name.split(" ", 1)[0]
        tags = {
            PARENT_RUN_ID_TAG: self.parent_run_id,
            TRIAL_ID_TAG: trial_id,
            TRIAL_STATUS_TAG: TrialStatus.RUNNING.value,
        }
        if self.ray_run:
            tags[RAY_RUN_TAG] = self.ray_run
        if self.reseed:
            source = self.reseed.get(config_key(trial.config, self.shown_params), "")
            tags.update({TRIAL_STATUS_TAG: TrialStatus.RESEED.value, RESEED_OF_TAG: source})
            run_name = f"{run_name} seed={trial.config.get('seed')} (reseed of {source})"
        params = [Param(k, v) for k, v in trial_params(trial.config).items()]
        # The run's clock is the trial's, not the writer's, which sends it up to LINGER_S later
        # (or after a tracking server's outage).
        started_ms = int(time.time() * 1000)
        tries: list[int] = []
        this_run = f"tags.{TRIAL_ID_TAG} = '{trial_id}' and tags.`{PARENT_RUN_ID_TAG}` = '{self.parent_run_id}'"

        def make(client: MlflowClient) -> str:
            if tries:  # a retry: the store may have made the run before it stopped answering
                made = client.search_runs([experiment_id], filter_string=this_run)
                if made:
                    return made[0].info.run_id
            tries.append(1)
            return client.create_run(experiment_id, start_time=started_ms, run_name=run_name, tags=tags).info.run_id

        self.writer.create(trial_id, make)
        self.writer.log(trial_id, params=params)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if trial.trial_id not in self._known:
            return
        self._log_step(trial, result)
        # PBT decided on this result before the callbacks heard of it: the trial copied another.
        for exploit in take_exploits(trial.trial_id):
            self._log_exploit(exploit)

    def _log_step(self, trial: Any, result: dict) -> None:
        step = result_step(result)
        if step <= self._repeats_until.get(trial.trial_id, 0):
            return  # an epoch a retried trial runs again: its run keeps the first
        if trial.trial_id in self._logged_until:  # a trial of the job this one resumes
            logged = self._logged_until[trial.trial_id]
            if step <= logged:
                return
            if step > logged + 1:
                self._log_missed(trial, logged, step)
            self._logged_until[trial.trial_id] = step
        # When the driver got it, in ms: Tune's own `timestamp` is whole seconds.
        self._log_result(trial, result, step, int(time.time() * 1000))

    def _log_missed(self, trial: Any, logged: int, step: int) -> None:
        """The epochs between the last one MLflow has and the first of a resumed trial: results
        the killed driver had from the trial but had not yet written (its writer lets writes
        gather for LINGER_S), while Ray had saved the checkpoint after them, so they never come
        again. Ray's own record of every result, the trial's `result.json` (flushed per result by
        Tune's JSON logger, restored from storage when the trial starts again), has them."""
        missed: dict[int, dict[str, Any]] = {}
        try:
            lines = (Path(trial.local_path) / EXPR_RESULT_FILE).read_text().splitlines()
        except (AttributeError, OSError):
            lines = []
        for line in lines:
            try:
                result = json.loads(line)
            except ValueError:  # a line the kill cut short
                continue
            epoch = result_step(result) if isinstance(result, dict) else 0
            if logged < epoch < step:
                missed[epoch] = result  # the last report of an epoch is the one kept
        # Ray's `timestamp` is whole seconds, so an epoch read here can seem older than the one
        # before it, which the killed driver wrote with its millisecond clock; MLflow orders a
        # metric's history by time, so each is kept after the last one MLflow has.
        after = self._logged_at.get(trial.trial_id, 0)
        for epoch in sorted(missed):
            result = missed[epoch]
            after = max(int(float(result.get("timestamp", time.time())) * 1000), after + 1)
            self._log_result(trial, result, epoch, after)

    def _log_result(self, trial: Any, result: dict, step: int, timestamp: int) -> None:
        metrics = result_metrics(result)
        if is_diverged(result, self.metric):
            # The search was told the worst possible value; the run keeps what the trial said.
            metrics.pop(self.metric, None)
        tags = []
        if trial.trial_id not in self._placed and result.get("node_id"):
            # Where the trial runs (a data-parallel trial: its rank-0 worker), once per attempt.
            self._placed.add(trial.trial_id)
            tags = [RunTag(NODE_ID_TAG, str(result["node_id"])), RunTag(NODE_IP_TAG, str(result.get("node_ip", "")))]
        for name in mutated_params(trial.trial_id):  # PBT's schedule: the values this epoch trained with
            value = (result.get("config") or {}).get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics[CONFIG_METRIC_PREFIX + name] = float(value)
        self.writer.log(trial.trial_id, [Metric(k, v, timestamp, step) for k, v in metrics.items()], tags)
        self._last_step[trial.trial_id] = max(step, self._last_step.get(trial.trial_id, 0))
        self._last_ms[trial.trial_id] = timestamp

    def _log_exploit(self, exploit: Exploit) -> None:
        """The trial copied another's checkpoint and goes on from that epoch: the copy on its run,
        and its next epochs logged again even where MLflow has them (several values at a step:
        MLflow's chart shows both lineages; `search/study.py` reads the latest of each step)."""
        trial_id = exploit.trial_id
        self._copies[trial_id] = self._copies.get(trial_id, 0) + 1
        line = exploit.line(self._names.get(exploit.donor_id))
        at = self._last_ms.get(trial_id, int(time.time() * 1000)) + 1
        self.writer.log(
            trial_id,
            [Metric(PBT_COPIED_EPOCH_METRIC, float(exploit.donor_epoch), at, exploit.epoch)],
            [
                RunTag(PBT_LAST_EXPLOIT_TAG, line),
                RunTag(PBT_EXPLOITS_TAG, str(self._copies[trial_id])),
                RunTag(PBT_CONFIG_TAG, json.dumps(exploit.config, default=str)),
            ],
        )
        self.writer.update(trial_id, lambda client, run_id: _append_line(client, run_id, PBT_EXPLOITS_ARTIFACT, line))
        self._repeats_until.pop(trial_id, None)
        self._last_step[trial_id] = exploit.donor_epoch
        if trial_id in self._logged_until:
            self._logged_until[trial_id] = exploit.donor_epoch

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Tune retries the trial from its last checkpoint, after an error of its own or with
        its node lost (which Tune was kept from counting, `_compat.ray.node_losses_not_counted`):
        the run stays RUNNING, says which node it moved from, and logs no epoch twice."""
        trial_id = trial.trial_id
        self._repeats_until[trial_id] = max(self._repeats_until.get(trial_id, 0), self._last_step.get(trial_id, 0))
        self._placed.discard(trial_id)  # its next result names the node it runs on now
        if trial_id not in self._known:
            return
        lost = self._note_lost_node(trial)
        if lost is not None:
            logger.info(
                "note: trial %s lost its node %s (%s); it goes on from its last checkpoint, and the "
                "loss does not count against failure.max_failures",
                trial_id,
                lost.node_id,
                lost.node_ip,
            )

    def _note_lost_node(self, trial: Any) -> LostNode | None:
        """Tags the trial's run with the node its last attempt was lost with, if it was."""
        lost = take_lost_node(trial)
        if lost is None:
            return None
        trial_id = trial.trial_id
        if self._moved_from.get(trial_id) != lost.node_id:  # not a retry placed on the dying node again
            self._node_losses[trial_id] = self._node_losses.get(trial_id, 0) + 1
            self._moved_from[trial_id] = lost.node_id
        tags = [
            RunTag(MOVED_FROM_NODE_TAG, lost.node_id),
            RunTag(MOVED_FROM_NODE_IP_TAG, lost.node_ip),
            RunTag(NODE_LOSSES_TAG, str(self._node_losses[trial_id])),
        ]
        self.writer.log(trial_id, tags=tags)
        return lost

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        epochs = result_step(last)
        # Saved by a version without `required`, a resumed callback has none.
        required = [self.metric, *getattr(self, "required", ())]
        status = finished_status(last, required, self.max_t)
        # A reseeded run stays `reseed`, so it never counts as a trial of the search.
        ended_as = TrialStatus.RESEED if self.reseed else status
        tags = [RunTag(TRIAL_STATUS_TAG, ended_as.value), RunTag(EPOCHS_RUN_TAG, str(epochs))]
        if self.reseed:
            tags.append(RunTag(OUTCOME_TAG, status.value))
        if status == TrialStatus.FAILED:
            tags.append(RunTag(ERROR_TAG, missing_metric_error(missing_metric(last, required) or self.metric, last)))
        self._end(trial.trial_id, tags, RUN_STATUS[status])

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.trial_id in self._known:
            self._note_lost_node(trial)
        tags = [RunTag(TRIAL_STATUS_TAG, TrialStatus.FAILED.value), RunTag(ERROR_TAG, last_error_line(trial))]
        self._end(trial.trial_id, tags, "FAILED")

    def _end(self, trial_id: str, tags: list[RunTag], status: str) -> None:
        """A trial run's last record, as `end_run` writes it: the outcome tags (in the batch
        with its last results), then its MLflow status."""
        ended_ms = int(time.time() * 1000)
        self.writer.log(trial_id, tags=tags)
        self.writer.update(trial_id, lambda client, run_id: client.set_terminated(run_id, status, end_time=ended_ms))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        writer = self.writer
        timeout = run_writer.FINAL_FLUSH_TIMEOUT_S
        if not writer.close(timeout):
            logger.warning(
                "warning: the MLflow tracking store %s took no writes for %.0fs at the end of the job; not written: %s",
                self.tracking_uri,
                timeout,
                writer.not_written() or "a write in progress",
            )
        if writer.failures:
            logger.warning(
                "warning: %d MLflow writes failed (first: %s); the trial runs may miss some records",
                len(writer.failures),
                writer.failures[0],
            )


def lineage_epoch(history: list[Metric], copies: list[Metric]) -> int:
    """The epoch a PBT trial's run stands at: that of its latest value, or, when it copied
    another trial after that value, the epoch of the checkpoint it copied (where it goes on)."""
    events = [(m.timestamp, m.step) for m in history] + [(m.timestamp, int(m.value)) for m in copies]
    return max(events, default=(0, 0))[1]


def _append_line(client: MlflowClient, run_id: str, path: str, line: str) -> None:
    """One more line in a text artifact of the run (read back first: a resumed job's callback
    starts without the lines written before)."""
    import tempfile

    text = ""
    folder = path.rpartition("/")[0] or None
    if any(item.path == path for item in client.list_artifacts(run_id, folder)):
        # A download that fails raises: rewriting the file with this line only would lose the others.
        with tempfile.TemporaryDirectory() as local:
            text = Path(client.download_artifacts(run_id, path, local)).read_text()
    client.log_text(run_id, f"{text}{line}\n", path)


def _mark_running(client: MlflowClient, run_id: str) -> None:
    client.log_batch(run_id, tags=[RunTag(TRIAL_STATUS_TAG, TrialStatus.RUNNING.value)])
    client.update_run(run_id, status="RUNNING")


def last_error_line(trial: Any) -> str:
    """The last line of a failed trial's error, as a user would quote it."""
    path = getattr(trial, "error_file", None)
    text = ""
    if path:
        try:
            with open(path) as handle:
                text = handle.read()
        except OSError:
            text = ""
    return last_error_text(text)
