"""A user's own `module:function` trainable whose trials all fail. (One that works is the toy job of
test_study.py: tracked, a default storage path in the working directory, nothing registered.)"""

from __future__ import annotations

import pytest

from tests.helpers import assert_exit, job_runs, run_cli, write_spec

pytestmark = pytest.mark.slow

TRAINABLE = """
from ray import tune


def broken(config):
    raise RuntimeError("the data bucket is gone")
"""

SPEC = """
name: custom-{function}
trainable: my_trainables:{function}
metric: score
mode: max
search:
  algorithm: random
  num_samples: 3
  space:
    x: {{type: uniform, low: 0.0, high: 1.0}}
  fixed: {{epochs: 2}}
scheduler: {{type: fifo}}
failure: {{max_failures: 0}}
"""


def test_a_job_whose_trials_all_fail_exits_1_and_records_the_error(tmp_path, store_uri):
    (tmp_path / "my_trainables.py").write_text(TRAINABLE)
    spec = write_spec(tmp_path, SPEC.format(function="broken"))
    result = run_cli(str(spec), "--tracking-uri", store_uri, cwd=tmp_path, timeout=300)
    assert_exit(result, 1)
    assert "no trial produced the metric 'score'" in result.stderr
    parents, children = job_runs(store_uri, "custom-broken")
    assert len(parents) == 1 and parents[0].info.status == "FAILED"
    assert len(children) == 3
    for child in children:
        assert child.info.status == "FAILED"
        assert child.data.tags["trial_status"] == "failed"
        assert "the data bucket is gone" in child.data.tags["error"]
