"""Stored answers served as JSON and as SSE, and live streams folded back into stored answers."""

import json

from cache.responses import StreamCollector, as_response, as_sse, storable

CHAT_BODY = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there"}, "logprobs": None,
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
}


def events(chunks):
    out = []
    for chunk in chunks:
        for e in chunk.split("\n\n"):
            if e.startswith("data: ") and e != "data: [DONE]":
                out.append(json.loads(e[6:]))
    return out


def test_a_stored_answer_streams_like_a_live_one_and_folds_back_unchanged():
    chunks = list(as_sse("chat", CHAT_BODY, include_usage=True))
    assert chunks[-1] == "data: [DONE]\n\n"
    evs = events(chunks)
    assert evs[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in evs if e["choices"]) == "Hello there"
    assert evs[-1]["usage"] == CHAT_BODY["usage"] and evs[-1]["choices"] == []
    assert len({e["id"] for e in evs}) == 1 and evs[0]["id"] != CHAT_BODY["id"]
    c = StreamCollector("chat")
    for chunk in chunks:
        c.feed(chunk)
    folded = c.result()
    assert folded["choices"] == CHAT_BODY["choices"] and folded["usage"] == CHAT_BODY["usage"]


def test_usage_is_left_out_unless_asked_and_can_be_stripped_from_a_live_stream():
    assert all("usage" not in e for e in events(as_sse("chat", CHAT_BODY, include_usage=False)))
    c = StreamCollector("chat")
    relayed = [c.feed(chunk, strip_usage=True) for chunk in as_sse("chat", CHAT_BODY, include_usage=True)]
    assert all("usage" not in e for e in events(relayed))
    assert c.result()["usage"] == CHAT_BODY["usage"]  # kept for the cache all the same


def test_completions_round_trip():
    body = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "text": "abc", "logprobs": None, "finish_reason": "length"}], "usage": None}
    c = StreamCollector("completion")
    for chunk in as_sse("completion", body, include_usage=False):
        c.feed(chunk)
    assert c.result()["choices"] == body["choices"]
    assert as_response("completion", body)["id"] != "cmpl-1"


def test_unfinished_failed_or_tool_streams_are_not_stored():
    c = StreamCollector("chat")
    chunks = list(as_sse("chat", CHAT_BODY, include_usage=True))
    for chunk in chunks[:-1]:  # no [DONE]: the client left or the replica died
        c.feed(chunk)
    assert c.result() is None
    c = StreamCollector("chat")
    c.feed('data: {"error": {"message": "x", "code": 503}}\n\ndata: [DONE]\n\n')
    assert c.result() is None
    tool = json.loads(json.dumps(CHAT_BODY))
    tool["choices"][0]["message"]["tool_calls"] = [{"id": "1"}]
    assert not storable(tool)
    cut = json.loads(json.dumps(CHAT_BODY))
    cut["choices"][0]["finish_reason"] = "abort"
    assert not storable(cut)
