"""What a job's trials can use on the cluster (the live nodes, or what an autoscaler can launch),
and the resources of a trial checked against it: a request no node can ever meet is an error,
never a silent wait."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from tuning_platform.cluster import autoscaler
from tuning_platform.cluster.autoscaler import NodeType
from tuning_platform.errors import JobError
from tuning_platform.spec import Spec


class TrialResources(TypedDict):
    """What one trial worker holds: CPUs and GPUs, a GPU figure below 1 a share of one GPU."""

    cpu: float
    gpu: float


def as_tune_resources(resources: TrialResources) -> dict[str, float]:
    """The resources as `tune.with_resources` takes them."""
    return {"cpu": resources["cpu"], "gpu": resources["gpu"]}


@dataclass(frozen=True)
class Capacity:
    """The nodes a job's trials can use: the live ones, or with an autoscaler every node type
    it may launch (`node_types` is None when an autoscaler runs whose types cannot be read)."""

    node_types: list[NodeType] | None
    autoscaling: bool

    def total(self, resource: str) -> float:
        return sum(t.resources.get(resource, 0) * t.max_count for t in self.node_types or [])

    def fits_on_one_node(self, bundle: dict[str, float]) -> bool:
        return any(
            all(t.resources.get(key, 0) >= need for key, need in bundle.items() if need > 0)
            for t in self.node_types or []
        )

    def describe(self) -> str:
        return "; ".join(
            f"{t.name} {_resource_text(t.resources)}" + (f" x{t.max_count}" if self.autoscaling else "")
            for t in self.node_types or []
        )


def _resource_text(resources: dict[str, float]) -> str:
    shown = {k: v for k, v in resources.items() if k in ("CPU", "GPU") or not k.islower()}
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(shown.items())) + "}"


def cluster_capacity(embedded: bool) -> Capacity:
    """What the job's trials can use: the live nodes, or every node type an autoscaler may
    launch; `node_types` None when an autoscaler runs whose types cannot be read.

    Ray runs its monitor on every head it starts, a static one too (`ray start` without
    `--autoscaling-config`, `ray.cluster_utils.Cluster`, Slurm): there it drives a read-only
    provider, launches nothing, and writes an autoscaling status to the GCS all the same. So a
    cluster counts as one that grows only on evidence of node types to launch: the cluster config
    in the GCS, the launcher's config on the head, or a status naming types of its own (a status
    written before the monitor's first update names none yet, and is read again until it does).
    """
    import ray

    live = [
        NodeType(node["NodeManagerAddress"], dict(node.get("Resources") or {}), 1)
        for node in ray.nodes()
        if node.get("Alive")
    ]
    if embedded:
        return Capacity(live, autoscaling=False)
    types = autoscaler.gcs_node_types()
    if types is not None:
        return Capacity(types, autoscaling=True)
    monitor = autoscaler.head_monitor()
    if monitor is not None:
        found, config = monitor
        if config:
            return Capacity(autoscaler.launcher_node_types(config), autoscaling=True)
        if found:  # the monitor without a config: the read-only provider, a cluster that stays as it is
            return Capacity(live, autoscaling=False)
    if autoscaler.autoscaler_running():
        return Capacity(None, autoscaling=True)
    return Capacity(live, autoscaling=False)


def fit_resources(spec: Spec, embedded: bool) -> tuple[TrialResources, list[str], Capacity]:
    """Per-worker resources the cluster can satisfy, notes, and the capacity they were checked
    against. A request no node can ever meet is an error, never a silent wait.

    A trial has `resources.workers` workers (1: the trial process itself); the cpu and gpu
    figures are per worker. On an autoscaling cluster a request is checked against the node
    types the autoscaler may launch, not the nodes alive now: GPU workers start from zero.
    """
    capacity = cluster_capacity(embedded)
    return (*check_resources(spec, capacity, embedded), capacity)


def check_resources(spec: Spec, capacity: Capacity, embedded: bool) -> tuple[TrialResources, list[str]]:
    """The rules of `fit_resources` for a known capacity: the per-worker resources and notes."""
    notes: list[str] = []
    cpu, gpu, workers = spec.resources.cpu, spec.resources.gpu, spec.resources.workers
    where = "no node type of the cluster" if capacity.autoscaling else "no node of the cluster"
    if capacity.node_types is None:
        notes.append(
            "note: an autoscaler runs on this cluster but its node types cannot be read from here; "
            "trials wait for the nodes it launches"
        )
        return {"cpu": cpu, "gpu": gpu}, notes
    if gpu > 0 and capacity.total("GPU") == 0:
        if embedded:
            notes.append(f"warning: resources.gpu={gpu:g} but this machine has no GPU; running trials on CPU")
            gpu = 0.0
        else:
            raise JobError(f"resources.gpu: trials ask for {gpu:g} GPU but {where} has a GPU ({capacity.describe()})")
    # An embedded Ray was already checked against this machine's CPUs before it started.
    if not embedded and not capacity.fits_on_one_node({"CPU": cpu, "GPU": gpu}):
        raise JobError(
            f"resources: a trial worker asks for {cpu:g} CPU and {gpu:g} GPU; "
            f"{where} has that much ({capacity.describe()})"
        )
    for name, per_worker in (("cpu", cpu), ("gpu", gpu)):
        total = capacity.total(name.upper())
        if per_worker > 0 and per_worker * workers > total and not (embedded and name == "cpu"):
            grows = " at its largest" if capacity.autoscaling else ""
            raise JobError(
                f"resources.{name}: a trial asks for {per_worker * workers:g} {name.upper()}s "
                f"({workers} x {per_worker:g}); the cluster has {total:g}{grows}"
            )
    return {"cpu": cpu, "gpu": gpu}, notes


def concurrent_groups(spec: Spec, resources: TrialResources, capacity: Capacity | None) -> int | None:
    """How many data-parallel trials can hold all their workers at once.

    A Ray Train run starts only when all its workers fit; drivers beyond this count would sit
    waiting for workers (and hold the Tune slot), so Tune launches no more than that. On an
    autoscaling cluster the count is what the cluster can grow to.
    """
    workers = spec.resources.workers
    if workers == 1 or capacity is None or capacity.node_types is None:
        return spec.search.max_concurrent
    fits = [int(capacity.total("CPU") // (resources["cpu"] * workers))] if resources["cpu"] > 0 else []
    if resources["gpu"] > 0:
        fits.append(int(capacity.total("GPU") // (resources["gpu"] * workers)))
    limit = max(1, min(fits)) if fits else 1
    return min(limit, spec.search.max_concurrent) if spec.search.max_concurrent else limit
