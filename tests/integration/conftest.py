"""One raygate server, started the way users start it, shared by every integration test.

The app is built in tests/integration/shared_app.py (what it runs and why). The test process attaches
to its cluster as a second driver for DeploymentHandles that read engine state. Teardown stops the
server gracefully and fails if a vLLM engine, HAProxy or Valkey process outlived it.
"""

from __future__ import annotations

import os
import tempfile
import types
from pathlib import Path

import pytest
import yaml

from bench.servers import free_port, haproxy_processes, valkey_processes, vllm_processes
from tests.integration.shared_app import (REPO, ROUTED_MODEL, SECURE_PREFIX, TEST_MODEL, build_test_app,
                                          register_running, start_test_app, stop_shared_app)


@pytest.fixture(scope="session")
def app_config() -> dict:
    cfg = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    return cfg["applications"][0]["args"]


@pytest.fixture(scope="session")
def server():
    # Development only: reuse a running test app (started with these overrides) instead of a new one.
    url = os.environ.get("RAYGATE_TEST_SERVER_URL")
    if url:
        yield types.SimpleNamespace(base_url=url)
        return
    assert not vllm_processes(), "an engine from an earlier run is still alive"
    assert not haproxy_processes(), "an HAProxy from an earlier run is still alive"
    assert not valkey_processes(), "a cache server from an earlier run is still alive"
    srv = build_test_app(free_port(), Path(tempfile.mkdtemp(prefix="raygate-test-")))
    register_running(srv)
    start_test_app(srv)
    yield srv
    stop_shared_app()


def pytest_collection_modifyitems(items):
    """Unit tests first (on an idle machine, before the shared app starts), then the tests on the
    shared app, then the tests that stop it to start a cluster of their own."""
    def order(item) -> tuple[bool, bool]:
        return item.get_closest_marker("own_cluster") is not None, item.get_closest_marker("integration") is not None

    items.sort(key=order)


@pytest.fixture(scope="session")
def base_url(server) -> str:
    return server.base_url


@pytest.fixture(scope="session")
def model_name() -> str:
    """The test app's first model: serve_config.yaml's first model block on the demo model."""
    return TEST_MODEL


@pytest.fixture(scope="session")
def real_model(app_config) -> str:
    """The real default model of serve_config.yaml, served by the test app beside the demo model."""
    from deployments.config import AppConfig

    return AppConfig.model_validate(app_config).models[0].name


@pytest.fixture(scope="session")
def ray_context(server):
    """This test process attached to the server's Ray cluster as a second driver."""
    import ray

    return ray.init(address="auto", log_to_driver=False)


@pytest.fixture(scope="session")
def secure_url(base_url) -> str:
    return base_url + SECURE_PREFIX


@pytest.fixture(scope="session")
def routed_model() -> str:
    return ROUTED_MODEL


@pytest.fixture(scope="session")
def llm_handle(ray_context, model_name):
    """A handle to the LLM deployment, for reading engine state in assertions."""
    from ray import serve

    from deployments.app import llm_deployment_name

    return serve.get_deployment_handle(llm_deployment_name(model_name), app_name="raygate")


@pytest.fixture(scope="session")
def cache_handle(ray_context):
    from ray import serve

    return serve.get_deployment_handle("SemanticCache", app_name="raygate")


@pytest.fixture(scope="session")
def redis_handle(ray_context):
    from ray import serve

    return serve.get_deployment_handle("CacheRedis", app_name="raygate")


@pytest.fixture
def client(base_url):
    import openai

    return openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture
def aclient(base_url):
    import openai

    return openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=60)
