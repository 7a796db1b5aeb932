"""Client mistakes become APIError(400) naming the problem, before anything reaches an engine."""

import json

import pytest

from common.errors import APIError
from common.request_kind import RequestKind
from deployments.request_parsing import parse_json_object, validate_request

CHAT, COMPLETION = RequestKind.CHAT, RequestKind.COMPLETION

MSG = [{"role": "user", "content": "hi"}]


def _err(fn, *a) -> APIError:
    with pytest.raises(APIError) as e:
        fn(*a)
    return e.value


@pytest.mark.parametrize("body, words", [
    (b"", "empty"), (b"{not json", "not valid JSON"), (b"[1, 2]", "JSON object"), (b"\xff\xfe", "not valid JSON"),
])
def test_bodies_that_are_not_json_objects(body, words):
    e = _err(parse_json_object, body)
    assert e.status == 400 and words in e.message


@pytest.mark.parametrize("body", [
    b'{"model": "m", "metadata": ' + b"[" * 1000 + b"]" * 1000 + b"}",  # Python's parser: RecursionError
    b"[" * 100_000 + b"]" * 100_000,
    b'{"model": "m", "messages": [{"role": "user", "content": ' + b'{"a": ' * 129 + b"1" + b"}" * 129 + b"}]}",
])
def test_bodies_nested_too_deeply_are_a_400_not_a_500(body):
    e = _err(parse_json_object, body)
    assert e.status == 400 and "128 levels" in e.message


def test_a_deep_but_real_json_schema_passes():
    schema: dict = {"type": "string"}
    for _ in range(40):  # 40 nested objects: ~80 levels with the wrappers
        schema = {"type": "object", "properties": {"x": schema}}
    body = {"model": "m", "messages": MSG, "response_format": {"type": "json_schema",
                                                               "json_schema": {"name": "s", "schema": schema}}}
    assert parse_json_object(json.dumps(body).encode()) == body


def test_unknown_parameter_is_named():
    e = _err(validate_request, CHAT, {"model": "m", "messages": MSG, "max_token": 5})
    assert e.status == 400 and e.param == "max_token" and "Unrecognized request argument" in e.message


@pytest.mark.parametrize("payload, param", [
    ({"model": "m"}, "messages"),
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": "hello"}, "messages"),
    ({"model": "m", "messages": -4.42e16}, "messages"),  # found by the API fuzz: vLLM raised TypeError
    ({"model": "m", "messages": {"role": "user"}}, "messages"),
    ({"model": "m", "messages": MSG, "temperature": "hot"}, "temperature"),
    ({"model": "m", "messages": MSG, "n": "two"}, "n"),
])
def test_chat_shape_errors_name_the_field(payload, param):
    e = _err(validate_request, CHAT, payload)
    assert e.status == 400 and e.param is not None and e.param.startswith(param), (e.param, e.message)


def test_completion_needs_a_prompt():
    assert _err(validate_request, COMPLETION, {"model": "m"}).param == "prompt"
    assert _err(validate_request, COMPLETION, {"model": "m", "prompt": ""}).status == 400


def test_valid_requests_become_vllm_models():
    chat = validate_request(CHAT, {"model": "m", "messages": MSG, "max_tokens": 3, "n": 2, "seed": 1})
    assert chat.max_tokens == 3 and chat.n == 2 and chat.seed == 1
    cmpl = validate_request(COMPLETION, {"model": "m", "prompt": "x", "stop": ["\n"]})
    assert cmpl.prompt == "x" and cmpl.stop == ["\n"]


def test_a_type_error_inside_vllms_validators_is_a_400():
    # `check_request` passes a list; vLLM's own "before" validators may still trip on what is in it.
    e = _err(validate_request, CHAT, {"model": "m", "messages": [1.5]})
    assert e.status == 400


@pytest.mark.parametrize("kind, field, value", [
    (COMPLETION, "structured_outputs", True),  # found by the API fuzz test: a 500 (AttributeError in vLLM)
    (CHAT, "structured_outputs", True),
    (CHAT, "structured_outputs", ["json"]),
    (COMPLETION, "response_format", "json_object"),
    (CHAT, "stream_options", 1),
])
def test_object_fields_of_another_type_are_a_400_naming_them(kind, field, value):
    base = {"model": "m", "messages": MSG} if kind == CHAT else {"model": "m", "prompt": "x"}
    e = _err(validate_request, kind, {**base, "stream": True, field: value})
    assert e.status == 400 and e.param == field and "object" in e.message


def test_an_attribute_error_inside_vllms_validators_is_a_400(monkeypatch):
    """Whatever else a "before" validator trips on stays the client's 400, never a 500."""
    import deployments.request_parsing as rp

    monkeypatch.setattr(rp, "OBJECT_FIELDS", ())
    e = _err(validate_request, COMPLETION, {"model": "m", "prompt": "x", "structured_outputs": True})
    assert e.status == 400


@pytest.mark.parametrize("kind, payload, param", [
    (CHAT, {"model": "m", "messages": MSG, "stream": "false"}, "stream"),
    (CHAT, {"model": "m", "messages": MSG, "stream": 1}, "stream"),
    (CHAT, {"model": "m", "messages": MSG, "logprobs": "true"}, "logprobs"),
    (CHAT, {"model": "m", "messages": MSG, "stream": True, "stream_options": {"include_usage": "yes"}},
     "stream_options.include_usage"),
    (COMPLETION, {"model": "m", "prompt": "x", "echo": "false"}, "echo"),
    (COMPLETION, {"model": "m", "prompt": "x", "stream": "true"}, "stream"),
])
def test_framing_switches_must_be_json_booleans(kind, payload, param):
    """vLLM reads the string "false" as False; OpenAI refuses it, and so does raygate."""
    e = _err(validate_request, kind, payload)
    assert e.status == 400 and e.param == param and "boolean" in e.message


def test_stream_options_without_stream_is_refused():
    e = _err(validate_request, CHAT, {"model": "m", "messages": MSG, "stream_options": {"include_usage": True}})
    assert e.status == 400 and e.param == "stream_options"


def test_numbers_keep_vllms_coercion():
    """`n: 17.0` and `n: "17"` are 17 to the engine; the caps then read 17 (test_request_view.py)."""
    assert validate_request(CHAT, {"model": "m", "messages": MSG, "n": 17.0}).n == 17
    assert validate_request(CHAT, {"model": "m", "messages": MSG, "n": "17"}).n == 17


def test_a_tool_conversation_validates_into_a_request_the_handle_can_pickle():
    """An assistant turn's tool_calls is an Iterable in OpenAI's types, which pydantic validates lazily
    into an iterator that cannot be pickled: the call to the replica failed and the client got 503."""
    import pickle

    from common.request_kind import RequestKind

    body = {"model": "m", "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        # OpenAI's own assistant shape (refusal, audio), which vLLM matches to OpenAI's TypedDict.
        {"role": "assistant", "refusal": None, "audio": None, "content": [{"type": "text", "text": "Sunny."}]},
        {"role": "user", "content": [{"type": "text", "text": "and tomorrow?"}]}]}
    request = validate_request(RequestKind.CHAT, body)
    again = pickle.loads(pickle.dumps(request))
    assert again.messages[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert again.messages[3]["content"] == [{"type": "text", "text": "Sunny."}]
    bad = {**body, "messages": [body["messages"][0], {"role": "assistant", "tool_calls": [{"id": 1}]}]}
    with pytest.raises(APIError) as e:
        validate_request(RequestKind.CHAT, bad)
    assert e.value.status == 400
