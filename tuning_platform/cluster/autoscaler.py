"""What an autoscaler of the cluster can launch, read from Ray's internals (the reads
themselves are in `_compat/ray.py`).

Ray 2.60 offers no public view of an autoscaler's node types. They are read, in this order,
from the cluster config in the GCS (autoscaler v2 and KubeRay report it), then from the
autoscaling config file of the cluster launcher's monitor process on the head node (what
`ray up` and `ray start --autoscaling-config` run), then from the status the monitor writes to
the GCS. All are Ray internals, read in `_compat/ray.py` and held by `tests/test_autoscaling.py` and
`tests/test_cluster_resources.py`, which fail when they change.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

from tuning_platform._compat import ray as ray_compat


@dataclass(frozen=True)
class NodeType:
    name: str
    resources: dict[str, float]
    max_count: int  # nodes of this type that can exist at once


def gcs_node_types() -> list[NodeType] | None:
    """The node groups of the cluster config in the GCS (autoscaler v2 and KubeRay report it;
    a static cluster has none), or None."""
    config = ray_compat.gcs_cluster_config()
    if config is not None and config.node_group_configs:
        return [
            NodeType(group.name, {k: float(v) for k, v in group.resources.items()}, _count(group.max_count))
            for group in config.node_group_configs
        ]
    return None


def launcher_node_types(launcher: dict[str, Any]) -> list[NodeType]:
    head = launcher.get("head_node_type")
    return [
        NodeType(
            name,
            {k: float(v) for k, v in (node_type.get("resources") or {}).items()},
            1 if name == head else _count(node_type.get("max_workers", launcher.get("max_workers", 0))),
        )
        for name, node_type in (launcher.get("available_node_types") or {}).items()
    ]


def _count(value: Any) -> int:
    count = int(value)
    return sys.maxsize // 2**20 if count < 0 else count  # -1: no limit


# How long a status without a report (a monitor before its first update) is waited on for one.
FIRST_REPORT_WAIT_S = 20.0
FIRST_REPORT_POLL_S = 0.5


def autoscaler_running(wait_s: float = FIRST_REPORT_WAIT_S) -> bool:
    """Whether an autoscaler that may launch nodes reports to the GCS.

    A monitor writes DEBUG_AUTOSCALING_STATUS every update (ray/autoscaler/_private/monitor.py,
    line 452 in Ray 2.60), on a static cluster too, where its read-only provider names each node's
    type after the node itself: `node_<id>` (ray/autoscaler/_private/util.py
    `format_readonly_node_type`, line 986; ray/autoscaler/_private/readonly/node_provider.py line
    40), keyed by that id in the report's `node_type_mapping` (its `internal_ip` is the id; the
    mapping is built in ray/autoscaler/_private/autoscaler.py line 1520). Such a status is no
    autoscaler.

    Until the GCS has the nodes' first load reports, the monitor writes a status without an
    `autoscaler_report` (monitor.py lines 402-410), whatever its provider: that says nothing yet,
    so it is read again for up to `wait_s` (the monitor updates every 5 s by default). A status
    that never gets a report is no evidence of an autoscaler: the live nodes decide, and no note
    claims one (a young static cluster printed that it had an autoscaler).
    """
    status = autoscaler_status()
    deadline = time.monotonic() + wait_s
    while status is not None and not status.get("autoscaler_report") and time.monotonic() < deadline:
        time.sleep(FIRST_REPORT_POLL_S)
        status = autoscaler_status()
    if status is None or not status.get("autoscaler_report"):
        return False
    return not _read_only_provider(status)


def _read_only_provider(status: dict[str, Any]) -> bool:
    mapping = (status.get("autoscaler_report") or {}).get("node_type_mapping") or {}
    return bool(mapping) and all(
        node_type == ray_compat.read_only_node_type(node) for node, node_type in mapping.items()
    )


def autoscaler_status() -> dict[str, Any] | None:
    """The status the cluster's monitor last wrote to the GCS, or None: none written, no Ray
    connected, or a GCS that does not answer (`_compat.ray.autoscaler_status`)."""
    return ray_compat.autoscaler_status()


def head_monitor() -> tuple[bool, dict[str, Any] | None] | None:
    """What the head node says of this cluster's monitor process: whether it runs there, and its
    autoscaling config (None: started without one); None when the head cannot be asked."""
    return ray_compat.head_monitor()
