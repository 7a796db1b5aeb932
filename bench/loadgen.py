"""An OpenAI-chat load generator that measures what users feel: TTFT, TPOT, ITL and E2E per request.

Why our own and not only `vllm bench serve` (bench/compare.py uses that one): the peer comparison
needs multi-turn conversations whose history includes the model's real answers, non-streamed
requests (the naive baseline and the ablation's first rows), per-contender extension fields (the
cache's `cache` field, raygate only) and the cache verdict of every response. Summaries use
`vllm bench serve`'s field names (`request_throughput`, `median_ttft_ms`, `p99_itl_ms`, ...), and
the percentiles are computed the same way (numpy, linear interpolation).

A workload is a list of conversations; each runs its turns in order (a turn waits for the
previous answer), and conversations run side by side: at most `concurrency` at a time (closed
loop), or started at Poisson arrival times (`request_rate` per second; open loop).

A figure that was not measured is None (JSON null, printed "—"), never 0: a run whose answers each
came whole (not streamed, or streamed as one chunk) has no TPOT or ITL (its TTFT is its E2E), a run
without a completed request has no latency at all, and a server that gives no `x-raygate-cache`
header has no cache hit rate.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Optional

import httpx
import numpy as np

PERCENTILES = (50, 90, 99)


@dataclass
class Conversation:
    """A system prompt (or none) and the user turns, sent one after another."""

    turns: list[str]
    system: Optional[str] = None
    max_tokens: int = 64
    ignore_eos: bool = False


@dataclass
class Result:
    ok: bool
    status: int | str
    ttft_s: float = 0.0  # not streamed: the first byte is the whole answer (= E2E)
    e2e_s: float = 0.0
    itls_s: list[float] = field(default_factory=list)
    output_tokens: int = 0
    prompt_tokens: int = 0
    cache: Optional[str] = None  # the x-raygate-cache verdict, where a contender gives one
    error: Optional[str] = None


async def _one(client: httpx.AsyncClient, url: str, body: dict, stream: bool) -> tuple[Result, str]:
    """One request; returns its measurements and the answer's text (for the next turn's history)."""
    t0 = time.perf_counter()
    try:
        if not stream:
            r = await client.post(url, json=body)
            e2e = time.perf_counter() - t0
            if r.status_code != 200:
                return Result(False, r.status_code, e2e_s=e2e, error=r.text[:200]), ""
            data = r.json()
            usage = data.get("usage") or {}
            text = data["choices"][0]["message"].get("content") or ""
            return Result(True, 200, ttft_s=e2e, e2e_s=e2e, output_tokens=usage.get("completion_tokens", 0),
                          prompt_tokens=usage.get("prompt_tokens", 0),
                          cache=r.headers.get("x-raygate-cache")), text
        async with client.stream("POST", url, json=body) as r:
            if r.status_code != 200:
                await r.aread()
                return Result(False, r.status_code, e2e_s=time.perf_counter() - t0, error=r.text[:200]), ""
            res = Result(True, 200, cache=r.headers.get("x-raygate-cache"))
            parts: list[str] = []
            last = None
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    res.ok, res.status, res.error = False, "stream error", str(chunk["error"])[:200]
                    continue
                if chunk.get("usage"):
                    res.output_tokens = chunk["usage"].get("completion_tokens", 0)
                    res.prompt_tokens = chunk["usage"].get("prompt_tokens", 0)
                for choice in chunk.get("choices") or []:
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        now = time.perf_counter()
                        if last is None:
                            res.ttft_s = now - t0
                        else:
                            res.itls_s.append(now - last)
                        last = now
                        parts.append(content)
            res.e2e_s = time.perf_counter() - t0
            if last is None and res.ok:  # no content at all (e.g. max_tokens 0): first byte = end
                res.ttft_s = res.e2e_s
            return res, "".join(parts)
    except (httpx.HTTPError, json.JSONDecodeError, KeyError) as e:
        return Result(False, type(e).__name__, e2e_s=time.perf_counter() - t0, error=repr(e)[:200]), ""


async def run(base_url: str, model: str, conversations: list[Conversation], *, concurrency: int = 16,
              request_rate: Optional[float] = None, stream: bool = True, extra: Optional[dict] = None,
              seed: int = 0, progress: Optional[str] = None, timeout_s: float = 600,
              transport: Optional[httpx.AsyncBaseTransport] = None) -> tuple[list[Result], float]:
    """Run the conversations; returns every request's result and the wall-clock duration."""
    url = base_url + "/v1/chat/completions"
    results: list[Result] = []
    total = sum(len(c.turns) for c in conversations)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=progress, leave=False, mininterval=2.0)

    async def converse(client: httpx.AsyncClient, conv: Conversation) -> None:
        messages = [{"role": "system", "content": conv.system}] if conv.system else []
        for turn in conv.turns:
            messages.append({"role": "user", "content": turn})
            body = {"model": model, "messages": list(messages), "max_tokens": conv.max_tokens, "temperature": 0,
                    **(extra or {})}
            if conv.ignore_eos:
                body["ignore_eos"] = True
            if stream:
                body.update(stream=True, stream_options={"include_usage": True})
            res, text = await _one(client, url, body, stream)
            results.append(res)
            if bar is not None:
                bar.update(1)
            if not res.ok:
                return  # a conversation does not go on after a failed turn
            messages.append({"role": "assistant", "content": text})

    limits = httpx.Limits(max_connections=max(concurrency, 64), max_keepalive_connections=max(concurrency, 64))
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits, transport=transport) as client:
        t0 = time.perf_counter()
        if request_rate is None:
            queue: asyncio.Queue = asyncio.Queue()
            for conv in conversations:
                queue.put_nowait(conv)

            async def worker():
                while not queue.empty():
                    await converse(client, queue.get_nowait())

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        else:
            rng = random.Random(seed)
            tasks = []
            for conv in conversations:
                tasks.append(asyncio.create_task(converse(client, conv)))
                await asyncio.sleep(rng.expovariate(request_rate))
            await asyncio.gather(*tasks)
        duration = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    return results, duration


def _stats(prefix: str, values_s: list[float], out: dict) -> None:
    """mean, median and PERCENTILES of `values_s` in ms; None for each when there are no values."""
    ms = np.array(values_s) * 1000.0 if values_s else None
    out[f"mean_{prefix}_ms"] = float(np.mean(ms)) if ms is not None else None
    out[f"median_{prefix}_ms"] = float(np.median(ms)) if ms is not None else None
    for p in PERCENTILES:
        out[f"p{p}_{prefix}_ms"] = float(np.percentile(ms, p)) if ms is not None else None


def summarize(results: list[Result], duration: float) -> dict:
    """`vllm bench serve`'s fields where they exist, plus errors by status and the cache hit rate.
    Latencies are over completed requests only (failures are counted in `failed` and `errors`);
    a statistic with nothing to measure is None."""
    ok = [r for r in results if r.ok]
    out: dict = {"completed": len(ok), "failed": len(results) - len(ok), "duration": duration,
                 "total_input_tokens": sum(r.prompt_tokens for r in ok),
                 "total_output_tokens": sum(r.output_tokens for r in ok)}
    out["request_throughput"] = len(ok) / duration if duration else None
    out["output_throughput"] = out["total_output_tokens"] / duration if duration else None
    # Token timings exist only for answers that came in more than one chunk: a non-streamed answer,
    # or a "stream" of one chunk (the naive server's), has none, and (e2e - ttft) would be a made-up 0.
    chunked = [r for r in ok if r.itls_s]
    _stats("ttft", [r.ttft_s for r in ok], out)
    _stats("tpot", [(r.e2e_s - r.ttft_s) / (r.output_tokens - 1) for r in chunked if r.output_tokens > 1], out)
    _stats("itl", [x for r in chunked for x in r.itls_s], out)
    _stats("e2el", [r.e2e_s for r in ok], out)
    errors: dict[str, int] = {}
    for r in results:
        if not r.ok:
            errors[str(r.status)] = errors.get(str(r.status), 0) + 1
    out["errors"] = errors
    verdicts = [r.cache for r in ok if r.cache]
    hits = sum(1 for v in verdicts if v.startswith("hit") or v == "coalesced")
    out["cache_hit_rate"] = hits / len(verdicts) if verdicts else None
    return out


def fmt(value, spec: str = "{:.0f}") -> str:
    """A figure for a table: "—" when it was not measured (None)."""
    return "—" if value is None else spec.format(value)
