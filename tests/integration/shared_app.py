"""The integration tests' app: the repo's serve_config.yaml as `serve run` starts it, with test overrides.

`serve run` on the repo's own file, with the HTTP and cache ports moved to free ones and two
semantic-cache replicas, starts a local Ray cluster, Serve with HAProxy, the ingress, the cache
(embedded Valkey, SemanticCache) and three LLM deployments with real vLLM on CPU: the repo's first
model block served on the demo model (`builtin:tiny-llama`, whose forward pass is nearly free, so the
suite stays fast) with one replica; a second one on the demo model with two replicas for the routing,
admission and fault tests (`routed_model_config`); and the repo's real default model
(`builtin:smollm2-135m-instruct`) with one replica, for tests/integration/test_real_model.py and the
README's examples (`real_model_config`). The same `serve run` starts a second application at /secure,
configured as production is (`secure_app_config`): auth on, tenants with limits, two ingress
replicas, its cache in the first app's Valkey under its own namespace.
The first app logs payloads (`ingress.log_payloads`, for its test) and serves a fourth model, the
stand-in engine under queue-length autoscaling (`autoscaled_model_config`). The secure app also
carries settings whose promises need an app of their own and that its other tests do not notice: an
admin key from `RAYGATE_ADMIN_KEYS`, a model rate limit (`rate_limit_rps`), streaming chunks capped at
a few tokens, and an exact-only cache (`cache.semantic: false`).

Both apps set `ingress.colocate: false` (serve_config.yaml's "auto" runs the first model's engine
inside the ingress): every model then has its own LLM deployment, whose replicas the tests read engine
state from, kill and route between through handles. The shipped colocated path has a cluster of its
own in tests/integration/test_colocated.py, and tests/integration/test_shutdown.py runs the file as is.

A module of its own (not conftest.py) so that tests, conftest.py and scripts/dev_server.py share
one copy of its state.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from bench.servers import TINY_LLAMA, Raygate, free_port, with_model

REPO = Path(__file__).resolve().parents[2]

# The model most tests use: the repo's first model block, served on the demo model.
TEST_MODEL = TINY_LLAMA["served_model_name"]


def tiny_model_config(first: dict) -> dict:
    """serve_config.yaml's first model block with the demo model and its settings (TINY_LLAMA)."""
    return with_model(first, TINY_LLAMA["model"])


def real_model_config(first: dict) -> dict:
    """serve_config.yaml's own first model (the real default), one fixed replica, a 1 GiB KV cache."""
    cfg = copy.deepcopy(first)
    cfg["num_cpus"] = 0.1  # a Ray reservation only: the app must fit the 2 logical CPUs of a 2-core host
    cfg.setdefault("env", {})["VLLM_CPU_KVCACHE_SPACE"] = "1"  # ~23,000 tokens in float32: plenty for the tests
    deployment = cfg.setdefault("deployment", {})
    deployment.pop("autoscaling_config", None)
    deployment["num_replicas"] = 1
    return cfg


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
    cfg["stall_timeout_s"] = 5  # test_engine_stall.py freezes an engine core
    # A request may wait 150 s for its slot: with one replica killed (test_fault_tolerance.py) the other
    # holds the load's 2,000-token stream and three 400-token answers in its one slot while Serve
    # starts the replacement on the same 2 cores; CI once saw 60 s run out there (503).
    cfg["admission"] = {"max_inflight_per_replica": 1, "max_queued": 4, "max_queue_wait_s": 150,
                        "queue_share": {"high": 1.0, "normal": 0.75, "low": 0.5}}
    deployment = cfg.setdefault("deployment", {})
    deployment.pop("autoscaling_config", None)
    deployment["num_replicas"] = 2
    kwargs = deployment["request_router_config"]["request_router_kwargs"]
    kwargs.update(imbalance_abs=0, imbalance_rel=1.5)  # one request more than the other is overloaded
    return cfg


# The third model: the stand-in engine (no model, no compute) under the queue-length autoscaling
# policy in the live Serve controller, 1 to 2 replicas, a 2-request batch so that requests wait inside
# the "engine" (tests/integration/test_autoscaling_live.py).
AUTOSCALED_MODEL = "stand-in-autoscaled"


def autoscaled_model_config(first: dict) -> dict:
    cfg = copy.deepcopy(first)
    cfg.update(served_model_name=AUTOSCALED_MODEL, engine="stand_in", num_cpus=0.05, warmup_requests=0,
               stand_in={"ttft_ms": 50, "itl_ms": 50}, engine_metrics=False)
    cfg["engine_args"]["max_num_seqs"] = 2
    cfg.pop("env", None)
    cfg["admission"] = {"max_inflight_per_replica": 64, "max_queued": 64}
    deployment = cfg.setdefault("deployment", {})
    # Keeps the prefix router: the ingress learns from it when no replica runs (test_lost_replica.py).
    deployment["autoscaling_config"] = {
        "min_replicas": 1, "max_replicas": 2,
        # 20 running requests per replica: 8 requests alone never ask for a second replica; only the
        # engine's waiting requests (weighted 4x) do, which Serve's default policy does not see.
        "target_ongoing_requests": 20, "upscale_delay_s": 1, "downscale_delay_s": 5,
        "metrics_interval_s": 0.5, "look_back_period_s": 2,
        "policy": {"policy_function": "deployments.autoscaling:QueueLengthPolicy",
                   "policy_kwargs": {"queue_weight": 4.0, "floor": 1}},
    }
    return cfg


# The one origin the main app allows cross-origin requests from (tests/integration/test_correctness.py).
CORS_ORIGIN = "http://chat.example"

# The secure app's API keys (serve_config.yaml holds only their SHA-256 digests).
SECURE_PREFIX = "/secure"
TENANT_KEYS = {"team-a": "sk-test-team-a", "team-b": "sk-test-team-b", "team-c": "sk-test-team-c",
               "partner-1": "sk-test-partner-1",
               "partner-2": "sk-test-partner-2", "limited": "sk-test-limited", "fuzz": "sk-test-fuzz",
               "frugal": "sk-test-frugal"}
ADMIN_KEY = "sk-test-admin"
ENV_ADMIN_KEY = "sk-test-env-admin"  # a plain admin key from RAYGATE_ADMIN_KEYS (never in the config)
LIMITED_RPM = 40
FRUGAL_TPM = 100  # `frugal`'s tokens per minute: a few generations, any number of cache hits
# The secure model: a token bucket per ingress replica high enough for the other tests' pace (the
# fuzzer sends one request at a time; a 429 is in the API's documented answers) and low enough that
# a burst of 100 exceeds it even when a loaded host delivers them to the 2 ingress replicas over
# seconds: at 20/s CI once saw all 100 accepted in 3.2 s (2 buckets of 20 take all 100 when they
# arrive over 1.5 s or more; at 8/s, over 5.25 s or more). And SSE chunks
# of at most 3 tokens at most every second, so that the cap, not the interval, cuts every chunk.
SECURE_RATE_LIMIT_RPS = 8
SECURE_STREAMING = {"interval_ms": 1000, "max_tokens_per_chunk": 3}


def secure_app_config(main_app: dict, first_model: dict, redis_port: int) -> dict:
    from deployments.auth import hash_key

    app = copy.deepcopy(main_app)
    app.update(name="raygate-secure", route_prefix=SECURE_PREFIX)
    model = copy.deepcopy(first_model)
    model["num_cpus"] = 0.1
    model["deployment"].pop("autoscaling_config", None)  # one fixed replica: less background work
    model["deployment"]["num_replicas"] = 1
    model["admission"] = dict(model["admission"], rate_limit_rps=SECURE_RATE_LIMIT_RPS,
                              rate_limit_burst=SECURE_RATE_LIMIT_RPS)
    model["streaming"] = dict(SECURE_STREAMING)
    app["runtime_env"] = copy.deepcopy(app.get("runtime_env") or {})
    app["runtime_env"].setdefault("env_vars", {})["RAYGATE_ADMIN_KEYS"] = ENV_ADMIN_KEY
    args = app["args"]
    args["models"] = [model]
    args["ingress"]["deployment"] = {"num_replicas": 2, "max_ongoing_requests": 1024}
    args["ingress"]["colocate"] = False  # two ingress replicas in front of one LLM replica
    args["cache"].update(redis_url=f"redis://127.0.0.1:{redis_port}/0", namespace="secure", semantic=False,
                         deployment={"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}})
    args["auth"] = {
        "enabled": True,
        "api_keys": [{"sha256": hash_key(k), "tenant": t} for t, k in TENANT_KEYS.items()],
        "admin_keys": [hash_key(ADMIN_KEY)],
        "tenants": {"partner-1": {"cache_scope": "partners"}, "partner-2": {"cache_scope": "partners"},
                    "limited": {"requests_per_minute": LIMITED_RPM},
                    "frugal": {"tokens_per_minute": FRUGAL_TPM},
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
    tiny = tiny_model_config(models[0])
    redis_port = free_port()
    # Ray reservations only: the apps' replicas must fit the 2 logical CPUs of a 2-core host.
    first = dict(tiny, num_cpus=0.5)
    overrides = {"cache.embedded.port": redis_port, "cache.deployment.num_replicas": 2, "ingress.log_payloads": True,
                 "cache.deployment.autoscaling_config": None,
                 "ingress.cors.allow_origins": [CORS_ORIGIN], "ingress.colocate": False,
                 "models": [first, routed_model_config(tiny), autoscaled_model_config(tiny), real_model_config(models[0])]}
    return Raygate(REPO / "serve_config.yaml", port, log_dir, overrides=overrides,
                   extra_apps=[secure_app_config(main_app, tiny, redis_port)])


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
