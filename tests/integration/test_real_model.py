"""The real default model (`builtin:smollm2-135m-instruct`) through the whole stack, with the `openai` client.

The rest of the suite runs on the random-weight demo model, whose answers cannot be right or wrong.
Here the shared app's third model, serve_config.yaml's own first model block, answers questions whose
answers a 135M model gets right at temperature 0 (chosen by asking it: it also calls Neptune the
largest planet), follows a system prompt, stops at its end of turn, and the semantic cache serves
a reworded question the answer the model gave to the original.
"""

import time

import httpx
import pytest

pytestmark = pytest.mark.integration

# (question, a word the answer must contain), lower case: answered so at temperature 0 in the shipped
# dtype (float32; float16 answers the same), alone and in a batch of 12, with no system prompt or any
# of three others (vLLM's LLM.chat, 2026-12-07). Not so: "What is the capital of Spain?" (El
# Salvador), of Italy ("Il Coriobella"; Rome in bf16 on a host without AMX), the largest planet (Neptune).
FACTS = [
    ("What is the capital of France?", "paris"),
    ("What is the capital of Germany?", "berlin"),
    ("What is the capital of Japan?", "tokyo"),
    ("What is the chemical formula of water?", "h2o"),
    ("What is the opposite of hot?", "cold"),
]
CAPITAL = "What is the capital of France?"
# Reworded: only frame words differ (cache/guards.py accepts it; cosine 0.945 to CAPITAL in fp32).
# Asked directly, the model answers it at length ("Bonjour, welcome to the heart of the continent...").
CAPITAL_REWORDED = "Could you tell me what the capital of France is?"
PIRATE = "You are a pirate. Always start your answer with 'Arr'."
NO_CACHE = {"cache": {"mode": "off"}}  # the model's own answers, not the cache's


def _ask(client, model, question, system=None, max_tokens=48, **extra):
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    return client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=max_tokens,
                                          extra_body={**NO_CACHE, **extra})


@pytest.mark.parametrize("question, word", FACTS)
def test_factual_answers_contain_the_right_word(client, real_model, question, word):
    r = _ask(client, real_model, question)
    text = r.choices[0].message.content
    assert word in text.lower(), text


def test_a_system_prompt_changes_the_answer(client, real_model):
    plain = _ask(client, real_model, "Hello!", max_tokens=64).choices[0].message.content
    pirate = _ask(client, real_model, "Hello!", system=PIRATE, max_tokens=64).choices[0].message.content
    assert "pirate" not in plain.lower(), plain
    assert "pirate" in pirate.lower(), pirate


def test_generation_stops_at_the_end_of_turn(client, real_model):
    r = _ask(client, real_model, CAPITAL, max_tokens=200)
    choice = r.choices[0]
    # Without <|im_end|> as the stop token the model runs on into a new turn until max_tokens ("length").
    assert choice.finish_reason == "stop" and r.usage.completion_tokens < 200
    assert "<|im_end|>" not in choice.message.content and "<|im_start|>" not in choice.message.content
    stream = client.chat.completions.create(model=real_model, messages=[{"role": "user", "content": CAPITAL}],
                                            temperature=0, max_tokens=200, stream=True, extra_body=NO_CACHE)
    chunks = [c for c in stream if c.choices]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == choice.message.content


def test_the_cache_answers_a_rewording_with_the_real_answer(base_url, real_model):
    def post(text):
        body = {"model": real_model, "messages": [{"role": "user", "content": text}], "temperature": 0,
                "max_tokens": 40}
        r = httpx.post(base_url + "/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        return r.headers["x-raygate-cache"], r.json()["choices"][0]["message"]["content"]

    source, answer = post(CAPITAL)
    # bypass: the lookup ran past cache.lookup_timeout_s on a loaded host; its answer is stored all the same.
    assert source in ("miss", "bypass") and "paris" in answer.lower(), answer
    deadline = time.monotonic() + 10
    while post(CAPITAL)[0] != "hit-exact":  # the write-back runs after the response
        assert time.monotonic() < deadline, "the answer was not stored"
        time.sleep(0.2)
    time.sleep(1.0)  # both cache replicas' indexes have it (tests/integration/test_cache.py checks the bound)
    source, reworded = post(CAPITAL_REWORDED)
    assert source == "hit-semantic" and reworded == answer
    # A look-alike that needs another answer goes to the model, which answers it.
    source, other = post("What is the capital of Germany?")
    assert source == "miss" and "berlin" in other.lower(), other
