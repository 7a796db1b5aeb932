"""The coalescer merges real vLLM RequestOutputs; the source is a scripted async generator."""

import asyncio

import pytest
from vllm.outputs import CompletionOutput, RequestOutput

from deployments.stream_coalescing import coalesce_outputs


def _out(token: int, finished: bool = False, index: int = 0) -> RequestOutput:
    comp = CompletionOutput(index=index, text=f"t{token} ", token_ids=[token], cumulative_logprob=None,
                            logprobs=None, finish_reason="length" if finished else None)
    return RequestOutput(request_id="r", prompt="p", prompt_token_ids=[1], prompt_logprobs=None,
                         outputs=[comp], finished=finished)


async def _scripted(steps, closed: list):
    """Yield (delay_s, output) steps like an engine would; record whether it was closed early."""
    try:
        for delay, out in steps:
            await asyncio.sleep(delay)
            yield out
    except (asyncio.CancelledError, GeneratorExit):
        closed.append(True)
        raise


async def _collect(gen):
    t0 = asyncio.get_running_loop().time()
    got = []
    async for out in gen:
        got.append((asyncio.get_running_loop().time() - t0, [t for c in out.outputs for t in c.token_ids], out.finished))
    return got


async def test_first_output_is_not_held_and_middle_ones_merge():
    steps = [(0.0, _out(1))] + [(0.01, _out(i)) for i in range(2, 12)] + [(0.01, _out(12, finished=True))]
    got = await _collect(coalesce_outputs(_scripted(steps, []), interval_s=0.05, max_tokens=1000))
    assert got[0][1] == [1] and got[0][0] < 0.03  # first token at once
    assert [t for _, toks, _ in got for t in toks] == list(range(1, 13))  # nothing lost, order kept
    assert got[-1][2] is True  # finish delivered
    assert 2 <= len(got) <= 5  # 11 later tokens over ~110 ms in 50 ms chunks, not 12 chunks


async def test_finish_is_sent_at_once_not_after_the_interval():
    steps = [(0.0, _out(1)), (0.01, _out(2)), (0.01, _out(3, finished=True))]
    got = await _collect(coalesce_outputs(_scripted(steps, []), interval_s=10.0, max_tokens=1000))
    assert got[-1][2] and got[-1][0] < 2.0  # not held for the 10 s interval (margin for a loaded CI host)
    assert [t for _, toks, _ in got for t in toks] == [1, 2, 3]


async def test_count_limit_flushes_before_the_interval():
    steps = [(0.0, _out(1))] + [(0.001, _out(i)) for i in range(2, 10)] + [(0.5, _out(10, finished=True))]
    got = await _collect(coalesce_outputs(_scripted(steps, []), interval_s=10.0, max_tokens=4))
    sizes = [len(toks) for _, toks, _ in got]
    assert sizes[0] == 1 and max(sizes[1:-1]) <= 4 and sum(sizes) == 10
    assert got[1][0] < 2.0  # the full chunk did not wait for the 10 s interval (margin for a loaded host)


async def test_n_greater_than_one_keeps_choices_apart():
    steps = [(0.0, _out(1, index=0)), (0.0, _out(101, index=1)), (0.01, _out(2, index=0)),
             (0.01, _out(102, index=1)), (0.01, _out(3, finished=True, index=0))]
    merged = {}
    async for out in coalesce_outputs(_scripted(steps, []), interval_s=0.05, max_tokens=1000):
        for c in out.outputs:
            merged.setdefault(c.index, []).extend(c.token_ids)
    assert merged == {0: [1, 2, 3], 1: [101, 102]}


async def test_closing_the_consumer_closes_the_engine_stream():
    closed: list = []
    steps = [(0.0, _out(1))] + [(0.01, _out(i)) for i in range(2, 1000)]
    gen = coalesce_outputs(_scripted(steps, closed), interval_s=0.02, max_tokens=1000)
    assert (await gen.__anext__()).outputs[0].token_ids == [1]
    await gen.__anext__()
    await gen.aclose()
    await asyncio.sleep(0.01)
    assert closed == [True]  # vLLM's generate() aborts the engine request on exactly this


async def test_cancelling_the_consumer_task_closes_the_engine_stream():
    closed: list = []
    steps = [(0.0, _out(1))] + [(0.01, _out(i)) for i in range(2, 1000)]

    async def consume():
        async for _ in coalesce_outputs(_scripted(steps, closed), interval_s=0.02, max_tokens=1000):
            pass

    task = asyncio.ensure_future(consume())
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closed == [True]


async def test_engine_error_reaches_the_consumer_after_pending_output():
    async def failing():
        yield _out(1)
        await asyncio.sleep(0.01)
        yield _out(2)
        raise RuntimeError("engine died")

    seen = []
    with pytest.raises(RuntimeError, match="engine died"):
        async for out in coalesce_outputs(failing(), interval_s=0.05, max_tokens=1000):
            seen.extend(out.outputs[0].token_ids)
    assert seen == [1, 2]


def test_a_chunk_budget_stretches_each_streams_interval_with_the_streams_in_flight():
    from deployments.stream_coalescing import ChunkBudget

    budget = ChunkBudget(min_interval_s=0.05, max_chunks_per_s=400)
    assert budget.interval_s() == 0.05
    budget.streams = 10
    assert budget.interval_s() == 0.05  # 10 streams x 20 chunks/s = 200/s: within the budget
    budget.streams = 64
    assert budget.interval_s() == 64 / 400  # 0.16 s: 400 chunks/s in all
    assert ChunkBudget(0.05, None).interval_s() == 0.05  # no budget: the fixed interval
