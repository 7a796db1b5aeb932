"""Ray Serve options of one deployment as they appear in serve_config.yaml (shared by every deployment)."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict

# How often a stopping replica checks whether its requests in flight are done (Serve's
# graceful_shutdown_wait_loop_s). An idle replica's stop waits one period before its first check, and
# Serve stops the ingress, the SemanticCache and CacheRedis one after another: by that estimate
# (3 periods) Serve's 2 s adds up to ~6 s to Ctrl-C and 0.25 s ~0.75 s (the idle-app bound is 5 s; a
# loaded CI run read 5.07 s with 0.25 s, a run with 0.05 s 3.3 s). The check costs nothing.
SHUTDOWN_CHECK_S = 0.05


class DeploymentOptions(BaseModel):
    """Ray Serve options for one deployment; passed to `.options()` as they are."""

    model_config = ConfigDict(extra="allow")

    num_replicas: Optional[int | str] = None
    max_ongoing_requests: Optional[int] = None
    max_queued_requests: Optional[int] = None
    autoscaling_config: Optional[dict[str, Any]] = None
    ray_actor_options: Optional[dict[str, Any]] = None
    health_check_period_s: Optional[float] = None
    health_check_timeout_s: Optional[float] = None
    graceful_shutdown_timeout_s: Optional[float] = None
    graceful_shutdown_wait_loop_s: Optional[float] = SHUTDOWN_CHECK_S
    # {request_router_class: "module:Class", request_router_kwargs: {...}}: Serve's RequestRouterConfig.
    request_router_config: Optional[dict[str, Any]] = None

    def as_options(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}
