"""Whether the job's storage path is one every node of a cluster can reach."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from tuning_platform.errors import JobError


def check_storage_shared(storage_path: str, autoscaling: bool = False) -> list[str]:
    """Every live node must see a local storage path: Ray keeps trial state and checkpoints
    there from all of them. Returns notes; raises JobError when a node cannot see it.

    Cloud URIs (s3://, gs://) are left to Ray. One node alone is fine, but an autoscaling
    cluster may add nodes later, which a note says.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if "://" in storage_path:
        return []
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    if len(nodes) <= 1 and autoscaling:
        return [
            f"warning: storage path {storage_path} is on this node, and the nodes the autoscaler adds "
            "will not see it: use s3://, gs:// or a shared file system (--storage-path)"
        ]
    if len(nodes) <= 1:
        return [
            f"note: storage path {storage_path} is on this node; if the cluster adds nodes, "
            "use s3://, gs:// or a shared file system (--storage-path)"
        ]
    folder = Path(storage_path)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / f".storage-check-{uuid.uuid4().hex}"
    marker.write_text("")

    @ray.remote(num_cpus=0)
    def sees(path: str) -> bool:
        return os.path.exists(path)

    try:
        probes = [
            sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(
                str(marker)
            )
            for node in nodes
        ]
        seen = ray.get(probes, timeout=120)
    finally:
        marker.unlink(missing_ok=True)
        if created:
            folder.rmdir()
    blind = [node["NodeManagerAddress"] for node, ok in zip(nodes, seen, strict=True) if not ok]
    if blind:
        raise JobError(
            f"storage path {storage_path} is local to this machine; nodes {', '.join(sorted(set(blind)))} "
            "cannot see it: use s3://, gs:// or a shared file system (--storage-path)"
        )
    return []
