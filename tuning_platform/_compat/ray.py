"""Ray internals the platform uses (Ray 2.60): Tune's default loggers, its resume hint, a
trial's checkpoint manager, how Tune counts a trial's failures, PBT's exploit; a cluster's GCS,
token and job config; its autoscaler's config, monitor process and status. Each names its
upstream file; tests/test_autoscaling.py, tests/test_cluster_resources.py, tests/test_cluster.py,
tests/test_resume.py, tests/test_node_loss.py and tests/test_pbt.py fail when one changes.

Imports Ray lazily: the CLI's checks import the package without loading Ray.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


class _HideTuneResumeHint(logging.Filter):
    # After Ctrl-C Tune suggests `Tuner.restore(...)`; the job says how to resume it instead.
    # The message of ray/tune/tune.py's logger (Ray 2.60); a changed text shows the hint again.
    def filter(self, record: logging.LogRecord) -> bool:
        return "Resume experiment with" not in record.getMessage()


@contextmanager
def tune_resume_hint_hidden() -> Iterator[None]:
    hint, tune_logger = _HideTuneResumeHint(), logging.getLogger("ray.tune.tune")
    tune_logger.addFilter(hint)
    try:
        yield
    finally:
        tune_logger.removeFilter(hint)


# Tune adds each default logger a run lacks unless this is "1": `_create_default_callbacks`,
# ray/tune/utils/callback.py line 123 in Ray 2.60.
_AUTO_LOGGERS_OFF = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"


@contextmanager
def auto_loggers_off() -> Iterator[None]:
    """Tune's default loggers off while a run is built: with CSV and JSON given, Tune leaves out
    only its TensorBoard logger. MLflow holds the same
    metrics, and tensorboardX cost the driver 1.8 s of imports (it imports torch), a file write
    per result and a writer per trial that `atexit` keeps to the end of the process.

    Set only while the run is built, so a notebook's own Tune runs keep Tune's defaults. A resumed
    run (`restore`) is left as Tune builds it: a job started before this change has no CSV and
    JSON loggers of its own, so there it adds all three again.
    """
    before = os.environ.get(_AUTO_LOGGERS_OFF)
    os.environ[_AUTO_LOGGERS_OFF] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(_AUTO_LOGGERS_OFF, None)
        else:
            os.environ[_AUTO_LOGGERS_OFF] = before


def repoint_checkpoints(trial: Any, exists: Callable[[Any], bool]) -> tuple[bool, Any]:
    """Make a trial restore from its newest kept checkpoint that `exists`, when its latest one
    is gone; (whether it changed anything, the checkpoint result it now restores from or None).

    Ray 2.60 offers no public way to change which checkpoint a trial restores from: this sets
    the `_checkpoint_results` and `_latest_checkpoint_result` of the trial's
    `_CheckpointManager` (ray/train/_internal/checkpoint_manager.py) and drops the trial's
    cached metadata. tests/test_resume.py (a deleted checkpoint) fails if they change.
    """
    manager = trial.run_metadata.checkpoint_manager
    latest = manager.latest_checkpoint_result if manager else None
    if latest is None or exists(latest.checkpoint):
        return False, None
    kept = [result for result in manager._checkpoint_results if exists(result.checkpoint)]
    newest = max(kept, key=lambda result: result.metrics.get("training_iteration", 0), default=None)
    manager._checkpoint_results = kept
    manager._latest_checkpoint_result = newest
    trial.run_metadata.invalidate_cache()
    return True, newest


# --- A trial whose node was lost ----------------------------------------------------------------
#
# How Ray 2.60 counts it: a trial's failure goes to `TuneController._process_trial_failure`
# (ray/tune/execution/tune_controller.py, lines 1339-1361), which calls `trial.handle_error(exc)`
# (ray/tune/experiment/trial.py, line 823) and then retries the trial only while
# `trial.should_recover()` (line 910): `run_metadata.num_failures <= max_failures`. For the
# trial's actor lost with its node, `exc` is a `RayActorError`: `ActorDiedError` when the GCS
# already knew the node was dead, `ActorUnavailableError` ("Socket closed") when the driver lost
# the actor first (a crashed machine, a killed raylet). `_handle_ray_actor_error` (line 806) adds
# one to `num_failures` unless `exc.preempted`, which only an `ActorDiedError` of a node the
# autoscaler drained for pre-emption sets (ray/exceptions.py, lines 515-520; also counted with
# RAY_TRAIN_COUNT_PREEMPTION_AS_FAILURE=1). So Ray spends `FailureConfig.max_failures` on a
# crashed or removed node, and with `max_failures: 0` such a trial ends as an error.


@dataclass(frozen=True)
class LostNode:
    """The node a trial's actor was lost with."""

    node_id: str
    node_ip: str


# Where the record of a trial's last lost node waits for the trial's callbacks: an attribute of
# its `_TemporaryTrialState` (ray/tune/experiment/trial.py, line 157), which Tune never saves.
_LOST_NODE_ATTR = "tuning_platform_lost_node"
_WRAPPER_MARK = "tuning_platform_node_losses_not_counted"
RAYLET_PROBE_TIMEOUT_S = 2.0


@contextmanager
def node_losses_not_counted() -> Iterator[None]:
    """While a Tune run is driven from this process: a trial whose actor was lost with its node
    keeps its count of failures, so `failure.max_failures` counts the trial's own errors only,
    and the lost node is recorded for `take_lost_node`.

    Tune decides on a retry right after `Trial.handle_error` (see above), before any callback
    hears of the failure, so this wraps that method for the run and puts it back after. A run
    that Tune drives elsewhere (a `Tuner` under Ray Client runs on the cluster) keeps Ray's count.
    """
    from ray.tune.experiment.trial import Trial

    original = Trial.handle_error
    lost_ids: set[str] = set()  # nodes found lost: no raylet to ask again

    def handle_error(trial: Any, exc: Any = None) -> None:
        before = trial.run_metadata.num_failures
        original(trial, exc)
        try:
            lost = lost_node(exc, lost_ids)
        except Exception:  # noqa: BLE001 - unknown: Ray's own count stands
            logging.getLogger(__name__).debug("could not tell whether a trial's node was lost", exc_info=True)
            return
        if lost is None:
            return
        lost_ids.add(lost.node_id)
        trial.run_metadata.num_failures = before
        trial.run_metadata.invalidate_cache()
        setattr(trial.temporary_state, _LOST_NODE_ATTR, lost)

    with _replaced(Trial, "handle_error", handle_error, _WRAPPER_MARK):
        yield


@contextmanager
def _replaced(owner: Any, name: str, replacement: Callable[..., Any], mark: str) -> Iterator[None]:
    """`owner.name` (a class's method, a module's function) is `replacement` until the block
    ends, then the original again. A run inside a run finds the outer one's replacement, marked
    with `mark`, and keeps it: it serves both, and the outer run puts the original back."""
    original = getattr(owner, name)
    if getattr(original, mark, False):
        yield
        return
    setattr(replacement, mark, True)
    setattr(owner, name, replacement)
    try:
        yield
    finally:
        setattr(owner, name, original)


def take_lost_node(trial: Any) -> LostNode | None:
    """The node the trial's last attempt was lost with (once: the record is taken), or None."""
    state = getattr(trial, "temporary_state", None)
    lost = getattr(state, _LOST_NODE_ATTR, None)
    if lost is not None:
        delattr(state, _LOST_NODE_ATTR)
    return lost if isinstance(lost, LostNode) else None


def lost_node(error: Any, known_lost: set[str] | frozenset[str] = frozenset()) -> LostNode | None:
    """The node a trial's actor was lost with, when `error` is that loss; None for anything
    else: an exception of the trial's own code (a `RayTaskError`, also when it wraps a helper
    actor's death), or an actor that died on a node that is still there (its process crashed or
    was killed for memory).

    The actor's node comes from the GCS actor table (`ray._private.state.state.actor_table`,
    ray/_private/state.py line 194: its `Address.NodeID`). The node is lost when the GCS says it
    is dead (`ray.nodes()`), or when its raylet refuses or does not answer a connection: right
    after a crash the GCS still lists the node as alive until its health checks give up
    (seconds), while the driver already has the actor's `ActorUnavailableError`.
    """
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    if not isinstance(error, RayActorError) or isinstance(error, RayTaskError) or not error.actor_id:
        return None
    actor = ray._private.state.state.actor_table(error.actor_id) or {}
    node_id = str((actor.get("Address") or {}).get("NodeID") or "")
    node = next((n for n in ray.nodes() if n.get("NodeID") == node_id), None) if node_id else None
    if node is None:
        return None
    address = str(node.get("NodeManagerAddress") or "")
    if node_id in known_lost or not node.get("Alive"):
        return LostNode(node_id, address)
    if _raylet_answers(address, int(node["NodeManagerPort"])):
        return None
    return LostNode(node_id, address)


def _raylet_answers(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=RAYLET_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


# --- The cluster: its token, its GCS, its autoscaler -------------------------------------------


def gcs_probe(address: str, timeout_s: float) -> None:
    """One read from the GCS at `address` (a key nobody writes), as a cluster's first check:
    raises what the GCS answers (`ray.exceptions.AuthenticationError` for a token it refuses).
    `GcsClient` of Ray's Cython core (ray/_raylet.pyx, ray/includes/gcs_client.pxi)."""
    from ray._raylet import GcsClient  # type: ignore[attr-defined]  # no type stubs

    GcsClient(address=address).internal_kv_get(b"tuning-platform-probe", None, timeout=timeout_s)


def auth_token_found() -> bool:
    """Whether a Ray token is where Ray's CLI finds one (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or
    ~/.ray/auth_token), whatever RAY_AUTH_MODE says (ray/_raylet `AuthenticationTokenLoader`)."""
    from ray._raylet import AuthenticationTokenLoader  # type: ignore[attr-defined]

    return bool(AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True))


def enable_token_auth() -> None:
    """What Ray does for a local cluster that has a token
    (ray/_private/authentication/authentication_token_setup.py, `_enable_token_auth`)."""
    from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]

    os.environ["RAY_AUTH_MODE"] = "token"
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def submitted_job_config() -> str | None:
    """The JSON job config `ray job submit` gives its driver in the environment, or None
    (ray/_private/runtime_env/constants.py `RAY_JOB_CONFIG_JSON_ENV_VAR`; ray/_private/worker.py
    reads the same variable in `ray.init`)."""
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    return os.environ.get(RAY_JOB_CONFIG_JSON_ENV_VAR) or None


def gcs_cluster_config() -> Any:
    """The cluster config in the GCS (autoscaler v2 and KubeRay report their node groups there;
    None on other clusters): ray/_private/state.py, `get_cluster_config`."""
    import ray

    return ray._private.state.state.get_cluster_config()


def head_monitor() -> tuple[bool, dict[str, Any] | None] | None:
    """What the head node says of this cluster's monitor process: whether it runs there, and its
    autoscaling config (None: started without one); None when the head cannot be asked."""
    import ray

    gcs_address = ray.get_runtime_context().gcs_address
    reader = ray.remote(monitor_reader()).options(
        num_cpus=0, resources={"node:__internal_head__": 0.001}, max_retries=0
    )
    try:
        found, config = ray.get(reader.remote(gcs_address), timeout=30)
    except Exception:  # noqa: BLE001 - no readable head (Ray Client, a head without the marker)
        return None
    return found, config


def monitor_reader() -> Callable[[str], tuple[bool, dict[str, Any] | None]]:
    """The function `head_monitor` runs on the head node. It is made here, a local function,
    so that Ray ships it by value (the head may not import this package) and a test can run it."""

    def _monitor_on_head(gcs_address: str) -> tuple[bool, dict[str, Any] | None]:
        """Runs on the head node: this cluster's monitor process and its autoscaling config.

        The monitor is started as `monitor.py --gcs-address=... [--autoscaling-config=PATH]`
        (ray/_private/services.py, `start_monitor`, lines 2387 and 2404 in Ray 2.60; v1's
        ray/autoscaler/_private/monitor.py and v2's ray/autoscaler/v2/monitor.py alike). Without
        the config it drives the read-only provider, which never launches a node (v1:
        monitor.py `_initialize_autoscaler`, `BASE_READONLY_CONFIG` with `max_workers: 0`, lines
        108 and 228-234; v2: monitor.py line 333, `ReadOnlyProviderConfigReader`).

        The script's name is matched whole: every node's `log_monitor.py` has the same
        `--gcs-address` (services.py `start_log_monitor`, line 1197), and once process ids wrap
        one of them can come first in `process_iter`'s order, read as a monitor without a config.
        """
        import os

        import psutil
        import yaml

        for process in psutil.process_iter(["cmdline"]):
            args = process.info.get("cmdline") or []
            is_monitor = any(os.path.basename(arg) == "monitor.py" for arg in args)
            if not is_monitor or f"--gcs-address={gcs_address}" not in args:
                continue
            path = next((arg.split("=", 1)[1] for arg in args if arg.startswith("--autoscaling-config=")), None)
            if not path:
                return True, None
            with open(os.path.expanduser(path)) as handle:
                return True, yaml.safe_load(handle)
        return False, None

    return _monitor_on_head


def read_only_node_type(node_id: str) -> str:
    """The type name the read-only provider of a static cluster gives a node: `node_<id>`
    (ray/autoscaler/_private/util.py `format_readonly_node_type`, line 986 in Ray 2.60)."""
    from ray.autoscaler._private.util import format_readonly_node_type

    return str(format_readonly_node_type(node_id))


def autoscaler_status() -> dict[str, Any] | None:
    """The status the cluster's monitor last wrote to the GCS, or None: none written, no Ray
    connected, or a GCS that does not answer. Anything else (a Ray internal renamed) is raised."""
    from ray._private import ray_constants
    from ray.exceptions import RpcError
    from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_initialized

    key = ray_constants.DEBUG_AUTOSCALING_STATUS  # ray/_private/ray_constants.py, line 56 in Ray 2.60
    if not _internal_kv_initialized():  # its client is None until ray.init (ray/experimental/internal_kv.py)
        return None
    try:
        raw = _internal_kv_get(key)
    except (RpcError, OSError):
        # What a GcsClient read raises when the GCS does not answer: RpcError, timeouts included;
        # IOError; ConnectionError through Ray Client (ray/includes/gcs_client.pxi and
        # `check_status_timeout_as_rpc_error` in ray/_raylet.pyx).
        return None
    return json.loads(raw) if raw else None


# --- Population-based training (execution/pbt.py) ------------------------------------------------
#
# Ray 2.60's `PopulationBasedTraining` (ray/tune/schedulers/pbt.py) has no public hook for an
# exploit. `execution/pbt.py` overrides `_exploit(self, tune_controller, trial, trial_to_clone)`
# (line 894) and reads each trial's `_PBTTrialState` (the class at line 33) from
# `self._trial_state` (line 439): `last_result`, the result its last checkpoint was saved with
# (line 42), and `last_score`, its metric then, larger always better (line 38). `_exploit`
# points the trial at the donor's checkpoint through
# `trial.run_metadata.checkpoint_manager._latest_checkpoint_result` (line 963; the attribute of
# ray/train/_internal/checkpoint_manager.py line 70), which `restore_from` sets again to a copy.
# tests/test_pbt.py (`test_the_pbt_internals_the_platform_uses_are_there`) fails if they change.
PBT_EXPLOIT = "_exploit"
PBT_TRIAL_STATE = "_trial_state"


def pbt_last_result(scheduler: Any, trial: Any) -> dict[str, Any]:
    """The result with which PBT last saved `trial`'s checkpoint ({} before its first)."""
    state = getattr(scheduler, PBT_TRIAL_STATE).get(trial)
    return dict(getattr(state, "last_result", None) or {})


def pbt_score(scheduler: Any, trial: Any) -> float:
    """The trial's score at its last perturbation, larger always better (-inf before one)."""
    state = getattr(scheduler, PBT_TRIAL_STATE).get(trial)
    score = getattr(state, "last_score", None)
    return -math.inf if score is None or math.isnan(score) else float(score)


def pbt_saved_checkpoint(scheduler: Any, trial: Any) -> Any:
    """The checkpoint PBT saved for `trial` at its last perturbation in the top quantile, which
    a trial that copies it restores from (None when it has none)."""
    state = getattr(scheduler, PBT_TRIAL_STATE).get(trial)
    return getattr(state, "last_checkpoint", None)


def pbt_replace_saved_checkpoint(scheduler: Any, trial: Any, checkpoint: Any, result: dict[str, Any]) -> None:
    """PBT copies `checkpoint`, reached with `result`, instead of the one it saved for `trial`
    (as `_checkpoint_or_exploit` itself does once a pending save resolves)."""
    state = getattr(scheduler, PBT_TRIAL_STATE)[trial]
    state.last_checkpoint = checkpoint
    state.last_result = dict(result)


def restore_from(trial: Any, checkpoint: Any, metrics: dict[str, Any]) -> None:
    """The trial goes on from `checkpoint` when it starts again, as PBT's `_exploit` arranges it
    for the donor's (there is no public way to say which checkpoint a trial restores from)."""
    from ray.train._internal.session import _TrainingResult

    trial.run_metadata.checkpoint_manager._latest_checkpoint_result = _TrainingResult(
        checkpoint=checkpoint, metrics=metrics
    )
    trial.run_metadata.invalidate_cache()


# Two per-trial costs of Tune's loop (Ray 2.60) that a job of thousands of small trials feels:
#
# - `FIFOScheduler.choose_trial_to_run` (ray/tune/schedulers/trial_scheduler.py, line 163;
#   ASHA and the platform's MO-ASHA inherit it) scans every trial of the run, finished ones
#   too, for a PENDING one and then again for a PAUSED one, several times per trial: its cost
#   grows with the trials done (5 ms a trial at 1,700 trials, about 30 at 10,000). The trials
#   that can wait are all among `TuneController.get_live_trials()` (tune_controller.py, line
#   516: the trials not TERMINATED), a handful.
# - A trial's trainable class is looked up in Ray's registry (ray/tune/registry.py, line 45:
#   a GCS round trip and an unpickle; `validate_trainable` another round trip) about five
#   times per trial (`Trial.__init__`, `create_placement_group_factory`,
#   `TuneController._schedule_trial_actor`, through ray/tune/experiment/trial.py's module
#   names `get_trainable_cls` and `validate_trainable`): 10 ms of the driver's loop per trial.
#   Within one run the name stands for one class: Tune registered it when the Tuner was built.
#
# tests/test_tune_loop.py fails when the names or the choice change.
_SCHEDULER_CHOICE_MARK = "tuning_platform_live_trials_only"


@contextmanager
def tune_loop_per_trial_costs_cut() -> Iterator[None]:
    """While a Tune run is driven from this process: the FIFO choice of the next trial looks at
    the live trials only, and each trainable name's class is looked up once. The same trial is
    chosen as Tune's scan chooses: when one trial waits it is that one; when several do (their
    order in the run's list decides), Tune's own scan runs."""
    from ray.tune.experiment import trial as trial_module
    from ray.tune.experiment.trial import Trial
    from ray.tune.schedulers import FIFOScheduler

    original_choice = FIFOScheduler.choose_trial_to_run
    original_lookup, original_validate = trial_module.get_trainable_cls, trial_module.validate_trainable
    classes: dict[str, Any] = {}
    valid: set[str] = set()

    def choose_trial_to_run(scheduler: Any, tune_controller: Any) -> Any:
        for status in (Trial.PENDING, Trial.PAUSED):
            waiting = [trial for trial in tune_controller.get_live_trials() if trial.status == status]
            if len(waiting) == 1:
                return waiting[0]
            if waiting:
                return original_choice(scheduler, tune_controller)
        return None

    def get_trainable_cls(name: str) -> Any:
        if name not in classes:
            classes[name] = original_lookup(name)
        return classes[name]

    def validate_trainable(trainable_name: str) -> None:
        if trainable_name not in valid:
            original_validate(trainable_name)
            valid.add(trainable_name)

    with (
        _replaced(FIFOScheduler, "choose_trial_to_run", choose_trial_to_run, _SCHEDULER_CHOICE_MARK),
        _replaced(trial_module, "get_trainable_cls", get_trainable_cls, _SCHEDULER_CHOICE_MARK),
        _replaced(trial_module, "validate_trainable", validate_trainable, _SCHEDULER_CHOICE_MARK),
    ):
        yield


# Actor reuse that keeps a job of short trials on one actor (Ray 2.60). With `reuse_actors`,
# every trial Tune stages asks for an actor of its own, and when a finished trial's actor is
# cached first, `TuneController._maybe_reuse_cached_actor` (ray/tune/execution/tune_controller.py,
# lines 931-966) gives the staged trial that cached actor and removes the one it asked for (line
# 953), even when that one already has its resources and its process is starting. Upstream's
# reason (ray-project/ray#36020) is an actor waiting for resources an autoscaler may never bring.
# But when trials are shorter than an actor's start (about a second), the one cached actor wins
# every race: the job runs one trial at a time whatever `resources.cpu` allows, and each actor
# that was starting is killed, 36 of them in 300 trials at 0.25 CPU per trial.
#
# While the patch is on, a staged trial whose own actor has its resources (it is no longer among
# the actor manager's pending actors, `RayActorManager._pending_actors_to_attrs`, line 127) and
# has not started yet (`TuneController._started_actors`, line 130) waits for that actor, and the
# cached one serves the next trial. As before, an actor still waiting for resources is swapped,
# and so is the last trial's once the searcher has none left (`_search_alg.is_finished()` and
# no other trial in `_pending_trials`): no trial would take the cached actor after it.
# tests/test_tune_loop.py fails when these names or the swap change.
_ACTOR_KEEPING_MARK = "tuning_platform_starting_actors_kept"


@contextmanager
def starting_actors_kept() -> Iterator[None]:
    """While a Tune run is driven from this process: an actor that got its resources for a
    trial is kept for it rather than killed when another trial's actor becomes free first, so
    short trials run as many at once as their resources allow (see above). The patch is on
    Tune's class: any other Tune run this process drives meanwhile has it too."""
    from ray.tune.execution.tune_controller import TuneController

    original = TuneController._maybe_reuse_cached_actor

    def maybe_reuse_cached_actor(controller: Any, trial: Any) -> bool:
        try:
            own = controller._trial_to_actor.get(trial)
            starting = (
                own is not None
                and trial not in controller._resetting_trials
                and own not in controller._actor_manager._pending_actors_to_attrs
                and own not in controller._started_actors
            )
            # Asked only of a trial whose actor is starting: this runs a few times a trial.
            last = starting and controller._search_alg.is_finished() and len(controller._pending_trials) <= 1
        except AttributeError:  # a Ray that moved these: its own reuse, never a failed run
            return original(controller, trial)
        return False if starting and not last else original(controller, trial)

    with _replaced(TuneController, "_maybe_reuse_cached_actor", maybe_reuse_cached_actor, _ACTOR_KEEPING_MARK):
        yield
