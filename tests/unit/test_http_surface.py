"""The ingress's HTTP checks that need no model: CORS (ingress.cors) and the JSON-only Content-Type."""

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from common.errors import APIError, api_error_response
from deployments.config import CorsConfig
from deployments.ingress import _check_content_type, install_cors


def _app(cors: CorsConfig) -> TestClient:
    app = FastAPI()

    @app.exception_handler(APIError)
    async def _err(_, e: APIError):
        return api_error_response(e)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        _check_content_type(request)
        return {"ok": True}

    install_cors(app, cors)
    return TestClient(app)


PREFLIGHT = {"Origin": "http://ui.example", "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization, content-type"}


def test_a_preflight_from_an_allowed_origin_is_answered():
    client = _app(CorsConfig(allow_origins=["http://ui.example"]))
    r = client.options("/v1/chat/completions", headers=PREFLIGHT)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://ui.example"
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    r = client.post("/v1/chat/completions", json={}, headers={"Origin": "http://ui.example"})
    assert r.headers["access-control-allow-origin"] == "http://ui.example"
    assert "x-raygate-cache" in r.headers["access-control-expose-headers"]
    other = client.options("/v1/chat/completions", headers={**PREFLIGHT, "Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_by_default_no_origin_is_allowed():
    client = _app(CorsConfig())
    r = client.options("/v1/chat/completions", headers=PREFLIGHT)
    assert "access-control-allow-origin" not in r.headers


def test_credentials_with_a_wildcard_origin_fail_at_config_time():
    with pytest.raises(ValueError):
        CorsConfig(allow_origins=["*"], allow_credentials=True)


@pytest.mark.parametrize("content_type, status", [
    ("application/json", 200), ("application/json; charset=utf-8", 200), ("application/vnd.api+json", 200),
    (None, 200), ("text/plain", 415), ("text/plain;charset=UTF-8", 415),
    ("application/x-www-form-urlencoded", 415), ("multipart/form-data; boundary=x", 415),
])
def test_generation_bodies_must_be_json(content_type, status):
    client = _app(CorsConfig())
    headers = {"content-type": content_type} if content_type else {}
    r = client.post("/v1/chat/completions", content=b"{}", headers=headers)
    assert r.status_code == status, r.text
    if status == 415:
        err = r.json()["error"]
        assert err["param"] == "Content-Type" and "Content-Type" in err["message"] and err["code"] == 415


class _TrickleRequest:
    """A request whose body sends `parts` and then nothing more (the client keeps the connection)."""

    def __init__(self, parts: list[bytes], declared: int):
        self.headers = {"content-length": str(declared)}
        self._parts = parts

    async def stream(self):
        import asyncio

        for part in self._parts:
            yield part
            await asyncio.sleep(0.2)  # a live client: parts 200 ms apart, each one resets the wait
        await asyncio.sleep(3600)


def test_a_body_that_stops_arriving_is_a_408_not_a_hang():
    """Content-Length 99,999 and 91 bytes sent: no answer after 150 s before (a new user's report)."""
    import asyncio
    import time

    from deployments.ingress import _read_body

    async def read() -> bytes:
        # Bounded here too: a _read_body without its own timeout fails this test in 10 s, not in an hour.
        return await asyncio.wait_for(
            _read_body(_TrickleRequest([b"x" * 30] * 3 + [b"y"], 99_999), 1 << 20, idle_timeout_s=0.3), 10)

    t0 = time.monotonic()
    with pytest.raises(APIError) as e:
        asyncio.run(read())
    took = time.monotonic() - t0
    assert e.value.status == 408 and "91 bytes" in e.value.message and "99999" in e.value.message
    # 4 parts 200 ms apart (0.6 s in all, more than the 0.3 s wait: "91 bytes") were all read; the
    # silence after them timed out: the last part at 0.6 s, then 0.3 s
    assert 0.8 < took < 3.0, took


def test_a_body_that_arrives_is_read_whole():
    import asyncio

    from deployments.ingress import _read_body

    class Whole(_TrickleRequest):
        async def stream(self):
            for part in self._parts:
                yield part

    assert asyncio.run(_read_body(Whole([b'{"a": ', b"1}"], 8), 1 << 20, idle_timeout_s=0.3)) == b'{"a": 1}'
