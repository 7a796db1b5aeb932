"""Prometheus series of the ingress: latency as the client sees it, admission control, deadlines and
tenant limits (`ray_raygate_request_seconds`, `ray_raygate_first_chunk_seconds`,
`ray_raygate_admission_*`, `ray_raygate_deadline_*`, `ray_raygate_rate_limit*`, `ray_raygate_auth_failures`).

The engine's own view (TTFT, ITL, E2E inside vLLM, its queues and caches) is vLLM's series,
exported by the replicas as `ray_vllm_*` (ModelConfig.engine_metrics).

A stream's body ends with its `[DONE]` chunk (`observe_latency`; deployments/sse.py says why:
complete `openai` SDK streams were counted as 499 by Serve)."""

from __future__ import annotations

import time
from typing import AsyncIterator

from ray.util.metrics import Counter, Gauge, Histogram
from starlette.responses import Response, StreamingResponse

from deployments.sse import ends_stream, run_out

_LATENCY_BOUNDARIES = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]
REQUEST_SECONDS = Histogram(
    "raygate_request_seconds",
    description="Successful requests, from arrival at the ingress to the end of the response body, by model, "
                "by what answered (model or cache) and whether it streamed.",
    boundaries=_LATENCY_BOUNDARIES,
    tag_keys=("model", "source", "stream"),
)
FIRST_CHUNK_SECONDS = Histogram(
    "raygate_first_chunk_seconds",
    description="Streamed requests, from arrival at the ingress to the first SSE chunk sent: the time to first "
                "token as the client sees it (less the network), by model and by what answered.",
    boundaries=_LATENCY_BOUNDARIES,
    tag_keys=("model", "source"),
)

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
                "ingress (while waiting for a slot), replica (in Serve's queues) or first_byte (the model did "
                "not start answering in time: 504, aborted at the engine).",
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


def observe_latency(response: Response, model: str, source: str, started: float) -> None:
    """Record a successful response's latency; a stream's when its first chunk and its end are sent.

    A 200 stream's body also ends right after its `[DONE]` chunk (module docstring: why); whatever
    the body iterator still has to do after it (a relayed stream's end, the cache write-back) runs
    in the background."""
    if response.status_code != 200:
        return
    if not isinstance(response, StreamingResponse):
        REQUEST_SECONDS.observe(time.perf_counter() - started, tags={"model": model, "source": source, "stream": "no"})
        return
    response.body_iterator = _timed(response.body_iterator, model, source, started)


async def _timed(chunks: AsyncIterator, model: str, source: str, started: float) -> AsyncIterator:
    """A stream is complete when its `[DONE]` chunk is sent: the body ends there, and clients stop
    reading there. One that ends in an error event is not a success."""
    first, it = True, aiter(chunks)
    async for chunk in it:
        if first:
            first = False
            FIRST_CHUNK_SECONDS.observe(time.perf_counter() - started, tags={"model": model, "source": source})
        if ends_stream(chunk):
            if not (isinstance(chunk, str) and chunk.startswith('data: {"error"')):
                REQUEST_SECONDS.observe(time.perf_counter() - started,
                                        tags={"model": model, "source": source, "stream": "yes"})
            yield chunk
            run_out(it)
            return
        yield chunk
