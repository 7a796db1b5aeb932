"""Prometheus series of admission control, deadlines and tenant limits (`ray_raygate_admission_*`,
`ray_raygate_deadline_*`, `ray_raygate_rate_limit*`, `ray_raygate_auth_failures`)."""

from __future__ import annotations

from ray.util.metrics import Counter, Gauge

REJECTIONS = Counter(
    "raygate_admission_rejections",
    description="Requests refused by admission control, by reason: rate (429), capacity, shed (for a "
                "higher priority), queue_timeout, deadline (all 503 with Retry-After).",
    tag_keys=("model", "reason"),
)
QUEUED = Gauge(
    "raygate_admission_queued",
    description="Requests waiting at this ingress replica for a slot at the model, by priority.",
    tag_keys=("model", "priority"),
)
INFLIGHT = Gauge(
    "raygate_admission_inflight",
    description="Requests this ingress replica has at the model's replicas.",
    tag_keys=("model",),
)
DEADLINE_DROPS = Counter(
    "raygate_deadline_drops",
    description="Requests dropped because their deadline passed before the engine, by stage: "
                "ingress (while waiting for a slot) or replica (in Serve's queues).",
    tag_keys=("model", "stage"),
)
RATE_LIMITED = Counter(
    "raygate_rate_limited",
    description="Requests refused with 429 by a tenant's rate limit, by limit: requests or tokens (per minute).",
    tag_keys=("tenant", "limit"),
)
RATE_LIMIT_FALLBACKS = Counter(
    "raygate_rate_limit_fallbacks",
    description="Rate-limit checks made from this replica's memory because Redis was down or slow.",
)
AUTH_FAILURES = Counter(
    "raygate_auth_failures",
    description="Requests refused for a missing or wrong API key (401) or a non-admin key on an admin endpoint (403).",
    tag_keys=("status",),
)
RETRIES = Counter(
    "raygate_retries",
    description="Model calls made again because a replica failed before answering (nothing had been sent "
                "to the client yet), by the error.",
    tag_keys=("model", "error"),
)
