"""The integration tests' app: the repo's serve_config.yaml as `serve run` starts it, with test overrides.

`serve run` on the repo's own file, with the HTTP and cache ports moved to free ones and two
semantic-cache replicas, starts a local Ray cluster, Serve with HAProxy, the ingress, the cache
(embedded Valkey, SemanticCache) and two LLM deployments on the demo model with real vLLM on CPU:
the repo's model with one replica, and a second one with two replicas for the routing, admission and
fault tests (`routed_model_config`). The same `serve run` starts a second application at /secure,
configured as production is (`secure_app_config`): auth on, tenants with limits, two ingress
replicas, its cache in the first app's Valkey under its own namespace.

A module of its own (not conftest.py) so that tests, conftest.py and scripts/dev_server.py share
one copy of its state.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from bench.servers import Raygate, free_port

REPO = Path(__file__).resolve().parents[2]


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
    deployment.pop("autoscaling_config", None)
    deployment["num_replicas"] = 2
    kwargs = deployment["request_router_config"]["request_router_kwargs"]
    kwargs.update(imbalance_abs=0, imbalance_rel=1.5)  # one request more than the other is overloaded
    return cfg


# The one origin the main app allows cross-origin requests from (tests/integration/test_correctness.py).
CORS_ORIGIN = "http://chat.example"

# The secure app's API keys (serve_config.yaml holds only their SHA-256 digests).
SECURE_PREFIX = "/secure"
TENANT_KEYS = {"team-a": "sk-test-team-a", "team-b": "sk-test-team-b", "team-c": "sk-test-team-c",
               "partner-1": "sk-test-partner-1",
               "partner-2": "sk-test-partner-2", "limited": "sk-test-limited", "fuzz": "sk-test-fuzz"}
ADMIN_KEY = "sk-test-admin"
LIMITED_RPM = 40


def secure_app_config(main_app: dict, first_model: dict, redis_port: int) -> dict:
    from deployments.auth import hash_key

    app = copy.deepcopy(main_app)
    app.update(name="raygate-secure", route_prefix=SECURE_PREFIX)
    model = copy.deepcopy(first_model)
    model["num_cpus"] = 0.1
    model["deployment"].pop("autoscaling_config", None)  # one fixed replica: less background work
    model["deployment"]["num_replicas"] = 1
    args = app["args"]
    args["models"] = [model]
    args["ingress"]["deployment"] = {"num_replicas": 2, "max_ongoing_requests": 1024}
    args["cache"].update(redis_url=f"redis://127.0.0.1:{redis_port}/0", namespace="secure",
                         deployment={"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}})
    args["auth"] = {
        "enabled": True,
        "api_keys": [{"sha256": hash_key(k), "tenant": t} for t, k in TENANT_KEYS.items()],
        "admin_keys": [hash_key(ADMIN_KEY)],
        "tenants": {"partner-1": {"cache_scope": "partners"}, "partner-2": {"cache_scope": "partners"},
                    "limited": {"requests_per_minute": LIMITED_RPM},
                    "team-b": {"max_tokens": 8, "max_n": 2, "max_messages": 4, "tokens_per_minute": 400}},
        "default_tenant": {"max_tokens": 16, "max_n": 2, "max_messages": 64},
    }
    return app


def _wait_healthy(url: str, timeout_s: float) -> None:
    import time
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(2)
    raise TimeoutError(f"{url} not healthy after {timeout_s} s")


def build_test_app(port: int, log_dir: Path) -> Raygate:
    """The integration tests' `serve run`: the repo's config with the overrides described above."""
    main_app = yaml.safe_load((REPO / "serve_config.yaml").read_text())["applications"][0]
    models = main_app["args"]["models"]
    redis_port = free_port()
    # Ray reservations only: the apps' replicas must fit the 2 logical CPUs of a 2-core host.
    first = dict(models[0], num_cpus=0.5)
    overrides = {"cache.embedded.port": redis_port, "cache.deployment.num_replicas": 2,
                 "cache.deployment.autoscaling_config": None,
                 "ingress.cors.allow_origins": [CORS_ORIGIN],
                 "models": [first, routed_model_config(models[0])]}
    return Raygate(REPO / "serve_config.yaml", port, log_dir, overrides=overrides,
                   extra_apps=[secure_app_config(main_app, models[0], redis_port)])


def start_test_app(srv: Raygate) -> None:
    srv.start(timeout_s=600)
    _wait_healthy(srv.base_url + SECURE_PREFIX + "/health", timeout_s=300)


_running: list[Raygate] = []  # the shared app while it runs


def register_running(srv: Raygate) -> None:
    _running.append(srv)


def stop_shared_app() -> None:
    """Stop the shared app now (tests that need a cluster of their own call it); a no-op if none runs."""
    import ray
    from ray._private import auto_init_hook

    # Handles this process made keep pushing autoscaling metrics after `ray.shutdown()`, and Ray would
    # answer their next call by starting a new local cluster in this process: no more auto-init.
    auto_init_hook.enable_auto_connect = False
    ray.shutdown()
    while _running:
        left = _running.pop().stop()
        assert not left, f"processes outlived a graceful `serve run` shutdown: {left}"
