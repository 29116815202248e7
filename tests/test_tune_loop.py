"""The per-trial costs of Tune's loop the platform cuts (`_compat/ray.tune_loop_per_trial_costs_cut`):
the FIFO choice of the next trial over the live trials only, and one registry lookup per
trainable name. The choice must be the one Tune's own scan makes, and the Ray internals it
replaces must still be where it replaces them. And actor reuse that lets short trials run as
many at once as their resources allow (`_compat/ray.starting_actors_kept`)."""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from typing import Any

import pytest
from ray.tune.experiment import trial as trial_module
from ray.tune.experiment.trial import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from tests.helpers import assert_ok, job_runs, run_cli, write_spec
from tuning_platform._compat.ray import starting_actors_kept, tune_loop_per_trial_costs_cut


@dataclass(eq=False)
class FakeTrial:
    status: str


@dataclass
class FakeController:
    """What a scheduler's `choose_trial_to_run` sees of Tune's controller: every trial in the
    run's order, and the set of those not TERMINATED."""

    trials: list[FakeTrial] = field(default_factory=list)

    def get_trials(self) -> list[FakeTrial]:
        return self.trials

    def get_live_trials(self) -> set[FakeTrial]:
        return {trial for trial in self.trials if trial.status != Trial.TERMINATED}


def test_the_internals_it_replaces_are_where_it_replaces_them():
    """A Ray that moves them fails here, not by quietly scanning every trial again."""
    from ray.tune.execution.tune_controller import TuneController

    from tuning_platform.execution.mo_asha import MultiObjectiveASHA

    assert "for trial in tune_controller.get_trials()" in inspect.getsource(FIFOScheduler.choose_trial_to_run)
    # ASHA and the platform's MO-ASHA choose as FIFO does.
    assert ASHAScheduler.choose_trial_to_run is FIFOScheduler.choose_trial_to_run
    assert MultiObjectiveASHA.choose_trial_to_run is FIFOScheduler.choose_trial_to_run
    assert "self._live_trials" in inspect.getsource(TuneController.get_live_trials)
    # Trial calls these by its module's names, where the patch puts the cached ones.
    assert "get_trainable_cls(self.trainable_name)" in inspect.getsource(Trial.get_trainable_cls)
    assert callable(trial_module.get_trainable_cls) and callable(trial_module.validate_trainable)


def shapes() -> list[list[str]]:
    done, pending, paused, running = Trial.TERMINATED, Trial.PENDING, Trial.PAUSED, Trial.RUNNING
    return [
        [done] * 50 + [running, pending, running],  # the usual step: one waits
        [done] * 50 + [running, running],  # none waits
        [done, pending, done, paused, running],  # a pending one goes before a paused one
        [paused, done, running],
        [done, pending, running, pending, pending],  # several wait: the first in the run's order
        [paused, done, paused],
        [],
    ]


@pytest.mark.parametrize("statuses", shapes())
def test_the_trial_chosen_is_the_one_tunes_own_scan_chooses(statuses):
    controller = FakeController([FakeTrial(status) for status in statuses])
    tunes = FIFOScheduler().choose_trial_to_run(controller)  # type: ignore[arg-type]
    with tune_loop_per_trial_costs_cut():
        ours = FIFOScheduler().choose_trial_to_run(controller)  # type: ignore[arg-type]
        assert ASHAScheduler(max_t=3).choose_trial_to_run(controller) is ours  # type: ignore[arg-type]
    assert ours is tunes


def test_only_the_live_trials_are_looked_at_when_one_waits():
    class Untouchable(FakeTrial):
        @property
        def status(self) -> str:  # type: ignore[override]
            raise AssertionError("a finished trial was looked at")

        @status.setter
        def status(self, value: str) -> None:
            pass

    waiting = FakeTrial(Trial.PENDING)
    controller = FakeController([Untouchable(Trial.TERMINATED) for _ in range(100)] + [waiting])
    controller.get_live_trials = lambda: {waiting}  # type: ignore[method-assign]
    with tune_loop_per_trial_costs_cut():
        assert FIFOScheduler().choose_trial_to_run(controller) is waiting  # type: ignore[arg-type]


def test_a_trainable_is_looked_up_once_per_name_and_the_originals_come_back(monkeypatch):
    looked_up: list[str] = []
    validated: list[str] = []

    def lookup(name: str) -> Any:
        looked_up.append(name)
        return f"class of {name}"

    monkeypatch.setattr(trial_module, "get_trainable_cls", lookup)
    monkeypatch.setattr(trial_module, "validate_trainable", validated.append)
    with tune_loop_per_trial_costs_cut():
        assert [trial_module.get_trainable_cls(name) for name in ("a", "a", "b", "a")] == [
            "class of a",
            "class of a",
            "class of b",
            "class of a",
        ]
        for name in ("a", "a", "b"):
            trial_module.validate_trainable(name)
    assert looked_up == ["a", "b"] and validated == ["a", "b"]
    assert trial_module.get_trainable_cls is lookup
    assert trial_module.validate_trainable == validated.append
    assert FIFOScheduler.choose_trial_to_run.__qualname__ == "FIFOScheduler.choose_trial_to_run"


def test_a_run_inside_a_run_keeps_the_outer_ones_patch():
    with tune_loop_per_trial_costs_cut():
        outer = FIFOScheduler.choose_trial_to_run
        with tune_loop_per_trial_costs_cut():
            assert FIFOScheduler.choose_trial_to_run is outer
        assert FIFOScheduler.choose_trial_to_run is outer


# --- Actor reuse: an actor that is starting for its trial is kept ------------------------------


def test_the_actor_swap_it_changes_is_where_it_changes_it():
    """A Ray that renames these, or no longer swaps a staged trial's own actor for a cached one,
    fails here: then `starting_actors_kept` either breaks or is no longer needed."""
    from ray.air.execution._internal.actor_manager import RayActorManager
    from ray.tune.execution.tune_controller import TuneController

    reuse = inspect.getsource(TuneController._maybe_reuse_cached_actor)
    assert "if trial in self._resetting_trials:" in reuse
    assert "original_actor = self._trial_to_actor.pop(trial)" in reuse
    assert "self._remove_actor(tracked_actor=original_actor)" in reuse
    controller = inspect.getsource(TuneController.__init__)
    assert "self._started_actors" in controller and "self._trial_to_actor" in controller
    assert "self._search_alg.is_finished()" in inspect.getsource(TuneController._maybe_cache_trial_actor)
    assert "self._pending_trials" in controller and "self._actor_manager" in controller
    assert "self._started_actors.add(tracked_actor)" in inspect.getsource(TuneController._actor_started)
    # A trial the patch leaves waiting is offered the cached actor again on a later step.
    adding = inspect.getsource(TuneController._maybe_add_actors)
    assert "if not self._maybe_reuse_cached_actor(start_trial):" in adding
    assert "self._resources_to_pending_trials[resource].add(start_trial)" in adding
    assert "self._pending_actors_to_attrs" in inspect.getsource(RayActorManager.__init__)
    assert "self._pending_actors_to_attrs.pop(tracked_actor)" in inspect.getsource(RayActorManager._try_start_actors)


@dataclass
class FakeActorManager:
    _pending_actors_to_attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class FakeTuneController:
    """What the patched `_maybe_reuse_cached_actor` reads of Tune's controller."""

    _trial_to_actor: dict[str, str] = field(default_factory=dict)
    _resetting_trials: set[str] = field(default_factory=set)
    _started_actors: set[str] = field(default_factory=set)
    _actor_manager: FakeActorManager = field(default_factory=FakeActorManager)
    _pending_trials: set[str] = field(default_factory=set)
    finished: bool = False

    @property
    def _search_alg(self) -> Any:
        return self

    def is_finished(self) -> bool:
        return self.finished


@pytest.mark.parametrize(
    ("trial", "swapped"),
    [
        ("starting", False),  # its own actor has its resources: it waits for it
        ("waiting", True),  # its own actor waits for resources (an autoscaler's node): swapped
        ("new", True),  # no actor yet: a cached one serves it
        ("resetting", True),  # already reusing one: Tune's own answer
        ("started", True),
    ],
)
def test_only_a_trial_whose_own_actor_is_starting_keeps_it(monkeypatch, trial, swapped):
    from ray.tune.execution.tune_controller import TuneController

    asked: list[str] = []
    monkeypatch.setattr(TuneController, "_maybe_reuse_cached_actor", lambda controller, t: asked.append(t) or True)
    controller = FakeTuneController(
        _trial_to_actor={"starting": "a1", "waiting": "a2", "resetting": "a3", "started": "a4"},
        _resetting_trials={"resetting"},
        _started_actors={"a3", "a4"},
        _actor_manager=FakeActorManager({"a2": ("cls", {}, "request")}),
    )
    with starting_actors_kept():
        assert TuneController._maybe_reuse_cached_actor(controller, trial) is swapped  # type: ignore[arg-type]
        with starting_actors_kept():  # a run inside a run: the outer one's patch serves
            inner = TuneController._maybe_reuse_cached_actor
        assert inner is TuneController._maybe_reuse_cached_actor
    assert asked == ([trial] if swapped else [])
    assert TuneController._maybe_reuse_cached_actor(controller, "starting") is True  # put back


def test_a_ray_without_these_names_gets_its_own_reuse_not_a_failed_run(monkeypatch):
    from ray.tune.execution.tune_controller import TuneController

    monkeypatch.setattr(TuneController, "_maybe_reuse_cached_actor", lambda controller, t: True)
    with starting_actors_kept():
        assert TuneController._maybe_reuse_cached_actor(object(), "trial") is True  # type: ignore[arg-type]


def test_the_last_trial_of_a_finished_search_takes_a_cached_actor_as_tune_does(monkeypatch):
    from ray.tune.execution.tune_controller import TuneController

    monkeypatch.setattr(TuneController, "_maybe_reuse_cached_actor", lambda controller, t: True)
    # Random search and a grid make all their trials at once: finished, with others waiting.
    others = FakeTuneController(_trial_to_actor={"starting": "a1"}, _pending_trials={"starting", "b"}, finished=True)
    last = FakeTuneController(_trial_to_actor={"starting": "a1"}, _pending_trials={"starting"}, finished=True)
    with starting_actors_kept():
        assert TuneController._maybe_reuse_cached_actor(others, "starting") is False  # type: ignore[arg-type]
        assert TuneController._maybe_reuse_cached_actor(last, "starting") is True  # type: ignore[arg-type]


QUICK = """
import os

from ray import tune


def quick(config):
    # A trial shorter than an actor's start: which process ran it is the point.
    tune.report({"epoch": 1, "score": config["x"], "process": os.getpid()})
"""

QUICK_SPEC = """
name: quick
trainable: quick_trainables:quick
metric: score
mode: max
search:
  algorithm: random
  num_samples: 200
  seed: 0
  space:
    x: {type: uniform, low: 0.0, high: 1.0}
  fixed: {epochs: 1}
scheduler: {type: fifo}
"""


@pytest.mark.slow
def test_short_trials_run_as_many_at_once_as_their_cpu_share_allows(tmp_path, store_uri):
    """200 trials of a few milliseconds, four at once (half a CPU each on 2 CPUs): four actors,
    each kept for its trial and reused after. Ray alone ran them on two here, killing the
    others as they started."""
    (tmp_path / "quick_trainables.py").write_text(QUICK)
    spec = write_spec(tmp_path, QUICK_SPEC)
    share = (os.cpu_count() or 1) / 4  # the embedded Ray has every CPU of the machine
    overrides = ["--set", f"resources.cpu={share}"]
    result = run_cli(str(spec), "--tracking-uri", store_uri, *overrides, cwd=tmp_path, timeout=300)
    assert_ok(result)
    _, children = job_runs(store_uri, "quick")
    assert len(children) == 200 and {child.info.status for child in children} == {"FINISHED"}
    pids = {child.data.metrics["process"] for child in children}
    assert len(pids) == 4, f"the trials ran in {len(pids)} actor processes, not 4"
