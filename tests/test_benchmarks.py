"""Each benchmark's `--smoke` mode, run as a user runs it: it finishes, measures real runs and
prints its table and one verdict line per target. The figures themselves are not asserted (this
machine is shared and noisy); the scale benchmark's record check is.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow

NUMBER = r"-?\d+\.\d+"
VERDICT = r"smoke, not a measurement: (pass|falls short): "


def _smoke(name: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    done = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", "--smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_overhead_times_three_variants_side_by_side():
    out = _smoke("overhead")
    for variant in ("plain Ray Tune", "platform (full MLflow)", "MLflowLoggerCallback"):
        assert re.search(rf"^{re.escape(variant)}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}$", out, re.M), out[-2000:]
    assert re.search(rf"^{VERDICT}platform / plain Ray Tune wall time {NUMBER}x \(target <= 1.15x\)$", out, re.M)


def test_utilization_reads_training_time_back_from_mlflow():
    out = _smoke("utilization")
    row = re.search(rf"^platform\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})\s+(-?\d+)$", out, re.M)
    assert row, out[-2000:]
    wall, training, utilization = (float(row.group(i)) for i in (1, 2, 3))
    assert training > 0 and 0 < utilization <= 1.0 and abs(utilization - training / (2 * wall)) < 0.01
    assert re.search(rf"^{VERDICT}slot utilization {NUMBER} \(target >= 0.85\)$", out, re.M)


def test_search_compares_tpe_asha_with_random_fifo():
    out = _smoke("search")
    fifo = re.search(rf"^\s+0 random\+FIFO\s+(\d+)\s+{NUMBER}\s+({NUMBER})\s+({NUMBER}|never)$", out, re.M)
    asha = re.search(rf"^\s+0 TPE\+ASHA\s+(\d+)\s+{NUMBER}\s+({NUMBER})\s+({NUMBER}|never)$", out, re.M)
    assert fifo and asha, out[-2000:]
    assert int(fifo.group(1)) == 4 * 20  # every trial ran its 20 epochs
    assert int(asha.group(1)) < int(fifo.group(1))  # ASHA stopped some
    assert re.search(rf"^{VERDICT}epoch share of TPE\+ASHA, mean {NUMBER} \(target <= 0.4\)$", out, re.M)


def test_scale_checks_one_child_run_per_trial():
    out = _smoke("scale")
    assert "MLflow: 40 child runs for 40 trials, 40 FINISHED, most per trial: 1" in out, out[-2000:]
    assert "PASS: every trial completed with exactly one FINISHED child run" in out
    assert re.search(rf"^{VERDICT}trials per minute {NUMBER} \(target >= 300\)$", out, re.M)
    assert re.search(rf"^{VERDICT}driver peak memory {NUMBER} GiB \(target <= 1.5 GiB\)$", out, re.M)


def test_fractional_gpu_says_when_there_is_no_gpu():
    import torch

    out = _smoke("fractional_gpu")
    if torch.cuda.is_available():
        assert re.search(rf"^{VERDICT}throughput gpu 0.25 / gpu 1 {NUMBER}x", out, re.M), out[-2000:]
    else:
        assert out.strip() == "skipped: no GPU"
