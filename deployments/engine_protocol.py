"""The engine seam: what an LLM replica needs from the engine that generates for it.

Why a protocol: `LLMServer` (deployments/llm_server.py) owns the request's life in the replica --
validation, deadline, submission batching, the first reply, abort on cancel, the error event -- and
none of that depends on how tokens are made. Behind this class sit the real engine (vLLM's AsyncLLM
with vLLM's OpenAI serving layer, deployments/engine.py) and a stand-in that emits tokens at a set
time to first token and time per token with no compute (deployments/stand_in_engine.py). The
stand-in lets unit tests drive every path of `LLMServer` in milliseconds and lets
`bench.layer_alone` measure the serving layer's own CPU with no model on the machine. Ray Serve LLM
puts its engine behind an abstract class for the same reasons.

Every implementation answers with vLLM's protocol objects (`ChatCompletionResponse`,
`CompletionResponse`, `ErrorResponse`) or an async iterator of SSE strings in vLLM's chunk format,
so the layers above see one format whichever engine runs.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, AsyncGenerator, Union

from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest, ChatCompletionResponse
from vllm.entrypoints.openai.completion.protocol import CompletionRequest, CompletionResponse
from vllm.entrypoints.serve.engine.protocol import ErrorResponse, ModelCard

if TYPE_CHECKING:
    from deployments.config import ModelConfig

# What `chat` and `completion` return: a whole response, an error, or (streaming) SSE strings, each a
# complete event ("data: {...}\n\n"), the last one "data: [DONE]\n\n".
ServeResult = Union[ErrorResponse, ChatCompletionResponse, CompletionResponse, AsyncGenerator[str, None]]
OpenAIRequest = Union[ChatCompletionRequest, CompletionRequest]


@dataclass
class EngineLoad:
    """The engine scheduler's view of its load, refreshed every engine step."""

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0  # fraction of KV-cache blocks in use, 0..1
    prefix_cache_queries: int = 0  # tokens looked up in the prefix cache, cumulative
    prefix_cache_hits: int = 0  # tokens found there, cumulative
    requests_started: int = 0  # requests that produced a first token, cumulative
    requests_finished: int = 0  # cumulative
    updated_at: float = field(default_factory=time.monotonic)  # time.monotonic() of the last update


class Engine(abc.ABC):
    """One model's engine inside one LLM replica. Build it with `start` (blocking: loads the model)."""

    @classmethod
    @abc.abstractmethod
    def start(cls, cfg: "ModelConfig") -> "Engine":
        """Load the model and return a ready engine; raises on a bad model or engine argument."""

    @abc.abstractmethod
    async def chat(self, request: ChatCompletionRequest, request_id: str) -> ServeResult:
        """Serve a validated chat request. Client mistakes come back as an `ErrorResponse`, not raised."""

    @abc.abstractmethod
    async def completion(self, request: CompletionRequest, request_id: str) -> ServeResult:
        """Serve a validated completion request, as `chat` does."""

    @abc.abstractmethod
    async def abort(self, request: OpenAIRequest, request_id: str) -> None:
        """Stop the request's generation now and free its slot; a no-op for a finished request."""

    @abc.abstractmethod
    async def check_health(self) -> None:
        """Return when the engine is healthy; raise (any exception) when it is not."""

    @abc.abstractmethod
    def load(self) -> EngineLoad:
        """A snapshot of the engine's latest load (running and waiting requests, cache counters)."""

    @abc.abstractmethod
    def num_unfinished_requests(self) -> int:
        """Requests the engine holds (running, waiting or finishing)."""

    @abc.abstractmethod
    async def model_card(self) -> ModelCard:
        """The model's `/v1/models` entry."""

    @abc.abstractmethod
    def last_progress(self) -> float:
        """`time.monotonic()` of the engine's last output step (the watchdog's progress signal)."""

    def kill(self) -> None:
        """Stop a stalled engine at once, so that its requests fail now rather than hang: SIGKILL to
        every engine process (a stopped process cannot act on SIGTERM)."""
        import signal

        import psutil

        for pid in self.engine_pids():
            try:
                psutil.Process(pid).send_signal(signal.SIGKILL)
            except psutil.Error:
                pass

    def engine_pids(self) -> list[int]:
        """PIDs of processes this engine started, which must die with the replica (none by default)."""
        return []

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Stop the engine and its processes; called once, when the replica stops."""


def engine_class(cfg: "ModelConfig") -> type[Engine]:
    """The implementation `cfg.engine` names: "vllm" (the default) or "stand_in"."""
    if cfg.engine == "stand_in":
        from deployments.stand_in_engine import StandInEngine

        return StandInEngine
    from deployments.engine import VLLMEngine

    return VLLMEngine
