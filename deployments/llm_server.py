"""The LLM deployment: each replica owns one vLLM engine and streams OpenAI responses to the ingress.

Every call is a streaming handle call whose first item is a `Reply` head (status and body, or the
first SSE chunk) and whose later items are SSE strings. Reading the head before the ingress commits
an HTTP status is what lets errors that vLLM raises lazily (at the first engine step) still reach the
client as a 4xx JSON error instead of a 200 stream that carries an error event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncGenerator, Optional

import ray
from ray import serve
from vllm.entrypoints.serve.engine.protocol import ErrorResponse

from deployments.autoscaling import ENGINE_RUNNING, ENGINE_WAITING
from deployments.config import ModelConfig
from deployments.engine_protocol import Engine, ServeResult, engine_class
from deployments.engine_watchdog import EngineWatchdog
from common.process_reaper import start_reaper
from common.errors import error_body
from common.request_kind import RequestKind
from deployments.request_parsing import OpenAIRequest, validate_request
from deployments.serving_metrics import DEADLINE_DROPS
from router.request_router import INFLIGHT_STAT, UNHEALTHY_STAT

logger = logging.getLogger("ray.serve")

_ERROR_PREFIX = 'data: {"error"'


@dataclass
class Reply:
    """The head of a response: an HTTP status and a JSON body, or (streaming) the first SSE chunk."""

    status: int
    body: str
    streaming: bool = False
    replica: str = ""  # the serving replica's id (response header x-raygate-replica)


def _sse_error_reply(chunk: str) -> Optional[Reply]:
    """An SSE chunk that is an error event (vLLM's lazily raised validation) as an error Reply."""
    if not chunk.startswith(_ERROR_PREFIX):
        return None
    payload = json.loads(chunk[len("data: ") :].strip())
    err = payload.get("error", {})
    return Reply(status=int(err.get("code") or 500), body=json.dumps(payload))


class EngineUnavailable(RuntimeError):
    """This replica's engine was stopped (stalled) and the replica awaits replacement.

    `replica`: the replica's unique id, so that the ingress can tell its router to skip it at once
    (the routing stats that say so reach routers only every request_routing_stats_period_s)."""

    def __init__(self, reason: str, replica: Optional[str] = None):
        super().__init__(reason, replica)
        self.reason = reason
        self.replica = replica

    def __str__(self) -> str:
        return f"replica {self.replica}: {self.reason}" if self.replica else self.reason


class LLMServer:
    """One vLLM engine per replica. Methods are called by the ingress through a DeploymentHandle."""

    async def __init__(self, cfg: ModelConfig, engine: Optional[Engine] = None):
        """`engine`: an already started engine (unit tests); by default the one `cfg.engine` names,
        started here (blocks until the model is loaded; Serve routes nothing here before it returns)."""
        self._cfg = cfg
        self._engine = engine if engine is not None else engine_class(cfg).start(cfg)
        self._reaper = start_reaper(self._engine.engine_pids())
        self._unhealthy: Optional[str] = None  # why this replica must be replaced (None: healthy)
        self._watchdog = EngineWatchdog(self._engine, cfg.stall_timeout_s)
        self._watchdog_task = asyncio.get_running_loop().create_task(self._watch_engine())
        if cfg.submit_batching.enabled:
            self._submit_batch.set_max_batch_size(cfg.submit_batching.max_batch_size)
            self._submit_batch.set_batch_wait_timeout_s(cfg.submit_batching.batch_wait_timeout_s)
        try:
            self._replica_id = serve.get_replica_context().replica_id.unique_id
        except Exception:  # noqa: BLE001 - outside a Serve replica (unit tests)
            self._replica_id = "local"
        await self._warmup(cfg.warmup_requests)
        await self._prefill_system_prompts(cfg.warmup_system_prompts)

    @classmethod
    async def in_process(cls, cfg: ModelConfig) -> "LLMServer":
        """A server for `cfg` inside the calling replica (the colocated ingress): the same engine,
        watchdog, warm-up and generate() as an LLM deployment's replica, called without a handle."""
        server = cls.__new__(cls)
        await server.__init__(cfg)
        return server

    async def _watch_engine(self, period_s: float = 1.0) -> None:
        """Every `period_s`: a stalled engine is killed and the replica turns unhealthy for good
        (deployments/engine_watchdog.py says why)."""
        while self._unhealthy is None:
            await asyncio.sleep(period_s)
            reason = self._watchdog.check()
            if reason is not None:
                self._unhealthy = reason
                logger.error("replica %s: %s; killing the engine, the replica reports unhealthy until replaced",
                             self._replica_id, reason)
                self._engine.kill()

    async def _prefill_system_prompts(self, prompts: list[str]) -> None:
        """Put each configured system prompt in the prefix cache (a 1-token request each)."""
        for prompt in prompts:
            req = {"model": self._cfg.name, "max_tokens": 1,
                   "messages": [{"role": "system", "content": prompt}, {"role": "user", "content": "."}]}
            request = validate_request(RequestKind.CHAT, req)
            async for item in self.generate(RequestKind.CHAT, request, f"prefill-{uuid.uuid4().hex}"):
                if isinstance(item, Reply) and item.status != 200:
                    raise RuntimeError(f"prefilling a system prompt failed: {item.status} {item.body}")

    async def _warmup(self, n: int) -> None:
        """Serve `n` real requests (half streamed) so the first client request meets a warm engine."""
        for i in range(n):
            stream = i % 2 == 1
            req = {
                "model": self._cfg.name,
                "messages": [{"role": "user", "content": f"warm-up request {i}"}],
                "max_tokens": 4,
                "stream": stream,
            }
            request = validate_request(RequestKind.CHAT, req)
            async for item in self.generate(RequestKind.CHAT, request, f"warmup-{uuid.uuid4().hex}"):
                if isinstance(item, Reply) and item.status != 200:
                    raise RuntimeError(f"warm-up request failed: {item.status} {item.body}")

    async def _submit(self, kind: RequestKind, request: Any, request_id: str) -> ServeResult:
        if kind == RequestKind.CHAT:
            return await self._engine.chat(request, request_id)
        return await self._engine.completion(request, request_id)

    # Grouping submissions with @serve.batch is measured, not assumed: see docs/architecture.md.
    # Sizes come from submit_batching; max_concurrent_batches is high so that a batch that holds
    # non-streaming requests does not stall the next one.
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01, max_concurrent_batches=1024)
    async def _submit_batch(self, items: list[tuple[RequestKind, Any, str]]) -> list[ServeResult]:
        return list(await asyncio.gather(*(self._submit(*item) for item in items)))

    async def generate(self, kind: RequestKind, request: OpenAIRequest, request_id: str,
                       deadline: Optional[float] = None) -> AsyncGenerator[Reply | str, None]:
        """Serve one chat or completion request: a `Reply` head, then (streaming) SSE strings.

        `request` is vLLM's request model as the ingress validated it, with the tenant's caps applied
        (deployments/request_view.py): the replica does not validate again. `request_id` is raygate's
        own unique id (never the client's x-request-id): the engine's request ids, and so aborts, are
        derived from it. `deadline` (Unix time) is checked last thing before the engine: time spent in
        Serve's queues counts against it too. Raises `EngineUnavailable` when the engine was stopped as
        stalled (the ingress retries elsewhere)."""
        if self._unhealthy is not None:
            raise EngineUnavailable(self._unhealthy, self._replica_id)
        if deadline is not None and time.time() >= deadline:
            DEADLINE_DROPS.inc(tags={"model": self._cfg.name, "stage": "replica"})
            msg = "The request's deadline passed before it reached the engine."
            yield self._reply(503, error_body(503, msg).model_dump_json())
            return
        try:
            if self._cfg.submit_batching.enabled:
                result = await self._submit_batch((kind, request, request_id))
            else:
                result = await self._submit(kind, request, request_id)
        except asyncio.CancelledError:
            # The client left while a non-streaming request was generating. Unbatched, the
            # cancellation reaches vLLM's generator; batched, the generation runs in the batch's own
            # task, which a caller's cancellation does not reach: abort it by id.
            await self._engine.abort(request, request_id)
            raise
        if isinstance(result, ErrorResponse):
            yield self._reply(int(result.error.code or 500), result.model_dump_json())
            return
        if not hasattr(result, "__aiter__"):
            yield self._reply(200, result.model_dump_json())
            return
        # Streaming: cancelling this generator (client gone) closes vLLM's, which aborts the request.
        stream: AsyncGenerator[str, None] = result
        done = False
        try:
            first = await stream.__anext__()
            err = _sse_error_reply(first)
            if err is not None:
                err.replica = self._replica_id
                yield err
                done = True
                return
            yield Reply(status=200, body=first, streaming=True, replica=self._replica_id)
            async for chunk in stream:
                yield chunk
            done = True
        finally:
            await stream.aclose()
            if not done:
                await self._engine.abort(request, request_id)

    def _reply(self, status: int, body: str) -> Reply:
        return Reply(status=status, body=body, replica=self._replica_id)

    async def model_card(self) -> dict:
        return (await self._engine.model_card()).model_dump()

    def engine_stats(self, replica: Optional[str] = None) -> dict:
        """Load as the engine sees it; read by tests, benchmarks and /admin/models. `replica` is
        read by the router (to reach one given replica), not here."""
        load = self._engine.load()
        return {
            "replica": self._replica_id,
            "unhealthy": self._unhealthy,  # why Serve is to replace this replica (None: healthy)
            "running": load.running,
            "waiting": load.waiting,
            "unfinished": self._engine.num_unfinished_requests(),
            "kv_cache_usage": load.kv_cache_usage,
            "prefix_cache_queries": load.prefix_cache_queries,
            "prefix_cache_hits": load.prefix_cache_hits,
            "requests_started": load.requests_started,
            "requests_finished": load.requests_finished,
        }

    def record_routing_stats(self) -> dict[str, Any]:
        """Serve pushes this to every router of the deployment (request_routing_stats_period_s): a
        replica whose engine stalled is skipped by router/request_router.py until it is replaced; the
        requests its engine holds (running + waiting) are its load once Serve's cached queue length
        has expired."""
        load = self._engine.load()
        return {UNHEALTHY_STAT: self._unhealthy is not None, INFLIGHT_STAT: load.running + load.waiting}

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's autoscaler calls this on every replica; deployments/autoscaling.py reads it."""
        load = self._engine.load()
        return {ENGINE_RUNNING: float(load.running), ENGINE_WAITING: float(load.waiting)}

    def process_info(self, replica: Optional[str] = None) -> dict:
        """This replica's PID and its engine's PIDs (tests check that engines die with replicas).
        `replica` pins the call to one replica (read by the router)."""
        return {"replica": self._replica_id, "pid": os.getpid(), "engine_pids": self._engine.engine_pids(),
                "node_id": ray.get_runtime_context().get_node_id()}

    async def check_health(self) -> None:
        """Raises (with the reason) when the engine stalled or its own health check fails."""
        if self._unhealthy is not None:
            raise EngineUnavailable(self._unhealthy, self._replica_id)
        await self._engine.check_health()

    def __del__(self):
        self.shutdown()

    def shutdown(self, timeout_s: Optional[float] = None) -> None:
        """Stop the engine (once; the reaper kills what is left when the process ends): SIGTERM, and
        SIGKILL past `timeout_s` seconds (None: the engine's own default)."""
        engine = getattr(self, "_engine", None)
        if engine is not None:
            self._engine = None
            try:
                engine.shutdown() if timeout_s is None else engine.shutdown(timeout_s=timeout_s)
            except Exception:  # the reaper still kills what is left
                logger.exception("engine shutdown failed")
