"""The insight's imports are paid while the job's last trials run (warm_up.py)."""

from __future__ import annotations

import pickle

from tuning_platform import insight
from tuning_platform.execution.warm_up import PicturesWarmedUp
from tuning_platform.insight import plots


def test_pictures_are_warmed_up_once_when_a_trial_ends_after_the_last_one_started(monkeypatch):
    calls = []
    monkeypatch.setattr(insight, "warm_up", lambda: calls.append(1))
    callback = PicturesWarmedUp(trials=3)
    started = ["t1", "t2"]
    callback.on_trial_complete(iteration=1, trials=started, trial="t1")
    assert calls == []  # a third trial will take the freed slot
    started.append("t3")
    callback.on_trial_error(iteration=2, trials=started, trial="t2")
    assert calls == [1]  # nothing will take this slot: the warm-up runs on it
    callback.on_trial_complete(iteration=3, trials=started, trial="t3")
    assert calls == [1]
    # Tune saves the run config, callbacks included, with the job's state.
    assert pickle.loads(pickle.dumps(PicturesWarmedUp(trials=5))).trials == 5


def test_a_warmed_up_process_draws_the_same_pictures():
    insight.warm_up()
    figure, axes = plots._figure()
    axes.plot([1, 2, 3], [3, 1, 2])
    png = plots._png(figure)
    assert png.startswith(b"\x89PNG") and int.from_bytes(png[16:20], "big") == 900  # FIGSIZE x DPI wide
