"""The CLI as a user runs it: help, and bad input that ends in one line, exit 2, nothing written.

The table of bad inputs runs in this process through `cli.main` (what the console command
calls), so each case costs milliseconds, not a new interpreter importing torch, Ray and MLflow;
the last tests run the real command in a subprocess, one per way it exits on bad input.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests.helpers import ROOT, SPECS, assert_exit, run_cli_side_by_side, write_spec
from tuning_platform.cli import main

GOOD = (SPECS / "mlp.yaml").read_text()
RECOMMENDER = (SPECS / "recommender.yaml").read_text()
FRAUD = (SPECS / "fraud.yaml").read_text()
# The shipped mlp spec with two objectives: its metric, and the parameters its model has.
TWO = GOOD.replace(
    "metric: val_roc_auc\nmode: max\n",
    "objectives:\n  - {metric: val_roc_auc, mode: max}\n  - {metric: params, mode: min}\n",
)


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    shown = capsys.readouterr().out
    for option in ("--set", "--smoke-test", "--address", "--tracking-uri", "--storage-path", "--name", "--resume"):
        assert option in shown


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# A trial of 64 CPUs is refused only where this machine has fewer.
FEWER_THAN_64_CPUS = pytest.mark.skipif(
    (os.cpu_count() or 1) >= 64, reason=f"this machine has {os.cpu_count()} CPUs: a trial of 64 fits"
)

BAD_INPUTS = [
    # (spec text or None for the good spec, extra CLI args, expected fragment of the one error line)
    (
        "name: x\ntrainable: mlp\nmetric: val_accuracy\nmode: max\nsearch: {fixed: {epochs: 2}}\nschedular: {}\n",
        [],
        "schedular: unknown key, did you mean 'scheduler'?",
    ),
    (GOOD.replace("trainable: mlp", "trainable: mpl"), [], "trainable: unknown trainable, did you mean 'mlp'?"),
    (GOOD.replace("trainable: mlp", "trainable: no_such_module:train"), [], "trainable: cannot import module"),
    (GOOD.replace("trainable: mlp", "trainable: json:nothing_here"), [], "has no attribute 'nothing_here'"),
    (GOOD.replace("trainable: mlp", "trainable: json:__doc__"), [], "is not callable"),
    (GOOD.replace("dataset: breast_cancer", "dataset: iris"), [], "data.dataset: input should be"),
    (
        GOOD.replace("dataset: breast_cancer", "dataset: csv\n  path: /no/such.csv\n  target: y"),
        [],
        "data.path: file does not exist",
    ),
    (GOOD.replace("metric: val_roc_auc", "metric: val_auc"), [], "metric: mlp does not report this metric"),
    (
        RECOMMENDER.replace("dataset: synthetic", "dataset: movielens"),
        [],
        "data.path: required for dataset 'movielens'",
    ),
    (
        RECOMMENDER,
        ["--set", "data.path=/no/ml-1m", "--set", "data.dataset=movielens"],
        "data.path: file does not exist",
    ),
    (RECOMMENDER, ["--set", "metric=val_ndcg_at_5"], "did you mean 'val_ndcg_at_10'?"),
    (FRAUD, ["--set", "data.dataset=csv", "--set", "data.path=/no/creditcard.csv"], "data.path: file does not exist"),
    (FRAUD, ["--set", "data.fraud_rate=0.7"], "data.fraud_rate: input should be less than 0.5"),
    (GOOD, ["--set", "search.num_samples"], "--set: expected KEY=VALUE"),
    (GOOD, ["--set", "search.nm_samples=3"], "search.nm_samples: unknown key, did you mean 'num_samples'?"),
    pytest.param(
        GOOD, ["--set", "resources.cpu=64"], "resources.cpu: a trial asks for 64 CPUs", marks=FEWER_THAN_64_CPUS
    ),
    pytest.param(
        GOOD, ["--set", "resources.workers=64"], "resources.cpu: a trial asks for 64 CPUs", marks=FEWER_THAN_64_CPUS
    ),
    (GOOD, ["--storage-path", "{tmp}/spec.yaml/results"], "--storage-path: storage path cannot be written"),
    (GOOD, ["--tracking-uri", "http://127.0.0.1:{port}"], "--tracking-uri: MLflow tracking server not reachable"),
    (GOOD, ["--address", "127.0.0.1:{port}"], "--address: Ray cluster not reachable"),
    (GOOD, ["--address", "my-cluster"], "--address: expected HOST:PORT"),
    ("- just\n- a list\n", [], "top level must be a mapping"),
    ("just a scalar\n", [], "top level must be a mapping"),
    (GOOD, ["--set", "mode=maximize"], "mode: input should be 'max' or 'min'"),
    (GOOD, ["--set", "search.num_samples=0"], "search.num_samples: input should be greater than or equal to 1"),
    (GOOD, ["--set", "search.num_samples=many"], "search.num_samples: input should be a valid integer"),
    (GOOD, ["--set", "search.space.lr.low=0"], "search.space.lr.low"),
    (GOOD, ["--set", "search.space.dropout.low=0.9"], "search.space.dropout.high"),
    (GOOD, ["--set", "search.space.batch_size.values=[]"], "search.space.batch_size.values"),
    (GOOD, ["--set", "scheduler.grace_period=50"], "scheduler.grace_period: must be <= the epochs"),
    (GOOD, ["--set", "resources.cpu=0"], "resources.cpu: input should be greater than 0"),
    (GOOD, ["--set", "resources.workers=2", "--set", "resources.gpu=2"], "resources.gpu: with workers > 1"),
    ("name: [unclosed\n", [], "not valid YAML at line"),
    (GOOD, ["--resume"], "--resume: nothing to resume: no MLflow store at sqlite:///mlflow.db"),
    (
        GOOD,
        ["--set", "search.warm_start.experiment=earlier"],
        "search.warm_start: no MLflow store at sqlite:///mlflow.db to start from",
    ),
    # Several objectives, constraints and the selection rule (issue 30).
    (GOOD, ["--set", "objectives=[{{metric: params, mode: min}}]"], "metric: give either metric:/mode:"),
    (TWO.replace("metric: params", "metric: val_roc_auc"), [], "objectives: 'val_roc_auc' is listed twice"),
    (TWO, ["--set", "constraints=[latency_ms < five]"], "constraints: a constraint is 'METRIC OP NUMBER'"),
    (TWO, ["--set", "constraints=[latency_msec <= 5]"], "constraints.0: mlp does not report this metric"),
    (GOOD, ["--set", "constraints=[size <= 5]"], "constraints.0: mlp does not report this metric"),
    (TWO, ["--set", "selection.rule.prefer=val_loss"], "selection.rule.prefer: must name one of the objectives"),
    (GOOD, ["--set", "selection.rule.prefer=params"], "selection.rule.prefer: must name one of the objectives"),
    (
        TWO.replace(
            "  - {metric: params",
            "  - {metric: val_loss, mode: min}\n  - {metric: size_mb, mode: min}\n"
            "  - {metric: latency_ms, mode: min}\n  - {metric: params",
        ),
        ["--set", "selection.rule=knee"],
        "objectives: list should have at most 3 items",
    ),
    (TWO, ["--set", "search.sampler.type=nsga2", "--set", "search.algorithm=random"], "nsga2 needs search.algorithm"),
    (TWO.replace("mode: min}", "mode: smallest}"), [], "objectives.1.mode: input should be 'max' or 'min'"),
    # Conditional spaces, grid search and PBT (issue 31).
    (GOOD, ["--set", "search.space.momentum.when={{optimiser: sgd}}"], "when.optimiser: names no parameter"),
    (GOOD, ["--set", "search.space.momentum.when={{lr: 0.1}}"], "must name a choice parameter (lr is loguniform)"),
    (GOOD, ["--set", "search.space.momentum.when={{optimizer: rmsprop}}"], "must be among optimizer's values"),
    (
        GOOD,
        [
            "--set",
            "search.space.optimizer.when={{batch_size: 16}}",
            "--set",
            "search.space.batch_size.when={{optimizer: sgd}}",
        ],
        "the whens form a cycle",
    ),
    (GOOD, ["--set", "search.algorithm=grid"], "a grid takes only grid, choice or int parameters"),
    (GOOD, ["--set", "search.space.batch_size.type=grid"], "type: grid needs search.algorithm: grid"),
    (GOOD, ["--set", "scheduler.type=pbt"], "PBT picks its own configurations"),
    (
        GOOD.replace("algorithm: optuna", "algorithm: random"),
        ["--set", "scheduler.type=pbt"],
        "pbt cannot run a conditional space",
    ),
    (
        GOOD.replace("algorithm: optuna", "algorithm: random").replace("when: {optimizer: sgd}", ""),
        ["--set", "scheduler={{type: pbt, mutations: {{learning_rate: {{type: uniform, low: 0, high: 1}}}}}}"],
        "scheduler.mutations.learning_rate: must be a parameter of search.space",
    ),
    (
        GOOD.replace("algorithm: optuna", "algorithm: random").replace("when: {optimizer: sgd}", ""),
        [
            "--set",
            "scheduler={{type: pbt, perturbation_interval: 25, mutations: {{lr: {{type: uniform, low: 0, high: 1}}}}}}",
        ],
        "scheduler.perturbation_interval: must be < search.fixed.epochs (20)",
    ),
    (
        GOOD.replace("algorithm: optuna", "algorithm: random").replace("when: {optimizer: sgd}", ""),
        ["--set", "scheduler={{type: pbt, mutations: {{lr: {{type: uniform, low: 0, high: 1}}}}}}"],
        "search.max_concurrent: pbt keeps its whole population (search.num_samples: 20) alive",
    ),
    (
        GOOD,
        ["--set", "scheduler.mutations={{lr: {{type: uniform, low: 0, high: 1}}}}"],
        "is a setting of scheduler.type: pbt",
    ),
    # SQLAlchemy opens `~/mlflow.db` under a folder named `~`, not the home folder.
    (GOOD, ["--tracking-uri", "sqlite:///~/mlflow.db"], "folder of the SQLite file does not exist"),
]


@pytest.mark.parametrize("text, args, fragment", BAD_INPUTS)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, monkeypatch, capsys, text, args, fragment):
    monkeypatch.chdir(tmp_path)
    for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    spec = write_spec(tmp_path, text)
    args = [a.format(tmp=tmp_path, port=_free_port()) for a in args]
    code = main([str(spec), *args])
    stderr = capsys.readouterr().err
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"error: {spec}: "), lines[0]  # the file the user gave, then what is wrong
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"], "nothing may be written"


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--resume"], "--resume: nothing to resume: no job of experiment"),
        (["--set", "search.warm_start.experiment=earlier"], "search.warm_start.experiment: no such MLflow experiment"),
    ],
)
def test_a_sqlite_uri_with_options_reads_the_store_it_names(tmp_path, monkeypatch, capsys, args, fragment):
    """`sqlite:///mlflow.db?timeout=5` is the store in mlflow.db: what follows `?` are SQLAlchemy's
    options, not part of the file name."""
    from tuning_platform.tracking.client import open_client

    monkeypatch.chdir(tmp_path)
    open_client("sqlite:///mlflow.db")
    spec = write_spec(tmp_path, GOOD)
    code = main([str(spec), "--tracking-uri", "sqlite:///mlflow.db?timeout=5", *args])
    stderr = capsys.readouterr().err
    assert code == 2, stderr
    assert fragment in stderr and "no MLflow store" not in stderr, stderr


@pytest.fixture(scope="module")
def real_command(tmp_path_factory):
    """The real command on each way it exits on bad input, each in a folder of its own, side by
    side: a spec with a misspelled trainable, a spec file that is not there, an unknown option.
    Returns name -> (the spec file it was given, its result)."""
    misspelled, missing, option = (tmp_path_factory.mktemp(name) for name in ("misspelled", "missing", "option"))
    given = {
        "misspelled": write_spec(misspelled, GOOD.replace("trainable: mlp", "trainable: mpl")),
        "missing": missing / "nope.yaml",
        "unknown option": option / "spec.yaml",
    }
    results = run_cli_side_by_side(
        {
            "misspelled": ([str(given["misspelled"])], misspelled),
            "missing": ([str(given["missing"])], missing),
            "unknown option": (["spec.yaml", "--bogus"], option),
        },
        timeout=120,
    )
    return {name: (given[name], results[name]) for name in given}


def test_bad_input_from_the_real_command_is_one_line_exit_2_and_writes_nothing(real_command):
    spec, result = real_command["misspelled"]
    assert_exit(result, 2)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {spec}: trainable: unknown trainable, did you mean 'mlp'?")
    assert sorted(p.name for p in spec.parent.iterdir()) == ["spec.yaml"]


def test_missing_spec_file(real_command):
    spec, result = real_command["missing"]
    assert_exit(result, 2)
    assert result.stderr.strip() == f"error: {spec}: spec file not found"
    assert list(spec.parent.iterdir()) == []


def test_unknown_option_is_one_line(real_command):
    spec, result = real_command["unknown option"]
    assert_exit(result, 2)
    assert result.stderr.strip().splitlines() == ["error: unrecognized arguments: --bogus (see --help)"]
    assert list(spec.parent.iterdir()) == []


def test_the_command_exits_with_its_code_after_atexit_handlers_and_flushed_output():
    """`exit_command` (how `python -m platform.tune`, `python -m tuning_platform` and the
    `tuning-platform` script end) skips only the collector's last pass over the process's
    objects: the code, the atexit handlers and unflushed output are as `sys.exit` leaves them."""
    code = """
import atexit, gc, sys
from tuning_platform.cli import exit_command
atexit.register(lambda: print("atexit ran; objects frozen:", gc.get_freeze_count() > 0))
sys.stdout.write("summary without a newline|")
sys.stderr.write("a warning|")
exit_command(3)
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    assert done.stdout == "summary without a newline|atexit ran; objects frozen: True\n"
    assert done.stderr == "a warning|"
