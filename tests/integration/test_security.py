"""API keys, tenants and their limits through the HTTP API of the secure app (auth on, two ingress
replicas, its cache in Redis): 401/403, tenant cache isolation and explicit sharing, a rate limit
that holds across both ingress replicas, per-tenant caps, the token budget, and prompts kept out
of the logs."""

import asyncio
import glob
import os
import time
import uuid

import httpx
import openai
import pytest

from tests.integration.shared_app import (ADMIN_KEY, ENV_ADMIN_KEY, FRUGAL_TPM, LIMITED_RPM, SECURE_RATE_LIMIT_RPS,
                                          TENANT_KEYS)

pytestmark = pytest.mark.integration


def auth(tenant):
    return {"Authorization": f"Bearer {TENANT_KEYS[tenant]}"}


def chat(text, **extra):
    return {"model": "tiny-llama", "messages": [{"role": "user", "content": text}], "temperature": 0,
            "max_tokens": 4, **extra}


def assert_error(r, status, *words, param=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == status and err["message"]
    for w in words:
        assert w.lower() in err["message"].lower(), err["message"]
    if param is not None:
        assert err["param"] == param, err


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer sk-not-a-key"}, {"Authorization": "Basic eDp5"},
                                     {"Authorization": f"Bearer {ADMIN_KEY}x"}])
@pytest.mark.parametrize("method,path", [("POST", "/v1/chat/completions"), ("POST", "/v1/completions"),
                                         ("GET", "/v1/models"), ("GET", "/v1/models/tiny-llama")])
def test_missing_or_wrong_key_is_401(secure_url, headers, method, path):
    r = httpx.request(method, secure_url + path, headers=headers, json={"model": "tiny-llama", "prompt": "x"},
                      timeout=30)
    assert_error(r, 401, "api key")
    assert r.headers["www-authenticate"] == "Bearer"


def test_the_official_client_sees_an_authentication_error(secure_url):
    bad = openai.OpenAI(base_url=secure_url + "/v1", api_key="sk-wrong", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(**chat("hello"))
    good = openai.OpenAI(base_url=secure_url + "/v1", api_key=TENANT_KEYS["team-a"], max_retries=0, timeout=60)
    out = good.chat.completions.create(**chat("hello"))
    assert out.choices[0].message.content is not None
    assert [m.id for m in good.models.list().data] == ["tiny-llama"]


@pytest.mark.parametrize("path", ["/admin/cache/stats", "/admin/models"])
def test_admin_endpoints_need_the_admin_key_and_health_needs_none(secure_url, path):
    url = secure_url + path
    assert_error(httpx.get(url, timeout=30), 401)
    assert_error(httpx.get(url, headers=auth("team-a"), timeout=30), 403, "admin")
    r = httpx.get(url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)
    assert r.status_code == 200, r.text
    # A plain admin key from RAYGATE_ADMIN_KEYS (the secure app's environment) is one too.
    r = httpx.get(url, headers={"Authorization": f"Bearer {ENV_ADMIN_KEY}"}, timeout=30)
    assert r.status_code == 200, r.text
    assert_error(httpx.get(url, headers={"Authorization": f"Bearer {ENV_ADMIN_KEY}x"}, timeout=30), 401)
    assert_error(httpx.post(secure_url + "/admin/cache/flush", headers=auth("team-b"), timeout=30), 403)
    assert httpx.get(secure_url + "/health", timeout=30).status_code == 200


def _ask(secure_url, tenant, body):
    r = httpx.post(secure_url + "/v1/chat/completions", json=body, headers=auth(tenant), timeout=60)
    assert r.status_code == 200, r.text
    return r.headers["x-raygate-cache"], r.json()["choices"][0]["message"]["content"]


def _until_hit(secure_url, tenant, body, timeout_s=10.0):
    """Repeat until the tenant's own answer is served from the cache (write-backs are asynchronous)."""
    deadline = time.monotonic() + timeout_s
    while True:
        label, content = _ask(secure_url, tenant, body)
        if label.startswith("hit") or time.monotonic() > deadline:
            return label, content
        time.sleep(0.3)


def _read_only(secure_url, tenant, body, tries=5):
    """What the cache holds for `tenant`: a read-only request (it never stores an entry of its own, so
    a hit can only be someone else's). A lookup slower than cache.lookup_timeout_s on a loaded host is
    a bypass, which says nothing either way: asked again."""
    for _ in range(tries):
        label, content = _ask(secure_url, tenant, {**body, "cache": {"mode": "read"}})
        if label != "bypass":
            return label, content
        time.sleep(0.5)
    pytest.fail(f"{tries} lookups in a row were bypassed")


def test_one_tenants_cached_answer_never_reaches_another(secure_url):
    body = chat(f"What is the capital of Atlantis? ({uuid.uuid4().hex[:8]})")
    label, first = _ask(secure_url, "team-a", body)
    assert label in ("miss", "bypass")
    label, again = _until_hit(secure_url, "team-a", body)
    assert label == "hit-exact" and again == first
    # The identical request from another tenant finds nothing: team-a's entry is not in its scope.
    label, _ = _read_only(secure_url, "team-c", body)
    assert label == "miss"


def test_tenants_that_share_a_cache_scope_share_answers(secure_url):
    body = chat(f"Name a prime number above {uuid.uuid4().int % 1000}.")
    label, first = _ask(secure_url, "partner-1", body)
    assert label in ("miss", "bypass")
    label, _ = _until_hit(secure_url, "partner-1", body)
    assert label == "hit-exact"
    # partner-2 only reads: a hit is partner-1's entry (explicit opt-in: the same cache_scope).
    label, shared = _read_only(secure_url, "partner-2", body)
    assert label == "hit-exact" and shared == first
    label, _ = _read_only(secure_url, "team-a", body)  # everyone else: not shared
    assert label == "miss"


async def test_rate_limit_holds_across_two_ingress_replicas(secure_url):
    """`limited` may send LIMITED_RPM requests a minute; twice as many, sent 8 at a time through both
    ingress replicas, get that many 200s (within 10%) and 429s with Retry-After for the rest."""
    offered = 2 * LIMITED_RPM
    body = chat(f"rate limit probe {uuid.uuid4().hex[:8]}")
    statuses, ingresses = [], set()
    sem = asyncio.Semaphore(8)
    async with httpx.AsyncClient(timeout=60) as http:
        async def one():
            async with sem:
                r = await http.post(secure_url + "/v1/chat/completions", json=body, headers=auth("limited"))
            statuses.append(r.status_code)
            ingresses.add(r.headers.get("x-raygate-ingress"))
            if r.status_code == 429:
                assert int(r.headers["retry-after"]) >= 1 and "per minute" in r.json()["error"]["message"]
        started = time.monotonic()
        await asyncio.gather(*(one() for _ in range(offered)))
    assert time.monotonic() - started < 60, "the burst must fit in one window for the count to mean anything"
    ok = statuses.count(200)
    assert set(statuses) <= {200, 429}, statuses
    assert abs(ok - LIMITED_RPM) <= 0.1 * LIMITED_RPM, (ok, LIMITED_RPM)
    assert len(ingresses - {None}) == 2, f"both ingress replicas must have answered: {ingresses}"


@pytest.mark.parametrize("extra,param", [({"max_tokens": 9}, "max_tokens"), ({"n": 3}, "n"),
                                         ({"max_completion_tokens": 100}, "max_completion_tokens")])
def test_tenant_caps_are_400_naming_the_field(secure_url, extra, param):
    body = {**chat("hello"), **extra}
    if "max_completion_tokens" in extra:
        body.pop("max_tokens")
    r = httpx.post(secure_url + "/v1/chat/completions", json=body, headers=auth("team-b"), timeout=30)
    assert_error(r, 400, "allows at most", param=param)


def test_too_many_messages_is_400(secure_url):
    body = chat("hello")
    body["messages"] = [{"role": "user", "content": f"m{i}"} for i in range(5)]
    r = httpx.post(secure_url + "/v1/chat/completions", json=body, headers=auth("team-b"), timeout=30)
    assert_error(r, 400, "messages", param="messages")


def test_a_request_without_max_tokens_gets_the_tenants_cap(secure_url):
    body = chat(f"write a long story {uuid.uuid4().hex[:6]}", cache={"mode": "off"}, temperature=1.0,
                ignore_eos=True)
    body.pop("max_tokens")
    r = httpx.post(secure_url + "/v1/chat/completions", json=body, headers=auth("team-a"), timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 16  # default_tenant.max_tokens


def test_token_budget_refuses_with_429_once_spent(secure_url):
    """team-b has 400 tokens a minute; a 600-character prompt with max_tokens 8 is charged ~159."""
    results = []
    for i in range(5):
        body = chat("x " * 300 + str(i), max_tokens=8, cache={"mode": "off"})
        results.append(httpx.post(secure_url + "/v1/chat/completions", json=body, headers=auth("team-b"),
                                  timeout=60))
    codes = [r.status_code for r in results]
    assert codes[0] == 200 and 429 in codes, codes
    refused = results[codes.index(429)]
    assert_error(refused, 429, "tokens per minute")
    assert int(refused.headers["retry-after"]) >= 1


async def test_a_models_rate_limit_refuses_with_429(secure_url):
    """The secure model takes SECURE_RATE_LIMIT_RPS requests/s (burst as many) at each of the 2 ingress
    replicas; 100 generations at once exceed it: 429 with Retry-After for the excess, from the model's
    token bucket (not a tenant's limit: team-a has none)."""
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=200)) as http:
        async def one(i):
            return await http.post(secure_url + "/v1/chat/completions", headers=auth("team-a"),
                                   json=chat(f"burst {i} {uuid.uuid4().hex[:6]}", max_tokens=1, cache={"mode": "off"}))
        t0 = time.monotonic()
        results = await asyncio.gather(*(one(i) for i in range(100)))
        elapsed = time.monotonic() - t0
    codes = [r.status_code for r in results]
    assert set(codes) <= {200, 429}, codes
    refused = [r for r in results if r.status_code == 429]
    assert refused, f"100 requests in {elapsed:.1f} s, none refused"
    for r in refused:
        assert_error(r, 429, "requests/s", "tiny-llama")
        assert float(r.headers["retry-after"]) >= 1
    # At most the buckets' contents plus what they refilled while the burst lasted.
    assert codes.count(200) <= 2 * SECURE_RATE_LIMIT_RPS * (1 + elapsed), (codes.count(200), elapsed)


def test_an_exact_only_cache_never_serves_a_paraphrase(secure_url):
    """The secure app's cache has `semantic: false`: a repeat hits, a paraphrase is generated."""
    system = f"exact only {uuid.uuid4().hex}"
    body = chat("How do I reverse a list in Python?")
    body["messages"].insert(0, {"role": "system", "content": system})
    label, _ = _ask(secure_url, "team-a", body)
    assert label in ("miss", "bypass")
    label, _ = _until_hit(secure_url, "team-a", body)
    assert label == "hit-exact"
    para = chat("What's the way to reverse a Python list?")  # a semantic hit at 0.80 in the main app
    para["messages"].insert(0, {"role": "system", "content": system})
    label, _ = _read_only(secure_url, "team-a", para)
    assert label == "miss"


def _log_lines_with(text: str) -> list[str]:
    found = []
    for path in glob.glob("/tmp/ray/session_latest/logs/**/*", recursive=True):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                found += [line.decode(errors="replace") for line in f if text.encode() in line]
    return found


def test_prompts_and_completions_stay_out_of_the_logs(secure_url):
    secret = f"secret-{uuid.uuid4().hex}"
    r = httpx.post(secure_url + "/v1/chat/completions", json=chat(f"my password is {secret}"),
                   headers=auth("team-a"), timeout=60)
    assert r.status_code == 200
    time.sleep(2)  # let log writers flush
    logs = glob.glob("/tmp/ray/session_latest/logs/**/*", recursive=True)
    assert len(logs) > 10
    leaked = []
    for path in logs:
        if os.path.isfile(path):
            with open(path, "rb") as f:
                if secret.encode() in f.read():
                    leaked.append(path)
    assert not leaked, leaked


def test_cache_hits_cost_no_tokens(secure_url):
    """`frugal` has FRUGAL_TPM (100) tokens a minute; a request is charged its estimated tokens (prompt
    and max_tokens, more than 10 here) when it goes to a model. Twenty cache hits of one answer, charged
    even 5 tokens each, would spend the whole budget; charged nothing, they leave it to new questions,
    several of which then go through before the budget (live: it does refuse) is spent."""
    body = chat(f"frugal question {uuid.uuid4().hex[:8]}", max_tokens=8)
    label, _ = _ask(secure_url, "frugal", body)
    assert label in ("miss", "bypass")
    label, _ = _until_hit(secure_url, "frugal", body)
    assert label == "hit-exact"
    for _ in range(20):
        r = httpx.post(secure_url + "/v1/chat/completions", json=body, headers=auth("frugal"), timeout=60)
        assert r.status_code == 200 and r.headers["x-raygate-cache"] == "hit-exact", (r.status_code, r.text)
    codes = []
    for i in range(FRUGAL_TPM // 4):
        r = httpx.post(secure_url + "/v1/chat/completions", headers=auth("frugal"), timeout=60,
                       json=chat(f"new frugal question {i} {uuid.uuid4().hex[:8]}", max_tokens=8))
        codes.append(r.status_code)
        if r.status_code == 429:
            assert_error(r, 429, "tokens per minute")
            break
    assert codes[-1] == 429 and codes.count(200) >= 3, codes


def test_payloads_are_logged_when_log_payloads_is_on(base_url, model_name):
    """The main test app has `ingress.log_payloads: true`: its ingress logs the prompt under raygate's
    request id with the client's x-request-id beside it, and the answer under raygate's id."""
    marker = f"logged-{uuid.uuid4().hex}"
    r = httpx.post(base_url + "/v1/chat/completions", timeout=60, headers={"x-request-id": marker},
                   json={"model": model_name, "messages": [{"role": "user", "content": f"say {marker}"}],
                         "max_tokens": 4, "cache": {"mode": "off"}})
    assert r.status_code == 200
    ours = r.headers["x-raygate-request-id"]
    assert ours != marker
    deadline = time.monotonic() + 15
    while True:
        requests = [line for line in _log_lines_with(f"client-id={marker}") if f"request {ours}" in line]
        responses = [line for line in _log_lines_with(f"response {ours}")]
        if requests and responses:
            break
        assert time.monotonic() < deadline, f"the payload was not logged: {requests} {responses}"
        time.sleep(0.5)
    assert f"say {marker}" in requests[0]  # the prompt
    assert "status=200" in responses[0] and r.json()["id"] in responses[0]  # the completion's body
