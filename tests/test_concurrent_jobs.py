"""Two real jobs at once against one fresh SQLite MLflow store and one storage folder: separate
complete records, and the champion alias left on the better of their two versions."""

from __future__ import annotations

import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import SPECS, assert_ok, cli_env, job_runs
from tuning_platform.records import PARENT_RUN_ID_TAG

pytestmark = pytest.mark.slow


def test_two_jobs_on_one_sqlite_store_both_finish_with_separate_complete_records(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # no store yet: the two jobs make it
    env = cli_env()
    command = [sys.executable, "-m", "platform.tune", str(SPECS / "mlp.yaml"), "--smoke-test", "--tracking-uri", uri]
    # Started together, so both create the store's tables and the one experiment at once.
    jobs = [
        subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [job.communicate(timeout=400)[0] for job in jobs]
    for job, output in zip(jobs, outputs, strict=True):
        assert_ok(job, output)
        assert "database is locked" not in output

    client = MlflowClient(uri)
    experiments = client.search_experiments(filter_string="name = 'mlp-breast-cancer'")
    assert len(experiments) == 1
    parents, trials = job_runs(client, "mlp-breast-cancer")
    assert len(parents) == 2 and all(p.info.status == "FINISHED" for p in parents)
    assert parents[0].data.tags["ray_run_name"] != parents[1].data.tags["ray_run_name"]
    for parent in parents:
        children = [r for r in trials if r.data.tags[PARENT_RUN_ID_TAG] == parent.info.run_id]
        assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
        assert len({c.data.tags["trial_id"] for c in children}) == 4
        for child in children:
            epochs = int(child.data.tags["epochs_run"])
            steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_roc_auc")]
            assert steps == list(range(1, epochs + 1))
        assert parent.info.run_id in {output.split("parent run ")[1].split()[0] for output in outputs}
    # Smoke jobs register under their own name, never beside the real models.
    assert client.search_model_versions("name = 'mlp-breast-cancer'") == []
    versions = client.search_model_versions("name = 'mlp-breast-cancer-smoke'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    assert {v.tags["parent_run_id"] for v in versions} == {p.info.run_id for p in parents}
    # Both finished together and settled the alias; it holds the better of the two.
    best = max(versions, key=lambda v: (float(v.tags["metric_value"]), -int(v.version)))
    champion = client.get_model_version_by_alias("mlp-breast-cancer-smoke", "champion")
    assert str(champion.version) == str(best.version)
    assert all("note: --smoke-test: registered as mlp-breast-cancer-smoke" in output for output in outputs)
