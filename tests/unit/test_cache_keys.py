"""Cache scoping: which requests may share an answer, and which must not.

The keys are computed from the request as vLLM validated it (the object the engine serves), so the
tests build requests the way the ingress does (deployments/request_view.py).
"""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cache.config import CacheConfig, RequestCacheOptions, parse_request_options
from cache.keys import plan as key_plan
from common.errors import APIError
from common.request_kind import RequestKind
from deployments.request_view import build_view
from deployments.tenants import Tenant, TenantSettings

CFG = CacheConfig()
AUTO = RequestCacheOptions()
CHAT, COMPLETION = RequestKind.CHAT, RequestKind.COMPLETION


def plan(kind, body, options=AUTO, config=CFG, tenant="t"):
    view = build_view(RequestKind(kind), dict(body), Tenant(tenant, TenantSettings()), "m", {"m", "other"})
    return key_plan(view.kind, view.request, options, config, tenant)


def chat(last="How do I reverse a list in Python?", history=(), system=None, **fields):
    messages = ([{"role": "system", "content": system}] if system else []) + list(history)
    messages.append({"role": "user", "content": last})
    return {"model": "m", "messages": messages, "temperature": 0, **fields}


def test_framing_fields_do_not_change_the_keys():
    a = plan("chat", chat())
    b = plan("chat", chat(stream=True, stream_options={"include_usage": True}, user="u"))
    assert (a.scope, a.exact_key) == (b.scope, b.exact_key)
    assert a.read and a.write and a.query == "How do I reverse a list in Python?"


def test_number_forms_the_engine_reads_alike_share_the_exact_key():
    a = plan("chat", chat(n=2, max_tokens=10))
    b = plan("chat", chat(n=2.0, max_tokens="10", temperature=0.0))
    assert a.exact_key == b.exact_key


@pytest.mark.parametrize("first, second", [
    ("What is 2\u00b2 ? Answer with a number.", "What is 22 ? Answer with a number."),  # NFKC folds them
    ("How do I  reverse a list in Python?", "How do I reverse a list in Python?"),  # different tokens
    ("ﬁle", "file"),
])
def test_no_text_normalization_merges_prompts_the_engine_sees_differently(first, second):
    assert plan("chat", chat(first)).exact_key != plan("chat", chat(second)).exact_key
    assert plan("completion", {"model": "m", "prompt": first, "temperature": 0}).exact_key != \
        plan("completion", {"model": "m", "prompt": second, "temperature": 0}).exact_key


def test_numbers_are_exact_at_any_size():
    assert plan("chat", chat(seed=2**60)).exact_key != plan("chat", chat(seed=2**60 + 1)).exact_key


@pytest.mark.parametrize("change", [
    {"system": "Answer in French."},
    {"max_tokens": 10},
    {"stop": ["\n"]},
    {"tools": [{"type": "function", "function": {"name": "f"}}]},
    {"history": [{"role": "user", "content": "I use JavaScript."}, {"role": "assistant", "content": "OK."}]},
    {"model": "other"},
])
def test_answer_changing_fields_change_the_scope(change):
    base = plan("chat", chat())
    other = plan("chat", chat(**change))
    assert other.scope != base.scope and other.exact_key != base.exact_key


def test_tenants_never_share_a_scope():
    assert plan("chat", chat(), tenant="a").scope != plan("chat", chat(), tenant="b").scope


def test_sampled_requests_need_an_opt_in():
    sampled = chat(temperature=0.7)
    assert not plan("chat", sampled).read
    assert plan("chat", sampled, RequestCacheOptions(mode="on")).read
    del sampled["temperature"]  # the model's default temperature samples too
    assert plan("chat", sampled).reason == "sampled"
    assert plan("chat", {**sampled, "seed": 7}).write  # seeded: reproducible


def test_modes_and_uncacheable_requests():
    assert not plan("chat", chat(), RequestCacheOptions(mode="off")).write
    read_only = plan("chat", chat(), RequestCacheOptions(mode="read"))
    assert read_only.read and not read_only.write
    assert plan("chat", chat(logprobs=True)).reason == "uncacheable:logprobs"
    assert not plan("chat", chat(), config=CacheConfig(enabled=False)).read


@pytest.mark.parametrize("logprobs", [0, 1, 5])
def test_completion_logprobs_including_0_are_not_cached(logprobs):
    """`logprobs: 0` returns the sampled tokens' logprobs: an entry without them must not answer it."""
    p = plan("completion", {"model": "m", "prompt": "x", "temperature": 0, "logprobs": logprobs})
    assert p.reason == "uncacheable:logprobs" and not p.read and not p.write


def test_only_text_user_turns_are_matched_by_meaning():
    image = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    assert plan("chat", chat(last=image)).query is None
    other_image = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAB"}}]
    assert plan("chat", chat(last=image)).exact_key != plan("chat", chat(last=other_image)).exact_key
    p = plan("completion", {"model": "m", "prompt": [1, 2, 3], "temperature": 0})
    assert p.read and p.query is None


@pytest.mark.parametrize("prompt", ["The capital of France is", "the capital of france is",
                                    "The capital of France is:", "The capital of France is "])
def test_a_completions_prompt_is_never_matched_by_meaning_only_verbatim(prompt):
    """A completion continues its prompt's literal text: one of these served another's answer before."""
    p = plan("completion", {"model": "m", "prompt": prompt, "temperature": 0})
    assert p.read and p.write and p.query is None
    assert p.exact_key == plan("completion", {"model": "m", "prompt": prompt, "temperature": 0}).exact_key
    others = {"The capital of France is", "the capital of france is", "The capital of France is:",
              "The capital of France is "} - {prompt}
    assert all(plan("completion", {"model": "m", "prompt": o, "temperature": 0}).exact_key != p.exact_key
               for o in others)


def test_request_options_ttl_and_threshold():
    p = plan("chat", chat(), RequestCacheOptions(ttl=10**9, similarity_threshold=0.95))
    assert p.ttl_s == CFG.max_ttl_s and p.threshold == 0.95


@pytest.mark.parametrize("value,where", [
    ("on", "cache"), ({"mode": "sometimes"}, "cache.mode"), ({"ttl": -1}, "cache.ttl"),
    ({"similarity_threshold": 2}, "cache.similarity_threshold"), ({"tll": 5}, "cache.tll"),
])
def test_bad_request_options_name_the_field(value, where):
    with pytest.raises(APIError) as e:
        parse_request_options(value)
    assert e.value.status == 400 and where in e.value.message


# ---- the property: one answer-changing field apart -> different keys; framing apart -> the same ----

_TEXT = st.text(min_size=1, max_size=20)
_TOOL = st.builds(lambda name, desc: {"type": "function", "function": {"name": name, "description": desc,
                                                                      "parameters": {"type": "object"}}},
                  st.from_regex(r"[a-z_]{1,12}", fullmatch=True), _TEXT)
# Each answer-changing field with a strategy of values the engine accepts (both explicit, so the
# engine sees each one as sent). Chat and completion share the sampling ones.
_SAMPLING = {
    "max_tokens": st.integers(1, 10**6),
    "n": st.integers(1, 64),
    "seed": st.integers(-(2**63), 2**63 - 1),
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0.01, 1),
    "top_k": st.integers(1, 1000),
    "min_p": st.floats(0, 1),
    "presence_penalty": st.floats(-2, 2),
    "frequency_penalty": st.floats(-2, 2),
    "repetition_penalty": st.floats(0.01, 2),
    "min_tokens": st.integers(0, 100),
    "stop": st.lists(_TEXT, min_size=1, max_size=3),
    "stop_token_ids": st.lists(st.integers(0, 50000), min_size=1, max_size=3),
    "logit_bias": st.dictionaries(st.integers(0, 50000).map(str), st.floats(-100, 100), min_size=1, max_size=3),
    "ignore_eos": st.booleans(),
    "include_stop_str_in_output": st.booleans(),
    "skip_special_tokens": st.booleans(),
    "response_format": st.sampled_from([{"type": "text"}, {"type": "json_object"},
                                        {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}},
                                        {"type": "json_schema", "json_schema": {"name": "b", "schema": {"type": "array"}}}]),
}
_CHAT_ONLY = {
    "max_completion_tokens": st.integers(1, 10**6),
    "tools": st.lists(_TOOL, min_size=1, max_size=2),
    "messages": st.lists(st.builds(lambda r, c: {"role": r, "content": c}, st.sampled_from(["user", "system"]),
                                   st.text(max_size=30)), min_size=1, max_size=3),
    "add_generation_prompt": st.booleans(),
    "chat_template_kwargs": st.dictionaries(st.from_regex(r"[a-z]{1,6}", fullmatch=True), st.booleans(),
                                            min_size=1, max_size=2),
}
_COMPLETION_ONLY = {"prompt": st.one_of(st.text(min_size=1, max_size=30), st.lists(st.integers(0, 30000), min_size=1, max_size=5)),
                    "suffix": _TEXT}
_FIELDS = {CHAT: {**_SAMPLING, **_CHAT_ONLY}, COMPLETION: {**_SAMPLING, **_COMPLETION_ONLY}}
_BASE = {CHAT: {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0},
         COMPLETION: {"model": "m", "prompt": "hi", "temperature": 0}}


@st.composite
def _one_field_apart(draw):
    kind = draw(st.sampled_from([CHAT, COMPLETION]))
    name = draw(st.sampled_from(sorted(_FIELDS[kind])))
    a = draw(_FIELDS[kind][name])
    b = draw(_FIELDS[kind][name].filter(lambda v: v != a))
    return kind, {**_BASE[kind], name: a}, {**_BASE[kind], name: b}, name


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_one_field_apart())
def test_property_requests_one_answer_changing_field_apart_never_share_a_key(case):
    kind, a, b, name = case
    pa, pb = plan(kind, a, RequestCacheOptions(mode="on")), plan(kind, b, RequestCacheOptions(mode="on"))
    assert pa.read and pb.read, (pa.reason, pb.reason)
    assert pa.exact_key != pb.exact_key, f"{name}: {a[name]!r} and {b[name]!r} share a key"


@st.composite
def _framing_apart(draw):
    kind = draw(st.sampled_from([CHAT, COMPLETION]))
    base = dict(_BASE[kind])
    for name in draw(st.sets(st.sampled_from(sorted(_FIELDS[kind])), max_size=3)):
        base[name] = draw(_FIELDS[kind][name])

    # With tools offered, `stream` changes the answer (vLLM writes a call's arguments differently
    # streamed and whole): both requests then share it, and only the rest of the framing differs.
    with_tools = bool(base.get("tools")) and base.get("tool_choice") != "none"
    shared_stream = draw(st.booleans())

    def framing():
        out = {}
        if with_tools:
            out["stream"] = shared_stream
        elif draw(st.booleans()):
            out["stream"] = draw(st.booleans())
        if out.get("stream") and draw(st.booleans()):
            out["stream_options"] = {"include_usage": draw(st.booleans())}
        if draw(st.booleans()):
            out["user"] = draw(_TEXT)
        return out

    return kind, {**base, **framing()}, {**base, **framing()}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_framing_apart())
def test_property_requests_apart_only_in_framing_share_the_key(case):
    kind, a, b = case
    on = RequestCacheOptions(mode="on")
    assert plan(kind, a, on).exact_key == plan(kind, b, on).exact_key


def test_with_tools_offered_streamed_and_whole_answers_are_stored_apart():
    """vLLM writes a tool call's arguments as the model's text when streaming and re-serialized when
    not: a streamed request must never get an entry a whole one stored, nor the reverse."""
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    for choice in ("auto", "required", {"type": "function", "function": {"name": "f"}}):
        body = chat(tools=tools, tool_choice=choice)
        assert plan("chat", {**body, "stream": True}).exact_key != plan("chat", {**body, "stream": False}).exact_key
        assert plan("chat", {**body, "stream": False}).exact_key == plan("chat", body).exact_key
    body = chat(tools=tools, tool_choice="none")  # no call can come back: framing only
    assert plan("chat", {**body, "stream": True}).exact_key == plan("chat", body).exact_key
