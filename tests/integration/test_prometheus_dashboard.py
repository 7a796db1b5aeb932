"""The Grafana dashboard against a real Prometheus: every query of dashboards/raygate.json returns data.

The test starts Debian's `prometheus` (scripts/setup.sh installs it) with Ray's own service-discovery
file (`prom_metrics_service_discovery.json` in the session directory: every node's metrics agent),
sends the traffic each panel shows (model and cache answers, streams, a shared prefix, refusals of every
kind, a deadline drop, a 413), twice -- Prometheus's `rate()` needs a counter to grow between two of its
scrapes, and a series first seen at its current value has not grown -- and then evaluates each panel's
expressions through Prometheus's HTTP API as Grafana would. A wrong label (`code` for Serve's
`status_code`, `ReplicaId` on a series without it) makes an expression return nothing, and the test
names it.

It also checks what Serve's request counter says about complete streams read by the `openai` SDK (they
were counted as 499: deployments/serving_metrics.py says why) and that the cache result `off` is counted.
"""

from __future__ import annotations

import asyncio
import math
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from bench.servers import free_port
from tests.integration.shared_app import REPO, TENANT_KEYS

pytestmark = pytest.mark.integration

RATE_WINDOW = "2m"  # stands in for Grafana's $__rate_interval
SCRAPE_S = 2


def _render_grafana():
    sys.path.insert(0, str(REPO / "scripts"))
    import render_grafana

    return render_grafana


@pytest.fixture(scope="module")
def prometheus(ray_context):
    binary = shutil.which("prometheus")
    assert binary, "Prometheus is not installed: run scripts/setup.sh (Debian: apt-get install prometheus)"
    discovery = Path(ray_context.address_info["session_dir"]) / "prom_metrics_service_discovery.json"
    deadline = time.monotonic() + 30
    while not discovery.exists() and time.monotonic() < deadline:
        time.sleep(1)
    assert discovery.exists(), f"Ray wrote no service-discovery file at {discovery}"
    work = Path(tempfile.mkdtemp(prefix="raygate-prometheus-"))
    config = work / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"},
        "scrape_configs": [{"job_name": "ray", "file_sd_configs": [{"files": [str(discovery)],
                                                                      "refresh_interval": "5s"}]}],
    }))
    port = free_port()
    log = open(work / "prometheus.log", "w")
    proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={work / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"prometheus exited: {(work / 'prometheus.log').read_text()[-2000:]}"
            try:
                if httpx.get(url + "/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise TimeoutError("prometheus not ready in 60 s")
        # Every node's agent is a target, and up.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            targets = httpx.get(url + "/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
            if targets and all(t["health"] == "up" for t in targets):
                break
            time.sleep(1)
        else:
            raise AssertionError(f"Ray's metrics agents are not all scraped: {targets}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(work, ignore_errors=True)


def query(url: str, expr: str) -> list[dict]:
    r = httpx.get(url + "/api/v1/query", params={"query": expr}, timeout=30)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]


def finite(result: list[dict]) -> bool:
    """At least one sample with a number (histogram_quantile of no observations is NaN)."""
    return any(math.isfinite(float(s["value"][1])) for s in result)


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel, with Grafana's variables filled in."""
    return [(title, expr.replace("$__rate_interval", RATE_WINDOW))
            for _, title, _, targets, _ in _render_grafana().PANELS for expr, _ in targets]


# ---- traffic ------------------------------------------------------------------------------------


def _chat(model: str, content: str, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 8, **extra}


def _auth(tenant: str) -> dict:
    return {"Authorization": f"Bearer {TENANT_KEYS[tenant]}"}


async def _overload(base_url: str, model: str, n: int = 12) -> list[int]:
    """More long generations at once than the routed model's admission admits (2 slots + 4 queued)."""
    body = _chat(model, f"overload {uuid.uuid4().hex}", max_tokens=256, ignore_eos=True, cache={"mode": "off"})
    async with httpx.AsyncClient(timeout=120) as http:
        rs = await asyncio.gather(*(http.post(base_url + "/v1/chat/completions", json=body) for _ in range(n)))
    return [r.status_code for r in rs]


def exercise(base_url: str, secure_url: str, model: str, routed_model: str) -> None:
    """One round of the traffic every panel shows."""
    chat = base_url + "/v1/chat/completions"
    unique = uuid.uuid4().hex
    # Model answers, then the cache's (exact hit once the write-back landed); a semantic lookup each miss.
    cached = _chat(model, f"prometheus probe {unique}", temperature=0)
    for _ in range(2):
        assert httpx.post(chat, json=cached, timeout=60).status_code == 200
        time.sleep(1.0)
    # Not cacheable: counted as the cache result `off`.
    assert httpx.post(chat, json=_chat(model, f"sampled {unique}", cache={"mode": "off"}),
                      timeout=60).status_code == 200
    # A shared long system prompt: the second request finds its prefix in vLLM's cache.
    system = f"{unique} " + " ".join(f"rule {i}: answer briefly and politely." for i in range(40))
    for question in ("first question", "second question"):
        shared = {**_chat(model, question, cache={"mode": "off"}),
                  "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}]}
        assert httpx.post(chat, json=shared, timeout=60).status_code == 200
    # Streams: time to first chunk, inter-token latency.
    with httpx.stream("POST", chat, json=_chat(model, f"stream {unique}", stream=True, max_tokens=16,
                                               cache={"mode": "off"}), timeout=60) as r:
        assert r.status_code == 200 and any(line == "data: [DONE]" for line in r.iter_lines())
    # Refusals: admission (503), a tenant over its token budget (429), a wrong key (401), a deadline
    # already passed (503, a deadline drop), a body over ingress.max_body_bytes (413), an unknown model.
    codes = asyncio.run(_overload(base_url, routed_model))
    assert 503 in codes and 200 in codes, codes
    over_budget = _chat(model, "x " * 1000, cache={"mode": "off"})
    assert httpx.post(secure_url + "/v1/chat/completions", json=over_budget, headers=_auth("team-b"),
                      timeout=30).status_code == 429
    assert httpx.get(secure_url + "/v1/models", headers={"Authorization": "Bearer sk-wrong"},
                     timeout=10).status_code == 401
    late = httpx.post(chat, json=_chat(model, f"late {unique}", cache={"mode": "off"}),
                      headers={"x-raygate-timeout-ms": "0"}, timeout=30)
    assert late.status_code in (503, 504), late.text
    big = b'{"model": "%s", "messages": [{"role": "user", "content": "%s"}]}' % (model.encode(), b"a" * (5 << 20))
    assert httpx.post(chat, content=big, headers={"content-type": "application/json"}, timeout=60).status_code == 413
    assert httpx.post(chat, json=_chat("no-such-model", "hi"), timeout=30).status_code == 404


def _sdk_streams(base_url: str, model: str, clients: int = 4, each: int = 10) -> int:
    """Complete streams read by the official SDK, several clients at once (as the issue's operator did)."""
    done = []

    def loop() -> None:
        client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=60)
        for _ in range(each):
            for _ in client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}],
                                                    max_tokens=16, stream=True,
                                                    stream_options={"include_usage": True}):
                pass
            done.append(1)

    threads = [threading.Thread(target=loop) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(done)


def _wait(predicate, timeout_s: float):
    """The predicate's first truthy value within `timeout_s` (polled at the scrape interval), else its last."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(SCRAPE_S)


# ---- tests --------------------------------------------------------------------------------------


def test_every_dashboard_query_returns_data(prometheus, base_url, secure_url, model_name, routed_model):
    queries = dashboard_queries()
    assert len(queries) >= 26
    series = sorted({name for _, expr in queries for name in re.findall(r"\b(ray_[a-z0-9_]+)", expr)})

    exercise(base_url, secure_url, model_name, routed_model)
    # Round 2 only once Prometheus holds every series at its round-1 value (Ray's agents report every
    # few seconds), so that the second round shows up as growth.
    missing = series
    deadline = time.monotonic() + 90
    while missing and time.monotonic() < deadline:
        time.sleep(SCRAPE_S)
        missing = [name for name in missing if not query(prometheus, name)]
    assert not missing, f"series Prometheus never scraped: {missing}"
    time.sleep(3 * SCRAPE_S)
    exercise(base_url, secure_url, model_name, routed_model)

    empty = queries
    deadline = time.monotonic() + 120
    while empty and time.monotonic() < deadline:
        time.sleep(SCRAPE_S)
        empty = [(title, expr) for title, expr in empty if not finite(query(prometheus, expr))]
    assert not empty, "dashboard queries that returned no data:\n" + "\n".join(f"  {t}: {e}" for t, e in empty)

    # Each documented cache result this traffic produces is counted, `off` included.
    results = {s["metric"]["result"] for s in query(prometheus, "ray_raygate_cache_lookups_total")}
    assert {"miss", "hit_exact", "off"} <= results, results
    # Serve's counter has the 413 (a body sent without `Expect: 100-continue`) under its own status.
    assert query(prometheus, 'ray_serve_num_http_requests_total{status_code="413"}')


def test_complete_sdk_streams_are_not_counted_as_client_aborts(prometheus, base_url, model_name):
    """40 complete streams read by the `openai` SDK, 4 at a time: all counted 200 by Serve, none 499.
    Before the body ended at `[DONE]`, 4 of 40 were counted as 499."""
    by_status = ('sum by (status_code) (ray_serve_num_http_requests_total'
                 '{application="raygate", method="POST", route="/"})')

    def counts() -> dict[str, float]:
        return {s["metric"].get("status_code", ""): float(s["value"][1]) for s in query(prometheus, by_status)}

    time.sleep(3 * SCRAPE_S)
    before = _wait(counts, 30)
    n = _sdk_streams(base_url, model_name)
    assert n == 40
    after = _wait(lambda: (c := counts()).get("200", 0) - before.get("200", 0) >= n and c, 90)
    assert after, f"Serve's counter did not count the {n} streams as 200: {before} -> {counts()}"
    aborted = after.get("499", 0) - before.get("499", 0)
    assert aborted == 0, f"{aborted:.0f} of {n} complete SDK streams were counted as 499"
