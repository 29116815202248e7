"""Each benchmark's `--smoke` mode through its `main`, as `python -m benchmarks.NAME --smoke`
runs it: it finishes, measures real runs and prints its table and one verdict line per target.
The figures themselves are not asserted (this machine is shared and noisy); the scale
benchmark's record check is. In-process: a subprocess each would pay the imports again.
"""

from __future__ import annotations

import importlib
import logging
import re

import numpy as np
import pytest

from tests.helpers import CALLERS_VARIABLES, ROOT, customers

pytestmark = pytest.mark.slow

NUMBER = r"-?\d+\.\d+"
VERDICT = r"smoke, not a measurement: (pass|falls short): "
# What `benchmarks.common.quiet` turns down; put back for the tests that follow.
QUIETED = ("ray", "ray.tune", "ray.train", "mlflow", "optuna")


@pytest.fixture(scope="module", autouse=True)
def one_ray_for_every_smoke():
    """The scripts' in-process runs share one embedded Ray, started as `ray_running` starts
    it, instead of paying Ray's start and stop (5-8 s here) once each."""
    import ray

    from benchmarks.common import ray_running

    with ray_running(cpus=2):
        yield
    assert not ray.is_initialized()


@pytest.fixture
def smoke(capsys, monkeypatch):
    def run(name: str, *args: str) -> str:
        monkeypatch.chdir(ROOT)
        for variable in CALLERS_VARIABLES:
            monkeypatch.delenv(variable, raising=False)
        monkeypatch.setenv("RAY_DEDUP_LOGS", "1")
        # The signal handlers, environment and MLflow URI a script's Tune run changes are put
        # back by conftest.py's autouse fixture; the loggers `quiet` turned down, here.
        levels = {logger: logging.getLogger(logger).level for logger in QUIETED}
        try:
            code = importlib.import_module(f"benchmarks.{name}").main(["--smoke", *args])
        finally:
            for logger, level in levels.items():
                logging.getLogger(logger).setLevel(level)
        out = capsys.readouterr().out
        assert code == 0, out[-3000:]
        return out

    return run


def test_overhead_times_three_variants_side_by_side(smoke):
    # SQLite stores: `--server` only swaps in a real mlflow server's URI, and costs 30 s more here.
    out = smoke("overhead")
    assert re.search(r"^Tracking to: a fresh SQLite store each$", out, re.M), out[-2000:]
    for variant in ("plain Ray Tune", "platform (full MLflow)", "MLflowLoggerCallback"):
        assert re.search(rf"^{re.escape(variant)}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}$", out, re.M), out[-2000:]
    assert re.search(rf"^{VERDICT}platform / plain Ray Tune wall time {NUMBER}x \(target <= 1.15x\)$", out, re.M)
    # Where each variant's CPU went: the driver's threads and the rest. The platform's writer
    # thread ends with its job, so its CPU is among the threads that ended meanwhile.
    cpu = out[out.index("CPU seconds by process while each variant ran") :]
    assert re.search(r"^  driver: MainThread\s+(\d+\.\d\s+){2}\d+\.\d$", cpu, re.M), cpu
    ended = re.search(r"^  driver: threads that ended meanwhile\s+\d+\.\d\s+(\d+\.\d)\s+\d+\.\d$", cpu, re.M)
    assert ended and float(ended.group(1)) > 0, cpu
    # Every variant's trials ran in actors that end with the job, before the job's last reading
    # of /proc: they count all the same.
    actors = re.search(r"^  Ray workers \(the trials' actors\)\s+(\d+\.\d)\s+(\d+\.\d)\s+(\d+\.\d)$", cpu, re.M)
    assert actors and all(float(seconds) > 0 for seconds in actors.groups()), cpu
    assert re.search(r"^  all\s+(\d+\.\d\s+){2}\d+\.\d$", cpu, re.M), cpu


def test_utilization_reads_training_time_back_from_mlflow(smoke):
    out = smoke("utilization")
    row = re.search(rf"^platform\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})\s+(-?\d+)$", out, re.M)
    assert row, out[-2000:]
    wall, training, utilization = (float(row.group(i)) for i in (1, 2, 3))
    assert training > 0 and 0 < utilization <= 1.0 and abs(utilization - training / (2 * wall)) < 0.01
    # A smoke run is judged against plain Ray Tune's figure of the same run only; the 0.90
    # target is for 120 trials or more.
    plain = re.search(rf"^plain Ray Tune\s+{NUMBER}\s+{NUMBER}\s+({NUMBER})\s+-?\d+$", out, re.M)
    judged = re.search(
        rf"^{VERDICT}slot utilization, against plain Ray Tune's {NUMBER} \(target >= (?P<target>{NUMBER})\)$", out, re.M
    )
    assert plain and judged, out[-2000:]
    assert float(judged.group("target")) == float(plain.group(1))
    assert "120 trials or more" not in out
    # Where each job's time went: start-up, trials, end; plain Ray Tune's from a Tune callback.
    for variant in ("platform", "plain Ray Tune"):
        phases = re.search(rf"^{variant}\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})$", out, re.M)
        assert phases, out[-2000:]
        startup, trials, end, _ = (float(phases.group(i)) for i in (1, 2, 3, 4))
        assert startup > 0 and trials > 0 and end >= 0


def test_search_compares_tpe_asha_with_random_fifo_and_complete_with_pruned(smoke):
    out = smoke("search")
    row = r"^\s+0 {}\s+(\d+)\s+(\d+)\s+(\S+)\s+{n}\s+({n})\s+({n})\s+({n})\s+({n}|never)$"
    fifo, asha, complete, grid = (
        re.search(row.format(re.escape(label), n=NUMBER), out, re.M)
        for label in ("random+FIFO", "TPE+ASHA", "TPE+ASHA (COMPLETE)", "grid+FIFO")
    )
    assert fifo and asha and complete and grid, out[-2000:]
    assert int(fifo.group(1)) == 4 * 9  # every trial ran its epochs (9 in a smoke run)
    assert int(grid.group(1)) == 3 * 9 and grid.group(3) == "-"  # the smoke grid: three optimizers, in full
    assert re.search(rf"^against grid\+FIFO \(3 configurations\): TPE\+ASHA / grid epochs {NUMBER}", out, re.M)
    assert int(asha.group(1)) < int(fifo.group(1))  # ASHA stopped some
    # What Optuna was told: the stopped trials as PRUNED by default, as COMPLETE with Ray's way.
    stopped = int(asha.group(2))
    assert stopped > 0 and asha.group(3) == f"{4 - stopped}C,{stopped}P", out[-2000:]
    # Random search over the spec's conditional space is Optuna's RandomSampler, told like TPE.
    assert complete.group(3) == "4C" and fifo.group(3) == "4C"
    assert re.search(r"^  seed 0: epochs \d+ / \d+ = \d\.\d{3}; best ", out, re.M), out[-2000:]
    assert re.search(r"^  the figures favour: ", out, re.M)
    assert re.search(rf"^TPE\+ASHA / random\+FIFO epochs per seed: 0: {NUMBER}%; {NUMBER}%$", out, re.M), out[-2000:]
    assert re.search(rf"^best gap .* per seed: 0: {NUMBER}; {NUMBER}$", out, re.M), out[-2000:]
    judged = rf"^{VERDICT}mlp: epoch share of TPE\+ASHA, median over 1 seed {NUMBER} \(target <= 0.4\)$"
    assert re.search(judged, out, re.M), out[-2000:]


def test_multiobjective_compares_mo_asha_random_fifo_and_a_weighted_sum_by_hypervolume(smoke):
    out = smoke("multiobjective")
    reference = r"^reference point \(all strategies and seeds\): val_roc_auc -?\d\.\d{4}, params [\d.]+ \(each "
    assert re.search(reference, out, re.M), out[-2000:]
    epochs = {}
    for label in ("MO-ASHA", "random+FIFO", "weighted sum"):
        row = re.search(rf"^\s+0 {re.escape(label)}\s+4\s+(\d+)\s+{NUMBER}\s+({NUMBER})  (\(.+\))$", out, re.M)
        assert row, out[-2000:]
        epochs[label] = int(row.group(1))
        assert 0 <= float(row.group(2)) <= 1  # a share of the pooled fronts' hypervolume
        assert re.fullmatch(rf"\({NUMBER}, \d+\)( \({NUMBER}, \d+\))*", row.group(3))  # the job's front
    assert epochs["random+FIFO"] == 4 * 4  # every trial ran its epochs (4 in a smoke run)
    assert epochs["MO-ASHA"] < epochs["random+FIFO"]  # MO-ASHA stopped some
    # The weighted sum's trials reported the metric its ASHA ranks by (a trial without it fails,
    # and a failed trial has no point), and their val_roc_auc and params beside it.
    assert re.search(r"^weighted sum: val_roc_auc - 0.02 \* params / 140034 \(params of the largest model", out, re.M)
    assert re.search(r"^  seed 0: random\+FIFO final \d\.\d{4}; MO-ASHA (reached|never reached) 99% of it", out, re.M)
    share = rf"^{VERDICT}MO-ASHA's epochs to 99% of random\+FIFO's final hypervolume, share of its epochs, mean"
    assert re.search(rf"{share} ({NUMBER}|inf) \(target <= 0.4\)$", out, re.M), out[-2000:]
    ratio = rf"^{VERDICT}hypervolume MO-ASHA / weighted sum at equal epochs, mean ({NUMBER}|inf)x \(target >= 1x\)$"
    assert re.search(ratio, out, re.M), out[-2000:]
    assert len(re.findall(r"^  .+: MO-ASHA's epochs to 99% of random\+FIFO's final, share ", out, re.M)) == 2


def test_scale_checks_one_child_run_per_trial_and_follows_plain_ray_tune_the_same_way(smoke):
    out = smoke("scale", "--census")
    assert "MLflow: 40 child runs for 40 trials, 40 FINISHED, most per trial: 1" in out, out[-2000:]
    assert "PASS: every trial completed with exactly one FINISHED child run" in out
    assert re.search(rf"^{VERDICT}trials per minute {NUMBER} \(target >= 300\)$", out, re.M)
    assert re.search(rf"^{VERDICT}driver peak memory {NUMBER} GiB \(target <= 1.5 GiB\)$", out, re.M)
    assert re.search(r"^end of the job by step: Tune's end \(fit after the last trial\) \d", out, re.M), out[-2000:]
    # The census: what the driver gained between the marks, most first, the dicts of Tune's trials among them.
    header = r"^objects the driver gained from proposal 8 to proposal 40 \(count, type\):\n"
    census = re.search(header + r"((?:\s+[\d,]+  \S+\n)+)", out, re.M)
    assert census, out[-2000:]
    counts = [int(line.split()[0].replace(",", "")) for line in census.group(1).splitlines()]
    assert counts == sorted(counts, reverse=True) and "builtins.dict" in census.group(1)

    # The same trials through plain Ray Tune, followed the same way, without verdicts.
    plain = smoke("scale", "--plain")
    assert re.search(r"^40 trials \(0 errored\) in \d+\.\d s: \d+ trials/min$", plain, re.M), plain[-2000:]
    assert re.search(r"^TPE proposal time: .*; 40 proposals$", plain, re.M)
    assert re.search(r"^driver resident memory by trials finished: 8: \d", plain, re.M)
    assert "PASS" not in plain and "FALLS SHORT" not in plain and "MLflow" not in plain


def test_scale_profiles_a_shape_and_sets_its_figures_beside_plain_ray_tunes(smoke, tmp_path, monkeypatch):
    """`--cpu-per-trial`: each shape through plain Ray Tune and the platform (here run in this
    process instead of a new one each, to share the test's Ray), one table, a verdict per target."""
    import json
    import subprocess

    from benchmarks import scale

    def in_this_process(command, **kwargs):  # noqa: ANN001, ANN003, ANN202 - subprocess.run's
        assert command[1:3] == ["-m", "benchmarks.scale"]
        return subprocess.CompletedProcess(command, scale.main(command[3:]))

    monkeypatch.setattr(scale.subprocess, "run", in_this_process)
    out = smoke("scale", "--cpu-per-trial", "0.5", "--profile", "--workdir", str(tmp_path))
    assert "Scale: 40 trivial trials at 0.5 CPU per trial, full platform" in out, out[-3000:]
    assert "Scale: 40 trivial trials at 0.5 CPU per trial, plain Ray Tune" in out
    # The profiles: the CPU of each process, the driver's main thread by its functions.
    assert len(re.findall(r"^profile from proposal 8 to 10 \(", out, re.M)) == 2, out[-3000:]
    assert re.search(
        r"^  CPU seconds per 100 trials, by process:\n(?:\s+\d+\.\d+  .+\n)*\s+\d+\.\d+  driver: MainThread", out, re.M
    )
    assert re.search(r"^\s+\d+\.\d+  step  \(execution/tune_controller\.py", out, re.M)
    report = json.loads((tmp_path / "platform-0.5.json").read_text())
    assert report["trials"] == 40 and report["ok"] and report["memory_end_mib"] > 0
    row = rf"^\s+0\.5\s+(plain|platform)\s+\d+\s+\d+\s+\d+\s+{NUMBER}\s+\d+\s+\d+\s+[+-]\d+$"
    assert len(re.findall(row, out, re.M)) == 2, out[-2000:]
    for target in (r"trials per minute \S+ \(target >= 600\)", r"last / first 8 trials' rate \S+ \(target >= 0.8x\)",
                   r"memory growth / plain Ray Tune's \S+ \(target <= 1.25x\)"):  # fmt: skip
        assert re.search(rf"^{VERDICT}0.5 CPU per trial: {target}$", out, re.M), out[-2000:]


def test_fractional_gpu_says_when_there_is_no_gpu(smoke):
    import torch

    out = smoke("fractional_gpu")
    if torch.cuda.is_available():
        assert re.search(rf"^{VERDICT}throughput gpu 0.25 / gpu 1 {NUMBER}x", out, re.M), out[-2000:]
    else:
        assert out.strip() == "skipped: no GPU"


def test_public_data_sets_the_platform_beside_baselines_on_the_same_split(smoke, tmp_path):
    """UCI Adult's own format (no header, `, ` separators, `?` gaps) becomes a table the
    baselines read; a transactions table goes through a real fraud job beside them."""
    rng = np.random.default_rng(0)
    rows = [
        f"{rng.integers(17, 90)}, {rng.choice(['Private', 'State-gov', '?'])}, {rng.integers(10**4, 10**6)}, "
        f"{rng.choice(['Bachelors', 'HS-grad', 'Masters'])}, {rng.integers(1, 16)}, Never-married, "
        f"{rng.choice(['Sales', 'Tech-support', '?'])}, Not-in-family, White, {rng.choice(['Male', 'Female'])}, "
        f"0, 0, {rng.integers(10, 80)}, United-States, {rng.choice(['<=50K', '>50K'], p=[0.75, 0.25])}"
        for _ in range(300)
    ]
    adult = tmp_path / "adult.data"
    adult.write_text("\n".join(rows) + "\n")
    out = smoke("public_data", "--adult", str(adult), "--baselines-only", "--workdir", str(tmp_path / "a"))
    assert "skipped: movielens: no --movielens given (GroupLens" in out
    for trainable in ("mlp", "fraud"):
        assert f"== adult through {trainable} " in out
    assert len(re.findall(rf"^logistic_regression\s+{NUMBER}\s+{NUMBER}$", out, re.M)) == 2
    assert len(re.findall(rf"^hist_gradient_boosting\s+{NUMBER}\s+{NUMBER}$", out, re.M)) == 2

    table = tmp_path / "transactions.csv"
    customers(600).rename(columns={"churned": "Class"}).to_csv(table, index=False)
    out = smoke("public_data", "--fraud-table", str(table), "--workdir", str(tmp_path / "b"))
    assert re.search(rf"^platform: best of 4 trials \(\d+\.\d min\)\s+{NUMBER}\s+{NUMBER}$", out, re.M), out[-2000:]
    assert re.search(
        rf"^{VERDICT}fraud-table: best val_auprc - logistic regression {NUMBER} \(target >= 0\)$", out, re.M
    )


def test_whole_command_times_the_cli_and_a_plain_script_as_new_processes(smoke, tmp_path):
    """Each workload: the sleeping one, a user's own trainable on a CSV read with pandas (no
    TASK), and the built-in mlp on the same CSV, which registers its best model."""
    out = smoke("command", "--workdir", str(tmp_path))
    for workload in ("sleep", "digits", "digits-task"):
        block = re.search(rf"^{workload}: 8 trials, 1 round\(s\), whole process wall time:\n((?:  .*\n)+)", out, re.M)
        assert block, out[-3000:]
        lines = block.group(1)
        assert re.search(rf"^  plain Ray Tune script\s+{NUMBER} s", lines, re.M)
        assert re.search(rf"^  platform command\s+{NUMBER} s", lines, re.M)
        for phase in ("start to the first trial's start", "the trials", "last trial's end to the parent run's end"):
            assert re.search(rf"^    {re.escape(phase)}.*\s{NUMBER}$", lines, re.M), lines
        verdict = rf"^{VERDICT}{workload}: whole command, platform / plain at 8 trials {NUMBER}x \(target <= 1.1x\)$"
        assert re.search(verdict, out, re.M), out[-2000:]
    # The job with a TASK registered its best model; the user's own function has none to register.
    from mlflow import MlflowClient

    registered = MlflowClient(f"sqlite:///{tmp_path / 'store-digits-task-8-0.db'}").search_registered_models()
    assert [model.name for model in registered] == ["bench-digits-task"]
    assert not MlflowClient(f"sqlite:///{tmp_path / 'store-digits-8-0.db'}").search_registered_models()


def test_actor_reuse_sets_the_platforms_beside_tunes_own_at_each_cpu_share(smoke):
    out = smoke("actor_reuse")
    rows = {
        (float(cpu), reuse): (int(at_once), int(processes), int(actors))
        for cpu, reuse, at_once, processes, actors in re.findall(
            r"^\s*([\d.]+)\s+(platform|Tune's)\s+(\d+)\s+\d+\s+(\d+)\s+(\d+)$", out, re.M
        )
    }
    assert set(rows) == {(1.0, "Tune's"), (1.0, "platform"), (0.25, "Tune's"), (0.25, "platform")}, out[-2000:]
    at_once, processes, actors = rows[(0.25, "platform")]
    # Eight trials at once: the seven staged behind the first each keep the actor starting for
    # them, so more than one process runs trials, and at most the last trial's actor (when the
    # search has no trial left for a freed one) is started and not used.
    assert at_once == 8 and 1 < processes <= 8 and processes <= actors <= processes + 1, out[-2000:]
    assert len(re.findall(rf"^{VERDICT}", out, re.M)) == 4, out[-2000:]
