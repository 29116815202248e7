"""`selection`: the champion is the configuration with the best mean over new seeds."""

from __future__ import annotations

import pytest
import yaml

from tests.helpers import assert_ok, job_runs, run_cli, write_spec
from tuning_platform.outcome import TrialRow
from tuning_platform.search.selection import top_configurations
from tuning_platform.spec import SpecError, load_spec

NOISY = """
from ray import tune

QUALITY = {"a": 0.6, "b": 0.5, "c": 0.4}


def noisy(config):
    # Noisy by design: kind b scores 0.3 more, but only with the search's seed (0).
    lucky = 0.3 if config["kind"] == "b" and config["seed"] == 0 else 0.0
    for epoch in range(1, config["epochs"] + 1):
        jitter = 0.01 * (config["seed"] % 3)
        tune.report({"epoch": epoch, "score": QUALITY[config["kind"]] + lucky + jitter})
"""
SPEC = {
    "name": "noisy",
    "trainable": "noisy_trainable:noisy",
    "metric": "score",
    "mode": "max",
    "search": {
        "algorithm": "random",
        "num_samples": 8,
        "seed": 0,
        "space": {"kind": {"type": "choice", "values": ["a", "b", "c"]}},
        "fixed": {"epochs": 2},
    },
    "scheduler": {"type": "fifo"},
    "selection": {"top_k": 2, "seeds": 3},
}


def test_the_top_configurations_are_distinct_and_never_failed_or_diverged():
    spec = load_spec(SPEC)[0]
    rows = [
        TrialRow("t1", "completed", 2, 0.9, {"kind": "b"}),
        TrialRow("t2", "diverged", 2, 0.95, {"kind": "a"}),
        TrialRow("t3", "completed", 2, 0.8, {"kind": "b"}),  # the same configuration as t1
        TrialRow("t4", "early_stopped", 1, 0.7, {"kind": "c"}),
        TrialRow("t5", "failed", 0, None, {"kind": "a"}),
    ]
    assert [r.trial_id for r in top_configurations(spec, rows, 3)] == ["t1", "t4"]
    with pytest.raises(SpecError, match="selection: reseeds the best configurations, so seed cannot be searched"):
        load_spec(SPEC, {"search.space.seed": {"type": "int", "low": 0, "high": 9}})


@pytest.mark.slow
def test_the_champion_is_the_best_mean_not_the_luckiest_run(tmp_path, store_uri):
    (tmp_path / "noisy_trainable.py").write_text(NOISY)
    spec_file = write_spec(tmp_path, yaml.safe_dump(SPEC))
    result = run_cli(str(spec_file), "--tracking-uri", store_uri, cwd=tmp_path, timeout=300)
    assert_ok(result)

    (parent,), children = job_runs(store_uri, "noisy")
    search = [c for c in children if c.data.tags["trial_status"] != "reseed"]
    reseeded = [c for c in children if c.data.tags["trial_status"] == "reseed"]
    kinds = {c.data.params["kind"] for c in search}
    assert {"a", "b"} <= kinds, kinds  # the seed's draw tries both
    # The search's single best run is the lucky b; the mean over new seeds picks a.
    assert parent.data.params["best.kind"] == "b" and parent.data.metrics["best_score"] == pytest.approx(0.8)
    assert parent.data.params["chosen.kind"] == "a"
    assert parent.data.metrics["selection.mean_score"] == pytest.approx(0.61, abs=1e-6)
    assert parent.data.metrics["selection.std_score"] == pytest.approx(0.01, abs=1e-6)
    assert len(reseeded) == 6 and all(c.info.status == "FINISHED" for c in reseeded)
    assert {c.data.params["seed"] for c in reseeded} == {"1", "2", "3"}
    chosen_trial = parent.data.tags["selection_chosen_trial"]
    sources = {c.data.tags["reseed_of"] for c in reseeded}
    assert chosen_trial in sources and len(sources) == 2
    assert any(
        line.startswith(f"  trial {chosen_trial}: ") and line.endswith("<- chosen")
        for line in result.stdout.splitlines()
    )
