"""The router's Prometheus series (`ray_raygate_router_*`), recorded in the process that routes:
every ingress replica holds one router per LLM deployment."""

from __future__ import annotations

from ray.util.metrics import Counter

DECISIONS = Counter(
    "raygate_router_decisions",
    description="Replica choices by reason: affinity (x-session-id), prefix (longest cached prefix), "
                "balance (no prefix held: least loaded), fallback (prefix holder overloaded: two choices).",
    tag_keys=("deployment", "decision"),
)
