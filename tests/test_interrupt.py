"""Stopping a job: SIGTERM does what Ctrl-C does, and the trials a stop left unfinished are
known from what Tune did in memory, whatever the storage."""

from __future__ import annotations

import os
import pickle
import signal
import time
from types import SimpleNamespace

import pytest

from tests.helpers import STEADY_TRAINABLE, assert_ok, job_runs, run_cli, write_spec
from tuning_platform.execution.interrupt import TrialOutcomes, reclaim_sigterm, sigterm_as_interrupt, unfinished_trials


def _trial(trial_id: str, status: str) -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, status=status)


def test_sigterm_raises_what_ctrl_c_raises_and_is_remembered():
    before = signal.getsignal(signal.SIGTERM)
    with sigterm_as_interrupt() as terminated:
        assert not terminated()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs here, in the main thread
        assert terminated()
    assert signal.getsignal(signal.SIGTERM) == before, "the handler in force before is back"


@pytest.mark.slow  # starts a real Ray (about 6 s here): the fast set stays under a minute
def test_sigterm_is_taken_back_from_ray_init():
    import ray

    with sigterm_as_interrupt() as terminated:
        ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR")
        try:
            reclaim_sigterm()
            with pytest.raises(KeyboardInterrupt):  # without it: SystemExit(15), Ray's handler
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)
            assert terminated()
        finally:
            ray.shutdown()


def test_trials_a_stop_cut_short_are_unfinished_though_tune_marks_them_terminated():
    outcomes = pickle.loads(pickle.dumps(TrialOutcomes("job-1")))  # as Tune restores it
    # A resumed job: "old" finished before the driver stopped, the others are still to run.
    trials = [
        _trial("old", "TERMINATED"),
        _trial("done", "PENDING"),
        _trial("bad", "PENDING"),
        _trial("cut", "PENDING"),
    ]
    outcomes.on_step_begin(0, trials)
    outcomes.on_trial_complete(1, trials, trials[1])  # finished, or stopped by ASHA
    outcomes.on_trial_error(2, trials, trials[2])  # failed with no retries left
    # Ctrl-C: Tune's cleanup stops the running trial and marks it TERMINATED, then ends.
    for trial in trials:
        trial.status = "ERROR" if trial.trial_id == "bad" else "TERMINATED"
    outcomes.on_experiment_end(trials)
    assert unfinished_trials("job-1") == ["cut"]
    assert unfinished_trials("job-1") == [], "read once"


def test_a_job_that_ran_to_its_end_has_no_unfinished_trials():
    outcomes = TrialOutcomes("job-2")
    trials = [_trial("a", "PENDING"), _trial("b", "PENDING")]
    outcomes.on_step_begin(0, trials)
    for trial in trials:
        outcomes.on_trial_complete(1, trials, trial)
    outcomes.on_experiment_end(trials)
    assert unfinished_trials("job-2") == []


BUDGET_SPEC = """
name: budget
trainable: steady:train
metric: score
mode: max
search:
  algorithm: random
  num_samples: 4
  space:
    x: {type: uniform, low: 0.0, high: 1.0}
  fixed: {epochs: 30}
scheduler: {type: fifo}
budget: {time_s: 6}
tracking: {register_model: false}
"""


@pytest.mark.slow
def test_trials_the_time_budget_stops_are_stopped_early_not_interrupted(tmp_path, store_uri):
    # Tune ends such trials as a stop would, without its callbacks: they must not look interrupted.
    (tmp_path / "steady.py").write_text(STEADY_TRAINABLE)
    write_spec(tmp_path, BUDGET_SPEC)
    result = run_cli("spec.yaml", "--tracking-uri", store_uri, cwd=tmp_path, timeout=300)
    assert_ok(result)
    assert "interrupted" not in result.stdout + result.stderr
    parents, children = job_runs(store_uri, "budget")
    assert [r.info.status for r in parents] == ["FINISHED"]
    assert children and all(c.data.tags["trial_status"] == "early_stopped" for c in children)
