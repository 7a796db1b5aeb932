"""HAProxy's choice of ingress replica when the ingress replicas are the engines (`ingress.colocate`).

Why: with `ingress.colocate` the first model's engine runs inside each ingress replica, so the
replica HAProxy forwards a request to is the replica that generates it. HAProxy balances by least
connections, which knows neither prompt prefixes nor sessions: with several replicas, a
conversation's turns would land on replicas that do not hold its prefix in their KV cache, and the
prefix-cache and session routing of router/ would be lost for that model. Serve's HAProxy mode can
ask a deployment which replica to use (its "ingress request router": a Lua action POSTs the request
to `/internal/route` and pins the replica returned; Ray Serve LLM's direct streaming uses it the
same way with its LLMRouter). This deployment answers with the model's own request router
(router/request_router.py: prefix index, session table, loads) run over the ingress deployment's
replicas through `DeploymentHandle.choose_replica`, which routes without dispatching anything
(`ROUTE_ONLY_KWARG`: the router records the choice itself, as Serve never reports such a request
routed, and weighs replicas by the engine load each reports in its routing stats).

Only built when the colocated model may have more than one replica (deployments/app.py): with one,
there is nothing to choose and the hop would be pure cost.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Optional

from fastapi import FastAPI, HTTPException, Request
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.request_controls import SESSION_HEADER
from router.request_router import ROUTE_ONLY_KWARG

logger = logging.getLogger("ray.serve")

router_app = FastAPI()


def routing_body(raw: bytes, model: str) -> Optional[dict[str, Any]]:
    """The request body the prefix router reads, or None (the request is then load-balanced): a JSON
    object for `model` (or naming no model: the ingress then serves its first model) with `messages`
    or `prompt`. A truncated or malformed body routes by load alone; the ingress answers its error."""
    try:
        body = json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(body, dict) or body.get("model", model) != model:
        return None
    if not (isinstance(body.get("messages"), list) or isinstance(body.get("prompt"), (str, list))):
        return None
    return body


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=1024)
@serve.ingress(router_app)
class IngressRouter:
    """Serves `POST /internal/route` for HAProxy: {"host", "port", "replica_id"} of the ingress replica
    that should serve the request (Serve's contract for an ingress request router); 503 when no
    replica can be chosen (HAProxy then answers 503)."""

    def __init__(self, ingress: DeploymentHandle, model: str):
        self._ingress = ingress
        self._model = model

    @router_app.post("/internal/route")
    async def route(self, request: Request) -> dict:
        body = routing_body(await request.body(), self._model)
        handle = self._ingress
        session = request.headers.get(SESSION_HEADER)
        if session:
            handle = handle.options(session_id=session)
        try:
            # _reserve=False: no slot is taken on the replica (the request itself goes through HAProxy).
            args = (body,) if body is not None else ()
            async with handle.choose_replica(*args, _reserve=False, **{ROUTE_ONLY_KWARG: True}) as chosen:
                replica = chosen._replica
                endpoint = replica.backend_http_endpoint
                if endpoint is None:
                    raise RuntimeError(f"replica {chosen.replica_id} has no HTTP endpoint yet")
                host, port = endpoint
                return {"host": host, "port": port, "replica_id": replica.replica_id.to_full_id_str()}
        except Exception as e:  # noqa: BLE001 - any failure to choose is HAProxy's 503
            raise HTTPException(status_code=503, detail=f"no ingress replica could be chosen: {e!r}") from None
