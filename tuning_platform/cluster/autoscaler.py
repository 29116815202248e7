"""What an autoscaler of the cluster can launch, read from Ray's internals.

Ray 2.60 offers no public view of an autoscaler's node types. They are read, in this order,
from the cluster config in the GCS (autoscaler v2 and KubeRay report it), then from the
autoscaling config file of the cluster launcher's monitor process on the head node (what
`ray up` and `ray start --autoscaling-config` run), then from the status the monitor writes to
the GCS. All are Ray internals, kept in this module and held by `tests/test_autoscaling.py` and
`tests/test_cluster_resources.py`, which fail when they change.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class NodeType:
    name: str
    resources: dict[str, float]
    max_count: int  # nodes of this type that can exist at once


def autoscaler_node_types() -> list[NodeType] | None:
    """The node types an autoscaler of this cluster can launch, or None (no autoscaler, or one
    whose configuration this driver cannot read)."""
    types = gcs_node_types()
    if types is not None:
        return types
    monitor = head_monitor()
    if monitor is None or not monitor[1]:
        return None
    return launcher_node_types(monitor[1])


def gcs_node_types() -> list[NodeType] | None:
    """The node groups of the cluster config in the GCS (autoscaler v2 and KubeRay report it;
    a static cluster has none), or None."""
    import ray

    config = ray._private.state.state.get_cluster_config()  # ray/_private/state.py, get_cluster_config
    if config is not None and config.node_group_configs:
        return [
            NodeType(group.name, {k: float(v) for k, v in group.resources.items()}, _count(group.max_count))
            for group in config.node_group_configs
        ]
    return None


def head_monitor() -> tuple[bool, dict[str, Any] | None] | None:
    """What the head node says of this cluster's monitor process: whether it runs there, and its
    autoscaling config (None: started without one); None when the head cannot be asked."""
    import ray

    # Nested, so Ray ships it by value: the head may not import this package.
    def _monitor_on_head(gcs_address: str) -> tuple[bool, dict[str, Any] | None]:
        """Runs on the head node: this cluster's monitor process and its autoscaling config.

        The monitor is started as `monitor.py --gcs-address=... [--autoscaling-config=PATH]`
        (ray/_private/services.py, `start_monitor`, lines 2387 and 2404 in Ray 2.60; v1's
        ray/autoscaler/_private/monitor.py and v2's ray/autoscaler/v2/monitor.py alike). Without
        the config it drives the read-only provider, which never launches a node (v1:
        monitor.py `_initialize_autoscaler`, `BASE_READONLY_CONFIG` with `max_workers: 0`, lines
        108 and 228-234; v2: monitor.py line 333, `ReadOnlyProviderConfigReader`).
        """
        import os

        import psutil
        import yaml

        for process in psutil.process_iter(["cmdline"]):
            args = process.info.get("cmdline") or []
            if not any(arg.endswith("monitor.py") for arg in args) or f"--gcs-address={gcs_address}" not in args:
                continue
            path = next((arg.split("=", 1)[1] for arg in args if arg.startswith("--autoscaling-config=")), None)
            if not path:
                return True, None
            with open(os.path.expanduser(path)) as handle:
                return True, yaml.safe_load(handle)
        return False, None

    gcs_address = ray.get_runtime_context().gcs_address
    reader = ray.remote(_monitor_on_head).options(
        num_cpus=0, resources={"node:__internal_head__": 0.001}, max_retries=0
    )
    try:
        found, config = ray.get(reader.remote(gcs_address), timeout=30)
    except Exception:  # noqa: BLE001 - no readable head (Ray Client, a head without the marker)
        return None
    return found, config


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


def autoscaler_running() -> bool:
    """Whether an autoscaler that may launch nodes reports to the GCS.

    A monitor writes DEBUG_AUTOSCALING_STATUS every update (ray/autoscaler/_private/monitor.py,
    line 452 in Ray 2.60), on a static cluster too, where its read-only provider names each node's
    type after the node itself: `node_<id>` (ray/autoscaler/_private/util.py
    `format_readonly_node_type`, line 986; ray/autoscaler/_private/readonly/node_provider.py line
    40), keyed by that id in the report's `node_type_mapping` (its `internal_ip` is the id; the
    mapping is built in ray/autoscaler/_private/autoscaler.py line 1520). Such a status is no
    autoscaler. Before the monitor's first update the status has no report; that one counts as an
    autoscaler, as any status did before.
    """
    status = autoscaler_status()
    if status is None:
        return False
    return not _read_only_provider(status)


def _read_only_provider(status: dict[str, Any]) -> bool:
    from ray.autoscaler._private.util import format_readonly_node_type

    mapping = (status.get("autoscaler_report") or {}).get("node_type_mapping") or {}
    return bool(mapping) and all(node_type == format_readonly_node_type(node) for node, node_type in mapping.items())


def autoscaler_status() -> dict[str, Any] | None:
    """The status the cluster's monitor last wrote to the GCS, or None: none written, no Ray
    connected, or a GCS that does not answer. Anything else (a Ray internal renamed) is raised."""
    from ray._private import ray_constants
    from ray.exceptions import RpcError
    from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_initialized

    key = ray_constants.DEBUG_AUTOSCALING_STATUS  # ray/_private/ray_constants.py, line 56 in Ray 2.60
    if not _internal_kv_initialized():  # its client is None until ray.init (ray/experimental/internal_kv.py)
        return None
    try:
        raw = _internal_kv_get(key)
    except (RpcError, OSError):
        # What a GcsClient read raises when the GCS does not answer: RpcError, timeouts included;
        # IOError; ConnectionError through Ray Client (ray/includes/gcs_client.pxi and
        # `check_status_timeout_as_rpc_error` in ray/_raylet.pyx).
        return None
    return json.loads(raw) if raw else None
