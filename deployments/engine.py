"""The engine behind an LLM replica: vLLM's AsyncLLM and vLLM's own OpenAI serving layer, in-process.

Why vLLM's serving classes and not our own: request validation, chat templates, tool and reasoning
parsers, logprobs, `n`, stop strings, usage accounting and the exact SSE chunk format are what
clients depend on, and vLLM already gets them right. raygate adds what a single `vllm serve` lacks
(replicas, routing, caching, admission) around this object, which does nothing but serve.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, replace
from typing import Any, AsyncGenerator, Union

import psutil
from starlette.requests import Request
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest, ChatCompletionResponse
from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
from vllm.entrypoints.openai.completion.protocol import CompletionRequest, CompletionResponse
from vllm.entrypoints.openai.completion.serving import OpenAIServingCompletion
from vllm.entrypoints.openai.models.protocol import BaseModelPath
from vllm.entrypoints.openai.models.serving import OpenAIServingModels
from vllm.entrypoints.serve import create_error_response
from vllm.entrypoints.serve.engine.protocol import ErrorResponse, ModelCard
from vllm.renderers.chat_utils import load_chat_template
from vllm.renderers.online_renderer import OnlineRenderer
from vllm.sampling_params import RequestOutputKind
from vllm.usage.usage_lib import UsageContext
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.metrics.loggers import StatLoggerBase

from deployments.config import BUILTIN_MODELS, ModelConfig, StreamingConfig
from deployments.stream_coalescing import coalesce_outputs

logger = logging.getLogger("raygate.engine")

ServeResult = Union[ErrorResponse, ChatCompletionResponse, CompletionResponse, AsyncGenerator[str, None]]


@dataclass
class EngineLoad:
    """The engine scheduler's view of its load, refreshed every engine step."""

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    prefix_cache_queries: int = 0  # tokens looked up in the prefix cache, cumulative
    prefix_cache_hits: int = 0  # tokens found there, cumulative
    requests_started: int = 0  # requests that produced a first token, cumulative
    requests_finished: int = 0  # cumulative
    updated_at: float = field(default_factory=time.monotonic)


class _LoadTracker(StatLoggerBase):
    """A vLLM stat logger that keeps the latest scheduler stats where the replica can read them."""

    current: EngineLoad = EngineLoad()  # per process: one engine per replica process

    def __init__(self, vllm_config: Any, engine_index: int = 0):
        _LoadTracker.current = EngineLoad()

    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
        load = _LoadTracker.current
        if iteration_stats is not None:
            load.requests_started += len(iteration_stats.time_to_first_tokens_iter)
            load.requests_finished += len(iteration_stats.finished_requests)
        if scheduler_stats is None:
            return
        load.running = scheduler_stats.num_running_reqs
        load.waiting = scheduler_stats.num_waiting_reqs + scheduler_stats.num_skipped_waiting_reqs
        load.kv_cache_usage = scheduler_stats.kv_cache_usage
        pcs = scheduler_stats.prefix_cache_stats
        if pcs is not None:
            load.prefix_cache_queries += pcs.queries
            load.prefix_cache_hits += pcs.hits
        load.updated_at = time.monotonic()

    def log_engine_initialized(self):
        pass


class CoalescingAsyncLLM(AsyncLLM):
    """AsyncLLM whose streamed (delta) outputs are coalesced by time and count before vLLM's serving
    layer renders them; see deployments/stream_coalescing.py for why."""

    streaming: StreamingConfig = StreamingConfig()

    def generate(self, prompt, sampling_params, request_id, **kwargs):  # type: ignore[override]
        source = super().generate(prompt, sampling_params, request_id, **kwargs)
        cfg = self.streaming
        if cfg.interval_ms <= 0 or sampling_params.output_kind != RequestOutputKind.DELTA:
            return source
        return coalesce_outputs(source, cfg.interval_ms / 1000.0, cfg.max_tokens_per_chunk)


def resolve_model_source(cfg: ModelConfig) -> str:
    """Where the weights are: a built-in model (BUILTIN_MODELS) is built here on first use."""
    if cfg.model in BUILTIN_MODELS:
        from deployments.builtin_models import ensure_builtin

        return str(ensure_builtin(cfg.model))
    return cfg.model


def _raw_request(request_id: str) -> Request:
    # vLLM's serving layer reads only headers and `.state` from the HTTP request; the ingress owns
    # the real one. Passing our id makes vLLM's engine request id equal to the client-visible one.
    return Request({"type": "http", "headers": [(b"x-request-id", request_id.encode())], "state": {}})


class LLMEngine:
    """One vLLM engine and the OpenAI endpoints over it. Construct with `LLMEngine.start`."""

    def __init__(self, cfg: ModelConfig, engine: CoalescingAsyncLLM, model_path: str):
        self.cfg = cfg
        self.engine = engine
        self.model_path = model_path
        name = cfg.name
        self.models = OpenAIServingModels(engine, [BaseModelPath(name=name, model_path=model_path)])
        template = load_chat_template(cfg.chat_template) if cfg.chat_template else None
        renderer = OnlineRenderer(
            model_config=engine.model_config,
            renderer=engine.renderer,
            request_logger=None,
            chat_template=template,
            chat_template_content_format="auto",
        )
        renderer.warmup()
        self.chat_serving = OpenAIServingChat(
            engine,
            self.models,
            "assistant",
            online_renderer=renderer,
            request_logger=None,
            chat_template=template,
            chat_template_content_format="auto",
        )
        self.completion_serving = OpenAIServingCompletion(
            engine, self.models, online_renderer=renderer, request_logger=None
        )

    @classmethod
    def start(cls, cfg: ModelConfig) -> "LLMEngine":
        """Build the engine (blocks until the model is loaded: tens of seconds)."""
        model_path = resolve_model_source(cfg)
        kwargs = cfg.engine_args.as_kwargs()
        kwargs.update(model=model_path, served_model_name=[cfg.name])
        if cfg.tokenizer:
            kwargs["tokenizer"] = cfg.tokenizer
        args = AsyncEngineArgs(**kwargs)
        vllm_config = args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
        stat_loggers: list = [_LoadTracker]
        if cfg.engine_metrics:
            from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger

            stat_loggers.append(RayPrometheusStatLogger)
        engine = CoalescingAsyncLLM.from_vllm_config(
            vllm_config,
            usage_context=UsageContext.OPENAI_API_SERVER,
            stat_loggers=stat_loggers,
            enable_log_requests=False,
            disable_log_stats=False,
        )
        engine.streaming = cfg.streaming
        return cls(cfg, engine, model_path)

    async def chat(self, request: ChatCompletionRequest, request_id: str) -> ServeResult:
        try:
            return await self.chat_serving.create_chat_completion(request, _raw_request(request_id))
        except Exception as e:  # vLLM raises (not returns) most validation errors
            return create_error_response(e)

    async def completion(self, request: CompletionRequest, request_id: str) -> ServeResult:
        try:
            return await self.completion_serving.create_completion(request, _raw_request(request_id))
        except Exception as e:
            return create_error_response(e)

    async def abort(self, request: ChatCompletionRequest | CompletionRequest, request_id: str) -> None:
        """Abort a request's engine work now. Closing its stream aborts it too, but through generator
        finalization; this makes a client's disconnect free its engine slot deterministically.
        The engine ids follow vLLM's serving layer: `chatcmpl-<id>`, and `cmpl-<id>-<i>` per prompt."""
        if isinstance(request, ChatCompletionRequest):
            ids = [f"chatcmpl-{request_id}"]
        else:
            prompt = request.prompt
            many = isinstance(prompt, list) and prompt and not isinstance(prompt[0], int)
            ids = [f"cmpl-{request_id}-{i}" for i in range(len(prompt) if many else 1)]
        await self.engine.abort(ids)

    async def model_card(self) -> ModelCard:
        listing = await self.models.show_available_models()
        card = listing.data[0]
        card.owned_by = "raygate"
        return card

    async def check_health(self) -> None:
        await self.engine.check_health()

    def load(self) -> EngineLoad:
        """A snapshot of the latest engine stats (the tracker keeps mutating its own copy)."""
        return replace(_LoadTracker.current)

    def num_unfinished_requests(self) -> int:
        return self.engine.get_num_unfinished_requests()

    def engine_pids(self) -> list[int]:
        """PIDs of every process this engine started (EngineCore, its workers, helpers)."""
        me = psutil.Process(os.getpid())
        return [p.pid for p in me.children(recursive=True)]

    def shutdown(self, timeout_s: float = 5.0) -> None:
        self.engine.shutdown(timeout=timeout_s)
