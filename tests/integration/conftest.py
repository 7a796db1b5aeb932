"""One raygate server, started the way users start it, shared by every integration test.

`serve run serve_config.yaml` (the repo's own file, with the HTTP and cache ports moved to free ones
and two semantic-cache replicas) starts a local Ray cluster, Serve with HAProxy, the ingress, the
cache (embedded Valkey, SemanticCache) and the LLM deployment on the demo model with real vLLM on CPU. The test process attaches to that cluster as a second driver for
DeploymentHandles that read engine state. Teardown stops the server gracefully and fails if a
vLLM engine or HAProxy process outlived it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import yaml

from bench.servers import Raygate, free_port, haproxy_processes, valkey_processes, vllm_processes

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def app_config() -> dict:
    cfg = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    return cfg["applications"][0]["args"]


@pytest.fixture(scope="session")
def server():
    assert not vllm_processes(), "an engine from an earlier run is still alive"
    assert not haproxy_processes(), "an HAProxy from an earlier run is still alive"
    assert not valkey_processes(), "a cache server from an earlier run is still alive"
    # Two SemanticCache replicas, so that tests can see entries cross from one to the other.
    overrides = {"cache.embedded.port": free_port(), "cache.deployment.num_replicas": 2,
                 "cache.deployment.autoscaling_config": None}
    srv = Raygate(REPO / "serve_config.yaml", free_port(), Path(tempfile.mkdtemp(prefix="raygate-test-")),
                  overrides=overrides)
    srv.start(timeout_s=600)
    yield srv
    import ray

    ray.shutdown()
    left = srv.stop()
    assert not left, f"processes outlived a graceful `serve run` shutdown: {left}"



@pytest.fixture(scope="session")
def base_url(server) -> str:
    return server.base_url


@pytest.fixture(scope="session")
def model_name(app_config) -> str:
    from deployments.config import AppConfig

    return AppConfig.model_validate(app_config).models[0].name


@pytest.fixture(scope="session")
def ray_context(server):
    """This test process attached to the server's Ray cluster as a second driver."""
    import ray

    return ray.init(address="auto", log_to_driver=False)


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
