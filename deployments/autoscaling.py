"""Queue-length autoscaling for the LLM deployments: a Ray Serve autoscaling policy.

Serve's default policy divides the requests at a deployment (queued at the handles plus ongoing at
the replicas) by `target_ongoing_requests`. For an LLM that misses where the wait is: a replica
accepts up to `max_ongoing_requests`, and past the engine's batch (`max_num_seqs`, or the KV cache)
those requests wait inside vLLM's scheduler, invisible as a queue. This policy counts the queue
in both places -- requests queued at the handles, and each engine's waiting requests (reported
by the replicas through `record_autoscaling_stats`) -- and weighs waiting requests
`queue_weight` times a running one, so a deployment grows as soon as requests wait, not only once
the ongoing count has crossed its target.

    desired = ceil((running + queue_weight * (handle_queued + engine_waiting)) / target_ongoing_requests)

`floor` keeps that many replicas while any request is running or queued (so `min_replicas: 0`
scales to zero only when idle). min/max replicas and the up/down delays are Serve's own
(`autoscaling_config`): Serve applies them to every policy's decision.

The controller imports this module (pickled by value): it imports only the standard library.
"""

from __future__ import annotations

import logging
import math
from typing import Any

logger = logging.getLogger("ray.serve")

# Keys of the replicas' `record_autoscaling_stats` (never `running_requests`: that one is Serve's).
ENGINE_RUNNING = "engine_running"
ENGINE_WAITING = "engine_waiting"


def _latest_sum(raw: dict, name: str) -> float | None:
    """Sum over replicas of each one's newest reported value; None when no replica reported it."""
    series = (raw or {}).get(name)
    if not series:
        return None
    total = 0.0
    for points in series.values():
        if points:
            total += float(points[-1].value)
    return total


class QueueLengthPolicy:
    def __init__(self, queue_weight: float = 2.0, floor: int = 1):
        if queue_weight < 1 or floor < 0:
            raise ValueError("queue_weight must be >= 1 and floor >= 0")
        self.queue_weight = queue_weight
        self.floor = floor

    def desired_replicas(self, handle_queued: float, serve_running: float, engine_running: float | None,
                         engine_waiting: float | None, target: float) -> int:
        """The replicas this load needs (before Serve's delays and min/max bounds)."""
        if engine_running is None or engine_waiting is None:  # no engine stats yet: Serve's own count
            running, queued = serve_running, handle_queued
        else:
            # Serve's ongoing count includes the engine's waiting requests; keep the larger view of
            # what runs, so requests between the handle and the engine are not lost.
            running = max(engine_running, serve_running - engine_waiting)
            queued = handle_queued + engine_waiting
        load = running + self.queue_weight * queued
        desired = math.ceil(load / max(target, 1e-9))
        if load > 0:
            desired = max(desired, self.floor)
        return desired

    def __call__(self, ctx: Any) -> tuple[int, dict]:
        try:
            raw = getattr(ctx, "raw_metrics", None) or {}
            desired = self.desired_replicas(
                handle_queued=float(ctx.total_queued_requests or 0.0),
                serve_running=float(ctx.total_running_requests or 0.0),
                engine_running=_latest_sum(raw, ENGINE_RUNNING),
                engine_waiting=_latest_sum(raw, ENGINE_WAITING),
                target=float(ctx.config.get_target_ongoing_requests()),
            )
            return desired, {}
        except Exception:  # a raising policy stalls the controller's whole update: keep the target
            logger.exception("QueueLengthPolicy failed; keeping %s replicas", ctx.target_num_replicas)
            return ctx.target_num_replicas, {}
