"""The embedded Valkey (cache/embedded_redis.py): restarted on its own port when it dies, healthy when
only slow, and never moved onto a port another server listens on (the app's HTTP port, once)."""

from __future__ import annotations

import socket
import time

import psutil
import pytest
import redis

from cache.config import EmbeddedRedisConfig
from cache.embedded_redis import EmbeddedRedis


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server():
    e = EmbeddedRedis(EmbeddedRedisConfig(port=_free_port()))
    yield e
    e.__del__()


def test_a_killed_server_restarts_on_its_port_even_with_clients_connected(server):
    port = server._port
    clients = [redis.Redis.from_url(server.url()) for _ in range(4)]
    for c in clients:
        c.set("k", "v")
    psutil.Process(server.pid()).kill()
    time.sleep(0.3)
    t0 = time.monotonic()
    server.check_health()  # the dead server's connections linger in TIME_WAIT on the port
    assert time.monotonic() - t0 < 5
    assert server._port == port and redis.Redis.from_url(server.url()).ping()


def test_a_paused_server_is_healthy_and_kept(server):
    pid = server.pid()
    redis.Redis.from_url(server.url()).execute_command("CLIENT", "PAUSE", 2000, "ALL")
    server.check_health()
    assert server.pid() == pid


def test_a_port_with_a_live_listener_is_never_taken():
    with socket.socket() as listener:  # as HAProxy listens: every address, SO_REUSEPORT
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind(("0.0.0.0", 0))
        listener.listen()
        cfg = EmbeddedRedisConfig(port=listener.getsockname()[1])
        e = EmbeddedRedis.__new__(EmbeddedRedis)
        e._config, e._port, e._server, e._reaper = cfg, cfg.port, None, None
        with pytest.raises(RuntimeError, match="still taken"):
            e._wait_for_port(timeout_s=0.5)
