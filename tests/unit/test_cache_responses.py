"""Stored answers served as JSON and as SSE, and live streams folded back into stored answers.

Bodies are vLLM's own (its response models, dumped as llm_server.py dumps them), so a folded stream
must come back with exactly the fields of a non-streamed answer."""

import json

from vllm.entrypoints.generate.base.protocol import FunctionCall, ToolCall
from vllm.entrypoints.openai.chat_completion.protocol import (
    ChatCompletionResponse, ChatCompletionResponseChoice, ChatMessage)
from vllm.entrypoints.openai.completion.protocol import CompletionResponse, CompletionResponseChoice
from vllm.entrypoints.serve.engine.protocol import UsageInfo

from cache.responses import StreamCollector, as_response, as_sse, storable

USAGE = UsageInfo(prompt_tokens=5, completion_tokens=2, total_tokens=7)


def chat_body(*messages: ChatMessage, finish="stop") -> dict:
    return json.loads(ChatCompletionResponse(id="chatcmpl-1", created=1, model="m", usage=USAGE, choices=[
        ChatCompletionResponseChoice(index=i, message=m, finish_reason=finish) for i, m in enumerate(messages)
    ]).model_dump_json())


CHAT_BODY = chat_body(ChatMessage(role="assistant", content="Hello there"))
TOOL_BODY = chat_body(ChatMessage(role="assistant", content=None, tool_calls=[
    ToolCall(id="chatcmpl-tool-1", function=FunctionCall(name="get_weather", arguments='{"city": "Paris"}')),
    ToolCall(id="chatcmpl-tool-2", function=FunctionCall(name="get_time", arguments="{}"))]), finish="tool_calls")


def events(chunks):
    out = []
    for chunk in chunks:
        for e in chunk.split("\n\n"):
            if e.startswith("data: ") and e != "data: [DONE]":
                out.append(json.loads(e[6:]))
    return out


def fold(kind, chunks, strip_usage=False):
    c = StreamCollector(kind)
    relayed = [c.feed(chunk, strip_usage=strip_usage) for chunk in chunks]
    return c.result(), relayed


def _without_call_ids(body: dict) -> dict:
    choices = []
    for c in body.get("choices") or []:
        message = c.get("message")
        if isinstance(message, dict) and message.get("tool_calls"):
            c = dict(c, message=dict(message, tool_calls=[dict(t, id=None) for t in message["tool_calls"]]))
        choices.append(c)
    return {k: v for k, v in dict(body, choices=choices).items() if k not in ("id", "created")}


def same_answer(a: dict, b: dict) -> bool:
    """Equal but for the ids (the response's and its tool calls') and creation time a replay gets afresh."""
    return _without_call_ids(a) == _without_call_ids(b)


def call_ids(body: dict) -> list:
    return [t["id"] for c in body["choices"] for t in c["message"].get("tool_calls") or []]


def test_a_stored_answer_streams_like_a_live_one_and_folds_back_unchanged():
    chunks = list(as_sse("chat", CHAT_BODY, include_usage=True))
    assert chunks[-1] == "data: [DONE]\n\n"
    evs = events(chunks)
    assert evs[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in evs if e["choices"]) == "Hello there"
    assert evs[-1]["usage"] == {k: v for k, v in CHAT_BODY["usage"].items() if v is not None}
    assert evs[-1]["choices"] == []
    assert len({e["id"] for e in evs}) == 1 and evs[0]["id"] != CHAT_BODY["id"]
    folded, _ = fold("chat", chunks)
    assert same_answer(folded, CHAT_BODY)


def test_tool_calls_replay_identically_streamed_and_not():
    chunks = list(as_sse("chat", TOOL_BODY, include_usage=True))
    calls = [c for e in events(chunks) if e["choices"] for c in e["choices"][0]["delta"].get("tool_calls") or []]
    assert [(c["index"], c["function"]["name"]) for c in calls] == [(0, "get_weather"), (1, "get_time")]
    assert storable(TOOL_BODY)
    folded, _ = fold("chat", chunks)
    assert same_answer(folded, TOOL_BODY)
    assert same_answer(as_response("chat", TOOL_BODY), TOOL_BODY)


def test_every_replay_gets_its_own_tool_call_ids_in_vllms_form_and_the_entry_keeps_its_own():
    """A client keys tool results by call id: two answers must never share one (a user's report)."""
    stored = call_ids(TOOL_BODY)
    streamed = [c["id"] for e in events(as_sse("chat", TOOL_BODY, include_usage=False)) if e["choices"]
                for c in e["choices"][0]["delta"].get("tool_calls") or []]
    whole = [call_ids(as_response("chat", TOOL_BODY)) for _ in range(2)]
    seen = [stored, streamed, *whole]
    assert all(len(ids) == 2 for ids in seen)
    assert len({i for ids in seen for i in ids}) == 8, seen  # all distinct
    assert all(i.startswith("chatcmpl-tool-") and len(i) > len("chatcmpl-tool-") + 8 for ids in seen[1:] for i in ids)
    assert call_ids(TOOL_BODY) == ["chatcmpl-tool-1", "chatcmpl-tool-2"]  # the entry itself is unchanged


def test_a_models_deterministic_tool_call_ids_are_kept():
    """Kimi K2's ids name the function and index (`functions.get_weather:0`): vLLM writes the same again."""
    body = chat_body(ChatMessage(role="assistant", content=None, tool_calls=[
        ToolCall(id="functions.get_weather:0", function=FunctionCall(name="get_weather", arguments="{}"))]),
        finish="tool_calls")
    assert call_ids(as_response("chat", body)) == ["functions.get_weather:0"]


def test_a_live_stream_of_tool_call_deltas_folds_into_the_non_streamed_body():
    """vLLM streams a call as its id and name first, then the arguments in pieces."""
    head = '{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":'
    live = [
        head + '[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}',
        head + '[{"index":0,"delta":{"tool_calls":[{"id":"chatcmpl-tool-1","type":"function","index":0,'
               '"function":{"name":"get_weather","arguments":""}}]},"logprobs":null,"finish_reason":null}]}',
        head + '[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\\"city\\": "}}]}}]}',
        head + '[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\\"Paris\\"}"}}]}}]}',
        head + '[{"index":0,"delta":{},"logprobs":null,"finish_reason":"tool_calls","stop_reason":null}]}',
        head + '[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}',
    ]
    folded, _ = fold("chat", [f"data: {e}\n\n" for e in live] + ["data: [DONE]\n\n"])
    expected = chat_body(ChatMessage(role="assistant", content=None, tool_calls=[
        ToolCall(id="chatcmpl-tool-1", function=FunctionCall(name="get_weather", arguments='{"city": "Paris"}'))]),
        finish="tool_calls")
    assert same_answer(folded, expected)


def test_n_choices_stream_and_fold_back():
    body = chat_body(ChatMessage(role="assistant", content="a"), ChatMessage(role="assistant", content="b"))
    evs = events(as_sse("chat", body, include_usage=False))
    assert {e["choices"][0]["index"] for e in evs} == {0, 1}
    folded, _ = fold("chat", as_sse("chat", body, include_usage=True))
    assert same_answer(folded, body)


def test_usage_is_left_out_unless_asked_and_can_be_stripped_from_a_live_stream():
    assert all("usage" not in e for e in events(as_sse("chat", CHAT_BODY, include_usage=False)))
    folded, relayed = fold("chat", as_sse("chat", CHAT_BODY, include_usage=True), strip_usage=True)
    assert all("usage" not in e for e in events(relayed))
    assert folded["usage"] == CHAT_BODY["usage"]  # kept for the cache all the same


def test_completions_round_trip():
    body = json.loads(CompletionResponse(id="cmpl-1", created=1, model="m", usage=USAGE, choices=[
        CompletionResponseChoice(index=0, text="abc", finish_reason="length")]).model_dump_json())
    folded, _ = fold("completion", as_sse("completion", body, include_usage=True))
    assert same_answer(folded, body)
    assert as_response("completion", body)["id"] != "cmpl-1"


def test_unfinished_failed_or_logprob_streams_are_not_stored():
    chunks = list(as_sse("chat", CHAT_BODY, include_usage=True))
    assert fold("chat", chunks[:-1])[0] is None  # no [DONE]: the client left or the replica died
    assert fold("chat", ['data: {"error": {"message": "x", "code": 503}}\n\ndata: [DONE]\n\n'])[0] is None
    cut = json.loads(json.dumps(CHAT_BODY))
    cut["choices"][0]["finish_reason"] = "abort"
    assert not storable(cut)
    with_logprobs = json.loads(json.dumps(CHAT_BODY))
    with_logprobs["choices"][0]["logprobs"] = {"content": []}
    assert not storable(with_logprobs)


def test_forced_tool_calls_fold_with_the_empty_content_vllm_answers():
    """tool_choice required or named: vLLM's non-streamed message has content "" beside the calls."""
    forced = chat_body(ChatMessage(role="assistant", content="", tool_calls=[
        ToolCall(id="chatcmpl-tool-1", function=FunctionCall(name="get_weather", arguments="{}"))]))
    c = StreamCollector("chat", forced_tools=True)
    for chunk in as_sse("chat", forced, include_usage=True):
        c.feed(chunk)
    assert same_answer(c.result(), forced)


def test_the_system_fingerprint_survives_a_streamed_store_and_goes_where_vllm_puts_it():
    # vLLM stamps system_fingerprint on every non-streamed answer, and in a stream on the finish chunks
    # (no include_usage) or on the usage chunk only. An entry folded from a stream lost it once.
    for kind, body in (("chat", dict(CHAT_BODY, system_fingerprint="vllm-0.32")),
                       ("completion", json.loads(CompletionResponse(
                           id="cmpl-1", created=1, model="m", usage=USAGE, system_fingerprint="vllm-0.32",
                           choices=[CompletionResponseChoice(index=0, text="Hi", finish_reason="stop")]
                       ).model_dump_json()))):
        plain = events(as_sse(kind, body, include_usage=False))
        assert [bool(e["choices"][0]["finish_reason"]) for e in plain if "system_fingerprint" in e] == [True]
        with_usage = events(as_sse(kind, body, include_usage=True))
        assert [e["choices"] for e in with_usage if "system_fingerprint" in e] == [[]]
        for include_usage in (False, True):
            folded, _ = fold(kind, as_sse(kind, body, include_usage=include_usage))
            assert folded is None or folded["system_fingerprint"] == "vllm-0.32"
        folded, _ = fold(kind, as_sse(kind, body, include_usage=True))
        assert same_answer(folded, body)


def test_replayed_chunks_carry_the_fields_vllm_sets_on_its_own():
    # vLLM 0.32's chunks, as read off a live stream: "object" on every event; the chat role chunk with
    # prompt_token_ids and prompt_text, later chat choices with token_ids; completion choices with
    # stop_reason, prompt_token_ids and token_ids. A replay once lacked "object" (dumped exclude_unset).
    chat = events(as_sse("chat", CHAT_BODY, include_usage=True))
    assert {e["object"] for e in chat} == {"chat.completion.chunk"}
    assert {"prompt_token_ids", "prompt_text"} <= set(chat[0])
    assert all("token_ids" in c for e in chat[1:] for c in e["choices"])
    body = json.loads(CompletionResponse(id="cmpl-1", created=1, model="m", usage=USAGE, choices=[
        CompletionResponseChoice(index=0, text="Hi", finish_reason="stop")]).model_dump_json())
    completion = events(as_sse("completion", body, include_usage=True))
    assert {e["object"] for e in completion} == {"text_completion"}
    for e in completion:
        for c in e["choices"]:
            assert set(c) == {"index", "text", "logprobs", "finish_reason", "stop_reason", "prompt_token_ids",
                              "token_ids"}


def test_an_answer_cut_at_max_tokens_is_not_stored_when_the_request_offered_tools():
    # vLLM answers a tool call cut at max_tokens two ways: streamed as tool-call deltas, whole as raw
    # "<tool_call>" text. Stored one way, it would answer the other way differently from the model.
    cut_text = chat_body(ChatMessage(role="assistant", content='<tool_call>\n{"name": "get_weather"'),
                         finish="length")
    assert storable(cut_text) and not storable(cut_text, tools=True)
    assert storable(TOOL_BODY, tools=True)  # a complete call is stored
    for tools, stored in ((False, True), (True, False)):
        c = StreamCollector("chat", tools=tools)
        for chunk in as_sse("chat", chat_body(ChatMessage(role="assistant", content="Hi"), finish="length"),
                            include_usage=True):
            c.feed(chunk)
        assert (c.result() is not None) == stored
