"""The insight's imports are paid while the job's last trials run (warm_up.py)."""

from __future__ import annotations

import pickle
import struct
import subprocess
import sys

from tests.helpers import ROOT, assert_ok, cli_env
from tuning_platform import insight
from tuning_platform.insight import DPI, FIGSIZE, PICTURES


def test_pictures_are_warmed_up_once_when_a_trial_ends_after_the_last_one_started(monkeypatch):
    # Imported here, not above: the fresh process below imports this module to draw, without Ray.
    from tuning_platform.execution.warm_up import PicturesWarmedUp

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


def draw_pictures() -> dict[str, bytes]:
    """The four pictures of a small recorded job, drawn as the job's end draws them: an ASHA
    search of two parameters, trials completed and early-stopped."""
    from tuning_platform.insight.plots import (
        plot_best_so_far,
        plot_importances,
        plot_learning_curves,
        plot_parallel_coordinates,
    )
    from tuning_platform.search.study import RecordedTrial
    from tuning_platform.spec import load_spec

    spec = load_spec(
        {
            "name": "pictured",
            "trainable": "toy:bowl",
            "metric": "loss",
            "mode": "min",
            "search": {
                "num_samples": 6,
                "space": {
                    "x": {"type": "loguniform", "low": 1e-3, "high": 1.0},
                    "kind": {"type": "choice", "values": ["a", "b"]},
                },
                "fixed": {"epochs": 9},
            },
            "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 3},
        }
    )[0]
    trials = []
    for number, (x, kind, epochs) in enumerate(
        [(0.5, "a", 9), (0.01, "b", 9), (0.2, "a", 1), (0.003, "b", 3), (0.9, "b", 1), (0.05, "a", 9)], start=1
    ):
        loss = abs(x - 0.05) + (0.3 if kind == "a" else 0.0)
        trials.append(
            RecordedTrial(
                trial_id=f"t{number}",
                run_id=f"r{number}",
                parent_run_id="p",
                status="completed" if epochs == 9 else "early_stopped",
                params={"x": str(x), "kind": kind, "epochs": "9"},
                history=[(e, loss + 1.0 / e) for e in range(1, epochs + 1)],
                start_ms=60_000 * number,
                end_ms=60_000 * number + 45_000,
            )
        )
    scored = [(t, min(v for _, v in t.history)) for t in trials]
    return {
        "best_so_far.png": plot_best_so_far(spec, scored, started_ms=0),
        "parallel_coordinates.png": plot_parallel_coordinates(spec, scored),
        "importances.png": plot_importances(spec, {"x": 0.8, "kind": 0.2}),
        "learning_curves.png": plot_learning_curves(spec, trials),
    }


# A process that never warmed up: its pictures, pickled to stdout.
COLD = """
import pickle, sys
from tests.test_warm_up import draw_pictures
sys.stdout.buffer.write(pickle.dumps(draw_pictures()))
"""


def test_a_warmed_up_process_draws_the_same_pictures():
    """Byte for byte, what a process that never warmed up draws (a fresh one, here): the
    warm-up pays for imports and fonts, and changes nothing a picture depends on."""
    # It draws on the other core while this process warms up and draws.
    fresh = subprocess.Popen(
        [sys.executable, "-c", COLD], cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    insight.warm_up()
    warmed = draw_pictures()
    out, err = fresh.communicate(timeout=120)
    assert_ok(fresh, err.decode())
    cold = pickle.loads(out)
    assert sorted(warmed) == sorted(cold) == sorted(PICTURES)
    size = (FIGSIZE[0] * DPI, FIGSIZE[1] * DPI)
    for name, png in cold.items():
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == size, name
        assert warmed[name] == png, f"{name} drawn after the warm-up differs from a fresh process's"
