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
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import psutil
from starlette.requests import Request
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
from vllm.entrypoints.openai.completion.protocol import CompletionRequest
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

from common.errors import error_body
from deployments.config import BUILTIN_MODELS, ModelConfig, StreamingConfig
from deployments.engine_protocol import Engine, EngineLoad, OpenAIRequest, ServeResult
from deployments.placement import RAY_EXECUTOR, replica_placement
from deployments.stream_coalescing import ChunkBudget

logger = logging.getLogger("raygate.engine")

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
    budget: ChunkBudget = ChunkBudget(0.05, None)

    def generate(self, prompt, sampling_params, request_id, **kwargs):  # type: ignore[override]
        source = super().generate(prompt, sampling_params, request_id, **kwargs)
        cfg = self.streaming
        if (cfg.interval_ms <= 0 and not cfg.max_chunks_per_s) or sampling_params.output_kind != RequestOutputKind.DELTA:
            return source
        return self.budget.coalesce(source, cfg.max_tokens_per_chunk)


def resolve_model_source(cfg: ModelConfig) -> str:
    """Where the weights are: a built-in model (BUILTIN_MODELS) is built here on first use."""
    if cfg.model in BUILTIN_MODELS:
        from deployments.builtin_models import ensure_builtin

        return str(ensure_builtin(cfg.model))
    return cfg.model


_REPO = Path(__file__).resolve().parents[1]


def resolve_chat_template(value: Optional[str]) -> Optional[str]:
    """A configured chat template: a file path (absolute, or relative to the raygate checkout, so a
    replica finds it whatever its working directory) or the template text itself."""
    if not value:
        return None
    path = Path(value)
    if not path.is_absolute() and (_REPO / path).is_file():
        value = str(_REPO / path)
    return load_chat_template(value)


# Content parts every model reads; any other part (image_url, input_audio, video_url, file, ...) needs
# a model that accepts that modality.
_TEXT_PARTS = frozenset({"text", "refusal", "thinking"})


def text_only_refusal(model: str, request: ChatCompletionRequest) -> Optional[ErrorResponse]:
    """A 400 naming the first non-text content part, for a model that reads text only; None if all
    parts are text. (A multimodal model gets every part: vLLM fetches and processes them.)"""
    for i, message in enumerate(request.messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind is not None and kind not in _TEXT_PARTS:
                where = f"messages.{i}.content.{j}"
                return error_body(400, f"Model `{model}` accepts text only: '{where}' is an '{kind}' part.",
                                  param=where)
    return None


def _raw_request(request_id: str) -> Request:
    # vLLM's serving layer reads only headers and `.state` from the HTTP request; the ingress owns
    # the real one. `request_id` is raygate's own unique id (never the client's x-request-id): vLLM
    # derives its engine request ids from this header, and aborts find requests by them.
    return Request({"type": "http", "headers": [(b"x-request-id", request_id.encode())], "state": {}})


class VLLMEngine(Engine):
    """One vLLM engine and the OpenAI endpoints over it. Construct with `VLLMEngine.start`."""

    def __init__(self, cfg: ModelConfig, engine: CoalescingAsyncLLM, model_path: str):
        self.cfg = cfg
        self.engine = engine
        self.model_path = model_path
        name = cfg.name
        self.models = OpenAIServingModels(engine, [BaseModelPath(name=name, model_path=model_path)])
        template = resolve_chat_template(cfg.chat_template)
        renderer = OnlineRenderer(
            model_config=engine.model_config,
            renderer=engine.renderer,
            request_logger=None,
            chat_template=template,
            chat_template_content_format="auto",
            # The renderer, not OpenAIServingChat, refuses tool_choice auto/required/named when it has no
            # parser (vLLM 0.32): both get the same tool and reasoning settings, as in `vllm serve`.
            enable_auto_tools=cfg.enable_auto_tool_choice,
            tool_parser=cfg.tool_call_parser,
            tool_strict_level=cfg.tool_strict_level,
            reasoning_parser=cfg.reasoning_parser or "",
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
            enable_auto_tools=cfg.enable_auto_tool_choice,
            tool_parser=cfg.tool_call_parser,
            tool_strict_level=cfg.tool_strict_level,
            reasoning_parser=cfg.reasoning_parser or "",
        )
        self.multimodal = bool(getattr(engine.model_config, "is_multimodal_model", False))
        self.completion_serving = OpenAIServingCompletion(
            engine, self.models, online_renderer=renderer, request_logger=None
        )

    @classmethod
    def start(cls, cfg: ModelConfig) -> "VLLMEngine":
        """Build the engine (blocks until the model is loaded: tens of seconds)."""
        model_path = resolve_model_source(cfg)
        kwargs = cfg.engine_args.as_kwargs()
        kwargs.update(model=model_path, served_model_name=[cfg.name])
        if cfg.tokenizer:
            kwargs["tokenizer"] = cfg.tokenizer
        if cfg.reasoning_parser:
            # An engine argument too in `vllm serve`: structured outputs start after the reasoning ends.
            kwargs["reasoning_parser"] = cfg.reasoning_parser
        placement = replica_placement(cfg)
        if placement.executor is not None:
            kwargs["distributed_executor_backend"] = placement.executor
        args = AsyncEngineArgs(**kwargs)
        vllm_config = args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
        if placement.executor == RAY_EXECUTOR and placement.world_size > 1:
            # The workers go into the replica's own placement group (bundles 1..N hold the
            # accelerator). EngineCore is a process of its own that joins Ray as a driver and would
            # not see the group as "current": hand it over explicitly, as Ray Serve LLM does.
            import ray.util

            group = ray.util.get_current_placement_group()
            if group is None:
                raise RuntimeError(
                    f"tensor_parallel_size x pipeline_parallel_size = {placement.world_size} with the Ray "
                    "executor needs the replica's placement group, and this replica has none"
                )
            vllm_config.parallel_config.placement_group = group
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
        engine.budget = ChunkBudget(cfg.streaming.interval_ms / 1000.0, cfg.streaming.max_chunks_per_s)
        return cls(cfg, engine, model_path)

    async def chat(self, request: ChatCompletionRequest, request_id: str) -> ServeResult:
        if not self.multimodal:
            refused = text_only_refusal(self.cfg.name, request)
            if refused is not None:
                return refused
        try:
            return await self.chat_serving.create_chat_completion(request, _raw_request(request_id))
        except Exception as e:  # vLLM raises (not returns) most validation errors
            return create_error_response(e)

    async def completion(self, request: CompletionRequest, request_id: str) -> ServeResult:
        try:
            return await self.completion_serving.create_completion(request, _raw_request(request_id))
        except Exception as e:
            return create_error_response(e)

    async def abort(self, request: OpenAIRequest, request_id: str) -> None:
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

    def last_progress(self) -> float:
        # The stat logger records every output step the engine core sends (disable_log_stats=False).
        return _LoadTracker.current.updated_at

    def engine_pids(self) -> list[int]:
        """PIDs of every process this engine started (EngineCore, its workers, helpers).

        Workers started through Ray (`distributed_executor_backend: ray`) are not among them: they
        are actors owned by EngineCore, which joins Ray as a driver of its own; when the reaper kills
        EngineCore, Ray ends its job and kills the actors it owns, and Serve removes the replica's
        placement group, which kills whatever still runs in it (tests/integration/test_placement_live.py)."""
        me = psutil.Process(os.getpid())
        return [p.pid for p in me.children(recursive=True)]

    def shutdown(self, timeout_s: float = 0.5) -> None:
        """SIGTERM the engine's processes, SIGKILL (vLLM's kill_process_tree) what is left after `timeout_s`.

        Short on purpose: Serve calls the replica's destructor only after its requests in flight have
        drained, so nothing is lost, and an idle CPU engine took the whole 5 s it used to be given (its
        worker alone ~3 s) on every stop: most of an idle app's Ctrl-C."""
        self.engine.shutdown(timeout=timeout_s)
