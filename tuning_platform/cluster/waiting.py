"""Saying so while trials wait for the nodes an autoscaler is launching.

On an autoscaling cluster a job's first trials can wait minutes for a GPU node; Tune's table
shows them PENDING and nothing says why. This callback adds one line when that changes.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ray.tune import Callback

from tuning_platform.cluster.autoscaler import autoscaler_status

logger = logging.getLogger(__name__)

# How often, at most, the job looks at what the autoscaler is launching (one GCS read).
WAITING_REPORT_INTERVAL_S = 2.0


class WaitingForNodes(Callback):
    """Prints `waiting for nodes: launching 1 gpu_worker; 0 of 4 trials running` while trials
    are pending and the cluster lacks resources for them (the autoscaler reports unmet demand
    or nodes it is launching), each time that line changes."""

    def __init__(self) -> None:
        self._last_check = 0.0
        self._last_line = ""

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        if now - self._last_check < WAITING_REPORT_INTERVAL_S:
            return
        self._last_check = now
        pending = sum(trial.status == "PENDING" for trial in trials)
        if not pending:
            return
        status = autoscaler_status() or {}
        launching, unmet = nodes_launching(status), unmet_demand(status)
        if not launching and not unmet:
            return
        running = sum(trial.status == "RUNNING" for trial in trials)
        doing = f"launching {launching}" if launching else "the autoscaler has unmet requests"
        line = f"waiting for nodes: {doing}; {running} of {running + pending} trials running"
        if line != self._last_line:
            self._last_line = line
            logger.info(line)


def unmet_demand(status: dict[str, Any]) -> bool:
    """Whether the autoscaler's status reports resource requests no live node can take now
    (v1's `load_metrics_report`: `resource_demand` for tasks and actors, `pg_demand` for Tune's
    placement groups)."""
    report = status.get("load_metrics_report") or {}
    return bool(report.get("resource_demand") or report.get("pg_demand"))


def nodes_launching(status: dict[str, Any]) -> str:
    """The nodes the autoscaler is launching, as `1 gpu_worker`; empty when none.

    Autoscaler v1 (the cluster launcher's) puts them in its status (`autoscaler_report`:
    `pending_launches` by type, `pending_nodes` as (ip, type, status); written by
    ray/autoscaler/_private/monitor.py); v2 answers through `ray.autoscaler.v2.sdk.get_cluster_status`.
    """
    counts: dict[str, int] = {}
    report = status.get("autoscaler_report") or {}
    for name, count in (report.get("pending_launches") or {}).items():
        counts[name] = counts.get(name, 0) + int(count)
    for entry in report.get("pending_nodes") or []:
        counts[entry[1]] = counts.get(entry[1], 0) + 1
    if not counts:
        try:
            import ray
            from ray.autoscaler.v2.sdk import get_cluster_status

            cluster = get_cluster_status(ray.get_runtime_context().gcs_address, timeout=5)
            for launch in cluster.pending_launches:
                counts[launch.ray_node_type_name] = counts.get(launch.ray_node_type_name, 0) + launch.count
            for node in cluster.pending_nodes:
                counts[node.ray_node_type_name] = counts.get(node.ray_node_type_name, 0) + 1
        except Exception:  # noqa: BLE001 - nothing to say then
            pass
    return ", ".join(f"{count} {name}" for name, count in sorted(counts.items()))
