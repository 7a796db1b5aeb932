"""One raygate server, started the way users start it, shared by every integration test.

`serve run serve_config.yaml` (the repo's own file, with the HTTP and cache ports moved to free ones
and two semantic-cache replicas) starts a local Ray cluster, Serve with HAProxy, the ingress, the
cache (embedded Valkey, SemanticCache) and two LLM deployments on the demo model with real vLLM on
CPU: the repo's model with one replica, and a second one with two replicas for the routing and
admission tests (`routed_model_config`). The test process attaches to that cluster as a second driver for
DeploymentHandles that read engine state. Teardown stops the server gracefully and fails if a
vLLM engine or HAProxy process outlived it.
"""

from __future__ import annotations

import copy
import os
import tempfile
import types
from pathlib import Path

import pytest
import yaml

from bench.servers import Raygate, free_port, haproxy_processes, valkey_processes, vllm_processes

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def app_config() -> dict:
    cfg = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    return cfg["applications"][0]["args"]


# The second model of the test app: the same demo weights served by 2 replicas behind the prefix
# router, with small admission bounds so that tests can fill them, and one warm-up system prompt.
ROUTED_MODEL = "tiny-llama-routed"
WARM_SYSTEM_PROMPT = ("You are the support agent of the Northwind rail company. Answer questions about "
                      "timetables, tickets, refunds and delays politely and precisely. ") * 8


def routed_model_config(first: dict) -> dict:
    cfg = copy.deepcopy(first)
    cfg["served_model_name"] = ROUTED_MODEL
    cfg["num_cpus"] = 0.1  # a Ray reservation only: the app must fit the 2 logical CPUs of a 2-core host
    cfg["warmup_system_prompts"] = [WARM_SYSTEM_PROMPT]
    cfg["engine_args"]["max_model_len"] = 4096  # long generations hold admission slots in tests
    cfg["admission"] = {"max_inflight_per_replica": 1, "max_queued": 4, "max_queue_wait_s": 60,
                        "queue_share": {"high": 1.0, "normal": 0.75, "low": 0.5}}
    deployment = cfg.setdefault("deployment", {})
    deployment["num_replicas"] = 2
    kwargs = deployment["request_router_config"]["request_router_kwargs"]
    kwargs.update(imbalance_abs=0, imbalance_rel=1.5)  # one request more than the other is overloaded
    return cfg


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
    # Two SemanticCache replicas, so that tests can see entries cross from one to the other.
    models = yaml.safe_load((REPO / "serve_config.yaml").read_text())["applications"][0]["args"]["models"]
    overrides = {"cache.embedded.port": free_port(), "cache.deployment.num_replicas": 2,
                 "cache.deployment.autoscaling_config": None,
                 "models": models + [routed_model_config(models[0])]}
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
