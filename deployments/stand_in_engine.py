"""A stand-in engine: tokens at a set time to first token and time per token, no model and no compute.

Why: the serving layer's own cost (HTTP, admission, cache, routing, the Ray hops, SSE framing) is
hidden behind the engine's on a 2-core host where both share the CPU. With this engine behind the
protocol (deployments/engine_protocol.py) the whole application graph runs unchanged while the
"engine" costs only a timer per chunk, so `bench.layer_alone` measures the layer alone, and the
unit tests of `LLMServer` run every request path in milliseconds.

What it emits is vLLM's format, built with vLLM's protocol models: `chatcmpl-`/`cmpl-` ids, a role
chunk first, content chunks grouped like the real engine's (the first token alone, then at most every
`streaming.interval_ms` or `max_tokens_per_chunk` tokens, the last at once), a finish chunk, a usage
chunk with `stream_options.include_usage`, then `[DONE]`. The text is `max_tokens` (default 16)
copies of " tok" per choice, finish_reason "length"; prompt tokens are counted as whitespace words.
Configure it with `engine: stand_in` and `stand_in: {ttft_ms, itl_ms}` on a model.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, AsyncGenerator, Optional

from vllm.entrypoints.openai.chat_completion.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionResponseChoice,
    ChatCompletionResponseStreamChoice,
    ChatCompletionStreamResponse,
    ChatMessage,
    DeltaMessage,
    UsageInfo,
)
from vllm.entrypoints.openai.completion.protocol import (
    CompletionRequest,
    CompletionResponse,
    CompletionResponseChoice,
    CompletionResponseStreamChoice,
    CompletionStreamResponse,
)
from vllm.entrypoints.serve.engine.protocol import ModelCard

from deployments.engine_protocol import Engine, EngineLoad, OpenAIRequest, ServeResult
from deployments.stream_coalescing import ChunkBudget

if TYPE_CHECKING:
    from deployments.config import ModelConfig

TOKEN = " tok"
DEFAULT_MAX_TOKENS = 16


class StandInFailure(RuntimeError):
    """Raised mid-stream when the engine is told to fail (`fail_after_chunks`): a dying engine."""


def _prompt_tokens(request: OpenAIRequest) -> int:
    if isinstance(request, ChatCompletionRequest):
        text = " ".join(str(m.get("content", "")) if isinstance(m, dict) else str(m) for m in request.messages)
    else:
        text = request.prompt if isinstance(request.prompt, str) else " ".join(map(str, request.prompt))
    return max(1, len(text.split()))


def _max_tokens(request: OpenAIRequest) -> int:
    value = getattr(request, "max_completion_tokens", None) or request.max_tokens
    return int(value) if value else DEFAULT_MAX_TOKENS


class StandInEngine(Engine):
    """Timed tokens in vLLM's response format. `ttft_s`: seconds to the first token; `itl_s`: seconds
    per later token; `interval_s`/`max_tokens_per_chunk`: chunk grouping as the real engine's
    streaming config; `fail_after_chunks`: raise `StandInFailure` after that many content chunks
    (tests of the error event); `healthy`: what `check_health` reports."""

    def __init__(self, model_name: str, ttft_s: float = 0.02, itl_s: float = 0.01, interval_s: float = 0.05,
                 max_tokens_per_chunk: int = 64, max_model_len: int = 2048,
                 fail_after_chunks: Optional[int] = None, max_num_seqs: Optional[int] = None,
                 max_chunks_per_s: Optional[float] = None):
        self.model_name = model_name
        self.ttft_s, self.itl_s = ttft_s, itl_s
        self.max_tokens_per_chunk = max_tokens_per_chunk
        self.budget = ChunkBudget(interval_s, max_chunks_per_s)  # the real engine's chunk interval rule
        self.max_model_len = max_model_len
        self.fail_after_chunks = fail_after_chunks
        # Like the real engine's batch: requests beyond it wait (and count as waiting) for a seat.
        self._seats = asyncio.Semaphore(max_num_seqs) if max_num_seqs else None
        self._waiting = 0
        self.healthy = True
        self.frozen = False  # True: no more output, as an engine process stopped with SIGSTOP
        self._killed = False
        self._progress = time.monotonic()
        self._running: set[str] = set()
        self._aborted: set[str] = set()
        self.aborts: list[str] = []  # every engine request id aborted, in order (read by tests)
        self._load = EngineLoad()

    @classmethod
    def start(cls, cfg: "ModelConfig") -> "StandInEngine":
        s = cfg.stand_in
        return cls(cfg.name, ttft_s=s.ttft_ms / 1000, itl_s=s.itl_ms / 1000,
                   interval_s=cfg.streaming.interval_ms / 1000, max_tokens_per_chunk=cfg.streaming.max_tokens_per_chunk,
                   max_chunks_per_s=cfg.streaming.max_chunks_per_s,
                   max_model_len=cfg.engine_args.max_model_len or 2048, max_num_seqs=cfg.engine_args.max_num_seqs)

    # ---- the protocol ------------------------------------------------------------------------

    async def chat(self, request: ChatCompletionRequest, request_id: str) -> ServeResult:
        return await self._serve(request, f"chatcmpl-{request_id}", chat=True)

    async def completion(self, request: CompletionRequest, request_id: str) -> ServeResult:
        return await self._serve(request, f"cmpl-{request_id}", chat=False)

    async def abort(self, request: OpenAIRequest, request_id: str) -> None:
        engine_id = f"chatcmpl-{request_id}" if isinstance(request, ChatCompletionRequest) else f"cmpl-{request_id}"
        self.aborts.append(engine_id)
        if engine_id in self._running:
            self._aborted.add(engine_id)

    async def check_health(self) -> None:
        if not self.healthy:
            raise RuntimeError("stand-in engine marked unhealthy")

    def load(self) -> EngineLoad:
        return EngineLoad(running=len(self._running) - self._waiting, waiting=self._waiting,
                          requests_started=self._load.requests_started,
                          requests_finished=self._load.requests_finished)

    def num_unfinished_requests(self) -> int:
        return len(self._running)

    def last_progress(self) -> float:
        return self._progress

    def kill(self) -> None:
        """Requests in flight fail at once and new ones are refused, as after a killed engine core."""
        self._killed = True
        self.frozen = False

    async def _step(self, delay_s: float) -> None:
        """Wait `delay_s` of engine time; a frozen engine waits until it is killed."""
        await asyncio.sleep(delay_s)
        while self.frozen:
            await asyncio.sleep(0.01)
        if self._killed:
            raise StandInFailure("engine killed")
        self._progress = time.monotonic()

    async def model_card(self) -> ModelCard:
        return ModelCard(id=self.model_name, root="stand-in", owned_by="raygate", max_model_len=self.max_model_len)

    # ---- generation ----------------------------------------------------------------------------

    async def _serve(self, request: OpenAIRequest, engine_id: str, chat: bool) -> ServeResult:
        if self._killed:
            raise StandInFailure("engine killed")
        n_out, n = _max_tokens(request), request.n or 1
        usage = UsageInfo(prompt_tokens=_prompt_tokens(request), completion_tokens=n_out * n,
                          total_tokens=_prompt_tokens(request) + n_out * n)
        if request.stream:
            return self._stream(request, engine_id, chat, n_out, n, usage)
        await self._begin(engine_id)
        try:
            await self._step(self.ttft_s + self.itl_s * (n_out - 1))
            if engine_id in self._aborted:
                raise asyncio.CancelledError
        finally:
            self._end(engine_id)
        text = TOKEN * n_out
        if chat:
            return ChatCompletionResponse(
                id=engine_id, model=self.model_name, usage=usage,
                choices=[ChatCompletionResponseChoice(index=i, message=ChatMessage(role="assistant", content=text),
                                                      finish_reason="length") for i in range(n)])
        return CompletionResponse(
            id=engine_id, model=self.model_name, usage=usage,
            choices=[CompletionResponseChoice(index=i, text=text, finish_reason="length") for i in range(n)])

    async def _begin(self, engine_id: str) -> None:
        """Hold the request (as unfinished) and wait for a seat in the batch."""
        self._running.add(engine_id)
        if self._seats is not None:
            self._waiting += 1
            try:
                await self._seats.acquire()
            except BaseException:
                self._running.discard(engine_id)
                raise
            finally:
                self._waiting -= 1

    def _end(self, engine_id: str) -> None:
        self._running.discard(engine_id)
        self._aborted.discard(engine_id)
        self._load.requests_finished += 1
        if self._seats is not None:
            self._seats.release()

    def _chunk(self, engine_id: str, chat: bool, n: int, text: Optional[str], finish: Optional[str],
               role: bool = False, created: int = 0) -> str:
        if chat:
            delta = DeltaMessage(role="assistant", content="") if role else DeltaMessage(content=text)
            body = ChatCompletionStreamResponse(
                id=engine_id, model=self.model_name, created=created,
                choices=[ChatCompletionResponseStreamChoice(index=i, delta=delta, finish_reason=finish)
                         for i in range(n)])
        else:
            body = CompletionStreamResponse(
                id=engine_id, model=self.model_name, created=created,
                choices=[CompletionResponseStreamChoice(index=i, text=text or "", finish_reason=finish)
                         for i in range(n)])
        return f"data: {body.model_dump_json(exclude_unset=True)}\n\n"

    async def _stream(self, request: OpenAIRequest, engine_id: str, chat: bool, n_out: int, n: int,
                      usage: UsageInfo) -> AsyncGenerator[str, None]:
        await self._begin(engine_id)
        self.budget.streams += 1
        created = int(time.time())
        started = time.monotonic()
        try:
            await self._step(self.ttft_s)
            self._load.requests_started += 1
            if chat:
                yield self._chunk(engine_id, chat, n, None, None, role=True, created=created)
            sent, chunks = 0, 0
            last_token_at = self.ttft_s + self.itl_s * (n_out - 1)  # seconds after the start
            while sent < n_out:
                if engine_id in self._aborted:
                    return
                if self.fail_after_chunks is not None and chunks >= self.fail_after_chunks:
                    raise StandInFailure(f"engine failed after {chunks} chunks")
                # Tokens made by now: the first at TTFT, then one every itl_s.
                elapsed = time.monotonic() - started
                made = n_out if not self.itl_s else min(n_out, 1 + int((elapsed - self.ttft_s) / self.itl_s + 1e-9))
                take = 1 if sent == 0 else min(made - sent, self.max_tokens_per_chunk)
                if take > 0:
                    sent += take
                    chunks += 1
                    yield self._chunk(engine_id, chat, n, TOKEN * take, None, created=created)
                if sent < n_out:
                    # The next chunk: when its first token exists and the interval has passed since
                    # this one, but never after the last token (the end leaves at once).
                    flushed = time.monotonic() - started
                    due = min(max(self.ttft_s + self.itl_s * sent, flushed + self.budget.interval_s()), last_token_at)
                    await self._step(max(0.0, due - (time.monotonic() - started)))
            yield self._finish_chunk(engine_id, chat, n, created)
            options = request.stream_options
            if options is not None and options.include_usage:
                cls = ChatCompletionStreamResponse if chat else CompletionStreamResponse
                yield f"data: {cls(id=engine_id, model=self.model_name, created=created, choices=[], usage=usage).model_dump_json(exclude_unset=True)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            self.budget.streams -= 1
            self._end(engine_id)

    def _finish_chunk(self, engine_id: str, chat: bool, n: int, created: int) -> str:
        if not chat:
            return self._chunk(engine_id, chat, n, "", "length", created=created)
        body = ChatCompletionStreamResponse(
            id=engine_id, model=self.model_name, created=created,
            choices=[ChatCompletionResponseStreamChoice(index=i, delta=DeltaMessage(content=""), finish_reason="length")
                     for i in range(n)])
        return f"data: {body.model_dump_json(exclude_unset=True)}\n\n"
