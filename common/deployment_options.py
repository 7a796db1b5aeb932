"""Ray Serve options of one deployment as they appear in serve_config.yaml (shared by every deployment)."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict


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
    # How often a stopping replica checks whether its requests in flight are done. Serve's 2 s adds up
    # to 2 s to every stop of an idle replica (Ctrl-C waited for it); the check costs nothing.
    graceful_shutdown_wait_loop_s: Optional[float] = 0.25
    # {request_router_class: "module:Class", request_router_kwargs: {...}}: Serve's RequestRouterConfig.
    request_router_config: Optional[dict[str, Any]] = None

    def as_options(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}
