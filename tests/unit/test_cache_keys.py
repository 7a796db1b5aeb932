"""Cache scoping: which requests may share an answer, and which must not."""

import pytest

from cache.config import CacheConfig, RequestCacheOptions, parse_request_options
from cache.keys import plan
from common.errors import APIError

CFG = CacheConfig()
AUTO = RequestCacheOptions()


def chat(last="How do I reverse a list in Python?", history=(), system=None, **fields):
    messages = ([{"role": "system", "content": system}] if system else []) + list(history)
    messages.append({"role": "user", "content": last})
    return {"model": "m", "messages": messages, "temperature": 0, **fields}


def test_framing_fields_do_not_change_the_keys():
    a = plan("chat", chat(), AUTO, CFG, "t")
    b = plan("chat", chat(stream=True, stream_options={"include_usage": True}, user="u"), AUTO, CFG, "t")
    assert (a.scope, a.exact_key) == (b.scope, b.exact_key)
    assert a.read and a.write and a.query == "How do I reverse a list in Python?"


def test_whitespace_and_number_forms_share_the_exact_key():
    a = plan("chat", chat("How do I  reverse a list in Python? "), AUTO, CFG, "t")
    b = plan("chat", chat("How do I reverse a list in Python?", temperature=0.0), AUTO, CFG, "t")
    assert a.exact_key == b.exact_key


@pytest.mark.parametrize("change", [
    {"system": "Answer in French."},
    {"max_tokens": 10},
    {"stop": ["\n"]},
    {"tools": [{"type": "function", "function": {"name": "f"}}]},
    {"history": [{"role": "user", "content": "I use JavaScript."}, {"role": "assistant", "content": "OK."}]},
    {"model": "other"},
])
def test_answer_changing_fields_change_the_scope(change):
    base = plan("chat", chat(), AUTO, CFG, "t")
    other = plan("chat", chat(**change), AUTO, CFG, "t")
    assert other.scope != base.scope and other.exact_key != base.exact_key


def test_tenants_never_share_a_scope():
    assert plan("chat", chat(), AUTO, CFG, "a").scope != plan("chat", chat(), AUTO, CFG, "b").scope


def test_sampled_requests_need_an_opt_in():
    sampled = chat(temperature=0.7)
    assert not plan("chat", sampled, AUTO, CFG, "t").read
    assert plan("chat", sampled, RequestCacheOptions(mode="on"), CFG, "t").read
    del sampled["temperature"]  # the model's default temperature samples too
    assert plan("chat", sampled, AUTO, CFG, "t").reason == "sampled"
    assert plan("chat", {**sampled, "seed": 7}, AUTO, CFG, "t").write  # seeded: reproducible


def test_modes_and_uncacheable_requests():
    assert not plan("chat", chat(), RequestCacheOptions(mode="off"), CFG, "t").write
    read_only = plan("chat", chat(), RequestCacheOptions(mode="read"), CFG, "t")
    assert read_only.read and not read_only.write
    assert plan("chat", chat(logprobs=True), AUTO, CFG, "t").reason == "uncacheable:logprobs"
    assert not plan("chat", chat(), AUTO, CacheConfig(enabled=False), "t").read


def test_only_text_user_turns_are_matched_by_meaning():
    image = [{"type": "image_url", "image_url": {"url": "data:,"}}]
    assert plan("chat", chat(last=image), AUTO, CFG, "t").query is None
    p = plan("completion", {"model": "m", "prompt": [1, 2, 3], "temperature": 0}, AUTO, CFG, "t")
    assert p.read and p.query is None


def test_request_options_ttl_and_threshold():
    p = plan("chat", chat(), RequestCacheOptions(ttl=10**9, similarity_threshold=0.95), CFG, "t")
    assert p.ttl_s == CFG.max_ttl_s and p.threshold == 0.95


@pytest.mark.parametrize("value,where", [
    ("on", "cache"), ({"mode": "sometimes"}, "cache.mode"), ({"ttl": -1}, "cache.ttl"),
    ({"similarity_threshold": 2}, "cache.similarity_threshold"), ({"tll": 5}, "cache.tll"),
])
def test_bad_request_options_name_the_field(value, where):
    with pytest.raises(APIError) as e:
        parse_request_options(value)
    assert e.value.status == 400 and where in e.value.message
