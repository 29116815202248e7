"""The per-trial costs of Tune's loop the platform cuts (`_compat/ray.tune_loop_per_trial_costs_cut`):
the FIFO choice of the next trial over the live trials only, and one registry lookup per
trainable name. The choice must be the one Tune's own scan makes, and the Ray internals it
replaces must still be where it replaces them."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import pytest
from ray.tune.experiment import trial as trial_module
from ray.tune.experiment.trial import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from tuning_platform._compat.ray import tune_loop_per_trial_costs_cut


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
