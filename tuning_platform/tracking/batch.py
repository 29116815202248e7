"""What the run writer queues and merges: the kinds of queued writes, and a run's waiting
metrics, tags and params cut into requests within MLflow's batch limits."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.validation import MAX_ENTITIES_PER_BATCH, MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH

# A queued write: a run made (or found), a change of a run, results to log; and the writer's
# own flush and stop.
CREATE, UPDATE, LOG, FLUSH, STOP = "create", "update", "log", "flush", "stop"


def counted_as(kind: str, payload: Any) -> str:
    """The kind a queued write counts as in `not_written`: a log without metrics (a run's
    params or end tags) is a run update, not a result."""
    return UPDATE if kind == LOG and not payload[0] else kind


class Batch:
    """What waits to be written to one run, and the queued writes it merges (by their numbers)."""

    def __init__(self) -> None:
        self.metrics: list[Metric] = []
        self.tags: list[RunTag] = []
        self.params: list[Param] = []
        self.writes: list[int] = []

    def add(self, write: int, metrics: list[Metric], tags: list[RunTag], params: list[Param]) -> None:
        self.metrics += metrics
        self.tags += tags
        self.params += params
        self.writes.append(write)

    def requests(self) -> Iterator[tuple[list[Metric], list[RunTag], list[Param]]]:
        """The batch cut to MLflow's limits per `log_batch`: at most 100 params and tags
        together, 1000 entities in all (mlflow/utils/validation.py). Always one request, even
        an empty one, so a run's order of writes is the order they were queued in."""
        metrics, tags, params = self.metrics, self.tags, self.params
        while True:
            request_params = params[:MAX_PARAMS_TAGS_PER_BATCH]
            request_tags = tags[: MAX_PARAMS_TAGS_PER_BATCH - len(request_params)]
            room = MAX_ENTITIES_PER_BATCH - len(request_params) - len(request_tags)
            request_metrics = metrics[: min(room, MAX_METRICS_PER_BATCH)]
            params, tags = params[len(request_params) :], tags[len(request_tags) :]
            metrics = metrics[len(request_metrics) :]
            yield request_metrics, request_tags, request_params
            if not (metrics or tags or params):
                return
