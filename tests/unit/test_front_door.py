"""The front door (deployments/front_door.py): Serve's rendered HAProxy config, rewritten, run by the
real bundled HAProxy in front of a slow HTTP server that stands in for an ingress replica."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from deployments import front_door
from deployments.front_door import FrontDoor, rewrite, rewrite_argv
from deployments.haproxy_launcher import bundled_haproxy

RENDERED = Path(__file__).parent / "data" / "serve_haproxy.cfg"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _render(tmp_path: Path, server_port: int) -> tuple[str, int]:
    port = _free_port()
    text = RENDERED.read_text()
    for key, value in {"@DIR@": str(tmp_path), "@PORT@": port, "@PROM@": _free_port(), "@STATS@": _free_port(),
                       "@SERVER@": server_port, "@SECURE1@": server_port, "@SECURE2@": server_port,
                       "@FALLBACK@": _free_port()}.items():
        text = text.replace(key, str(value))
    (tmp_path / "500.http").write_text("HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n")
    return text, port


def test_the_priority_header_is_the_ingress_gates():
    from deployments.request_controls import PRIORITY_HEADER

    assert front_door.PRIORITY_HEADER == PRIORITY_HEADER


def test_from_env_and_bad_values():
    door = FrontDoor.from_env({"RAYGATE_FRONT_DOOR_MAXCONN": "48", "RAYGATE_FRONT_DOOR_MAX_QUEUED": "10",
                               "RAYGATE_FRONT_DOOR_QUEUE_TIMEOUT_S": "2.5"})
    assert (door.maxconn, door.max_queued, door.queue_timeout_s, door.retry_after_s) == (48, 10, 2.5, 1)
    assert [door.queue_limit(p) for p in ("high", "normal", "low")] == [10, 5, 2]
    door = FrontDoor.from_env({"RAYGATE_FRONT_DOOR_MAX_QUEUED": "10", "RAYGATE_FRONT_DOOR_QUEUE_SHARE": "normal=0.8, low=0.5"})
    assert [door.queue_limit(p) for p in ("high", "normal", "low")] == [10, 8, 5]
    assert not FrontDoor.from_env({}).enabled
    with pytest.raises(ValueError, match="RAYGATE_FRONT_DOOR_MAXCONN"):
        FrontDoor.from_env({"RAYGATE_FRONT_DOOR_MAXCONN": "-1"})
    with pytest.raises(ValueError, match="RAYGATE_FRONT_DOOR_QUEUE_SHARE"):
        FrontDoor.from_env({"RAYGATE_FRONT_DOOR_QUEUE_SHARE": "urgent=1"})


def test_rewrite_bounds_every_ingress_replica_and_routes_refusals_per_backend(tmp_path):
    text, _ = _render(tmp_path, 1)
    out = rewrite(text, FrontDoor(maxconn=7, max_queued=10), tmp_path)
    servers = [l for l in out.splitlines() if l.strip().startswith("server ")]
    assert sum(l.endswith("maxconn 7") for l in servers) == 3  # two replicas of /secure, one of /
    assert not any("maxconn" in l for l in servers if "SERVE_PROXY_ACTOR" in l)  # the fallback is Serve's own
    assert out.count("timeout queue 10000ms") == 0 and out.count("timeout queue 30000ms") == 2
    # /secure's rule comes first, as in Serve's routing, so a /secure request is checked against its own queue.
    sets = [l for l in out.splitlines() if "set-var(txn.rg_backend)" in l]
    assert "str(http-raygate-secure)" in sets[0] and "str(http-raygate)" in sets[1]
    assert "{ queue(http-raygate) ge 2 }" in out and "{ queue(http-raygate-secure) ge 5 }" in out
    assert f"errorfile 503 {tmp_path}/raygate-503.http" in out
    assert rewrite(out, FrontDoor(maxconn=7), tmp_path) == out  # a reload of a rewritten config changes nothing
    assert rewrite(text, FrontDoor(maxconn=0), tmp_path) == text  # off: Serve's config as rendered
    (tmp_path / "haproxy.cfg").write_text(out)
    check = subprocess.run([bundled_haproxy(), "-c", "-f", str(tmp_path / "haproxy.cfg")], capture_output=True,
                           text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr


def test_rewrite_argv_points_haproxy_at_the_rewritten_copy(tmp_path):
    text, _ = _render(tmp_path, 1)
    (tmp_path / "haproxy.cfg").write_text(text)
    args = ["-db", "-f", str(tmp_path / "haproxy.cfg"), "-sf", "123"]
    new = rewrite_argv(args, FrontDoor(maxconn=4))
    assert new[:2] == ["-db", "-f"] and new[3:] == ["-sf", "123"]
    assert Path(new[2]).name == "haproxy.raygate.cfg" and "maxconn 4" in Path(new[2]).read_text()
    assert rewrite_argv(args, FrontDoor(maxconn=0)) == args


class _SlowIngress:
    """Answers health checks at once and holds generation requests until released, recording their order."""

    def __init__(self):
        self.release = threading.Event()
        self.arrivals: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                self._answer(b"ok")

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.arrivals.append(json.loads(body)["tag"])
                outer.release.wait(30)
                self._answer(b'{"ok": true}')

            def _answer(self, body: bytes):
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.server.shutdown()


def _post(port: int, path: str, tag: str, priority: str | None = None) -> tuple[int, dict, bytes, float]:
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"content-type": "application/json"}
    if priority:
        headers["x-raygate-priority"] = priority
    conn.request("POST", path, body=json.dumps({"tag": tag}), headers=headers)
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, body, time.perf_counter() - t0


@pytest.fixture
def haproxy_in_front(tmp_path):
    ingress = _SlowIngress()
    text, port = _render(tmp_path, ingress.port)
    door = FrontDoor(maxconn=1, max_queued=4, queue_timeout_s=20, queue_share={"high": 1.0, "normal": 0.8, "low": 0.5})
    (tmp_path / "haproxy.cfg").write_text(rewrite(text, door, tmp_path))
    proc = subprocess.Popen([bundled_haproxy(), "-db", "-f", str(tmp_path / "haproxy.cfg")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 20
        while True:  # up once HAProxy has seen the stand-in ingress healthy
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/v1/models")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            assert time.time() < deadline, "HAProxy did not come up"
            time.sleep(0.1)
        yield ingress, port
    finally:
        proc.terminate()
        proc.wait(10)
        ingress.close()


def test_haproxy_queues_by_priority_and_refuses_at_once_when_full(haproxy_in_front):
    ingress, port = haproxy_in_front
    path = "/v1/chat/completions"
    with ThreadPoolExecutor(16) as pool:
        first = pool.submit(_post, port, path, "holder")  # takes the one connection (maxconn 1)
        queued = []
        # Queue limits with max_queued 4: low 2, normal 3, high 4.
        for tag, priority in (("low-1", "low"), ("normal-1", None), ("normal-2", "normal")):
            time.sleep(0.3)
            queued.append(pool.submit(_post, port, path, tag, priority))
        time.sleep(0.5)
        refused = [_post(port, path, "low-2", "low"), _post(port, path, "normal-3", "normal")]
        for status, headers, body, seconds in refused:
            assert status == 503 and headers["retry-after"] == "1" and seconds < 0.05
            assert headers["x-raygate-refused-by"] == "front-door"
            assert json.loads(body)["error"]["code"] == 503
        queued.append(pool.submit(_post, port, path, "high-1", "high"))  # the queue (3) is below high's limit (4)
        time.sleep(0.3)
        models = pool.submit(_post, port, "/v1/models", "models")  # not a generation: first in line, never refused
        time.sleep(0.3)
        ingress.release.set()
        results = [f.result() for f in [first, *queued, models]]
    assert [r[0] for r in results] == [200] * 6
    assert ingress.arrivals == ["holder", "models", "high-1", "normal-1", "normal-2", "low-1"]


def test_haproxy_queue_timeout_is_a_503_with_retry_after(tmp_path):
    ingress = _SlowIngress()
    text, port = _render(tmp_path, ingress.port)
    (tmp_path / "haproxy.cfg").write_text(rewrite(text, FrontDoor(maxconn=1, max_queued=4, queue_timeout_s=1),
                                                  tmp_path))
    proc = subprocess.Popen([bundled_haproxy(), "-db", "-f", str(tmp_path / "haproxy.cfg")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        with ThreadPoolExecutor(2) as pool:
            holder = pool.submit(_post, port, "/v1/completions", "holder")
            time.sleep(0.3)
            status, headers, body, seconds = _post(port, "/v1/completions", "waiter")
            ingress.release.set()
            assert holder.result()[0] == 200
        assert status == 503 and headers["retry-after"] == "1" and 0.9 < seconds < 5
        assert headers["x-raygate-refused-by"] == "front-door"
        assert json.loads(body)["error"]["type"] == "ServiceUnavailableError"
    finally:
        proc.terminate()
        proc.wait(10)
        ingress.close()
