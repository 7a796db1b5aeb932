"""The application builder that serve_config.yaml's `import_path` names.

Graph: HTTP -> Ingress (FastAPI, exact-match cache path) -> SemanticCache (embeddings, vector index)
-> one LLM deployment per configured model (vLLM replicas); CacheRedis (embedded Valkey) when no
Redis URL is configured.
Everything a deployment needs is in the validated `AppConfig`; per-deployment Serve options come
from the same file, so one YAML describes the whole application.
"""

from __future__ import annotations

import logging
import os

from ray import serve
from ray.serve import Application

from cache.config import CacheConfig
from cache.embedded_redis import EmbeddedRedis
from cache.service import SemanticCache
from common.deployment_options import SHUTDOWN_CHECK_S
from deployments.autoscaling import QueueLengthPolicy
from deployments.config import AppConfig, ModelConfig, llm_deployment_name
from deployments.ingress import Ingress
from deployments.ingress_router import IngressRouter
from deployments.llm_server import LLMServer
from deployments.placement import replica_placement
from router.policy import RouterSettings
from router.prompt_text import routing_text
from router.request_router import ROUTING_STATS_PERIOD_S, PrefixAwareRequestRouter

logger = logging.getLogger("ray.serve")

PREFIX_ROUTER = f"{PrefixAwareRequestRouter.__module__}:{PrefixAwareRequestRouter.__qualname__}"
# Serve's controller kills a replica still in its constructor past this many seconds, when the
# controller restarts and recovers it (Serve's default: 30).
SLOW_STARTUP_ENV = "RAY_SERVE_SLOW_STARTUP_WARNING_S"


def _llm_actor_options(cfg: ModelConfig) -> dict:
    opts = dict(cfg.deployment.ray_actor_options or {})
    for key, value in replica_placement(cfg).actor_resources.items():
        opts.setdefault(key, value)
    env = dict(cfg.env)
    if cfg.loading.cache_dir:
        env.setdefault("HF_HOME", cfg.loading.cache_dir)  # vLLM's Ray workers inherit the replica's env
    if env:
        runtime_env = dict(opts.get("runtime_env") or {})
        runtime_env["env_vars"] = {**env, **runtime_env.get("env_vars", {})}
        opts["runtime_env"] = runtime_env
    return opts


def _check_startup_allowance(cfg: ModelConfig) -> None:
    limit = float(os.environ.get(SLOW_STARTUP_ENV, "30"))
    if limit < cfg.loading.startup_allowance_s:
        logger.warning(
            "model %s: loading.startup_allowance_s is %g s but %s is %g s: a replica still loading when "
            "Serve's controller restarts is killed after %g s (set it in controller_options.runtime_env)",
            cfg.name, cfg.loading.startup_allowance_s, SLOW_STARTUP_ENV, limit, limit,
        )


def warm_prefix_text(system_prompt: str) -> str:
    """The routing text of a conversation that starts with `system_prompt` (its held prefix)."""
    return routing_text({"messages": [{"role": "system", "content": system_prompt}]})


def _router_config(cfg: ModelConfig) -> dict | None:
    """The deployment's request_router_config, validated here when it names raygate's router
    (a typo fails `serve run`, not every request), with the model's warm-up prefixes added."""
    config = dict(cfg.deployment.request_router_config or {})
    cls = config.get("request_router_class")
    if cls not in (PREFIX_ROUTER, PrefixAwareRequestRouter):
        return config or None
    kwargs = dict(config.get("request_router_kwargs") or {})
    kwargs.setdefault("warm_prefixes", [warm_prefix_text(p) for p in cfg.warmup_system_prompts])
    config["request_router_kwargs"] = RouterSettings.model_validate(kwargs).model_dump()
    # How soon routers learn that a replica's engine stalled (LLMServer.record_routing_stats).
    config.setdefault("request_routing_stats_period_s", ROUTING_STATS_PERIOD_S)
    return config


def check_autoscaling_policy(cfg: ModelConfig) -> None:
    """Build the model's autoscaling policy once here, so a wrong `policy_kwargs` (an unknown name, a
    queue_weight below 1) fails `serve run` naming the model and the field; Serve itself accepts any
    kwargs and the policy would fail inside the controller, every control loop, in its log only."""
    auto = (cfg.deployment.as_options().get("autoscaling_config") or {})
    policy = auto.get("policy") or {}
    target = policy.get("policy_function")
    if target not in (f"{QueueLengthPolicy.__module__}:{QueueLengthPolicy.__qualname__}", QueueLengthPolicy):
        return
    kwargs = policy.get("policy_kwargs") or {}
    try:
        QueueLengthPolicy(**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"models[{cfg.name}].deployment.autoscaling_config.policy.policy_kwargs "
                         f"{kwargs}: {e}") from None


def llm_deployment_options(cfg: ModelConfig) -> dict:
    """Serve options of the model's deployment: `deployment` from the config, the replica's resources
    and, with tensor_parallel_size x pipeline_parallel_size > 1, its placement group
    (deployments/placement.py)."""
    options = cfg.deployment.as_options()
    router = _router_config(cfg)
    if router is not None:
        options["request_router_config"] = router
    options["ray_actor_options"] = _llm_actor_options(cfg)
    placement = replica_placement(cfg)
    if placement.bundles is not None:
        options["placement_group_bundles"] = placement.bundles
        options["placement_group_strategy"] = placement.strategy
    options.setdefault("max_ongoing_requests", 256)
    # Replicas load a model before they are ready (the constructor); then check the engine often.
    options.setdefault("health_check_period_s", 5)  # Serve replaces after 3 failed checks in a row
    options.setdefault("health_check_timeout_s", 30)
    return options


def build_llm_deployment(cfg: ModelConfig) -> Application:
    check_autoscaling_policy(cfg)
    _check_startup_allowance(cfg)
    options = llm_deployment_options(cfg)
    return serve.deployment(LLMServer).options(name=llm_deployment_name(cfg.name), **options).bind(cfg)


def build_cache_deployments(cfg: CacheConfig) -> tuple[Application, Application | None]:
    """The SemanticCache deployment, and the embedded Valkey when no Redis URL is configured."""
    redis = None
    if not cfg.redis_url:
        redis = serve.deployment(EmbeddedRedis).options(
            name="CacheRedis", num_replicas=1, ray_actor_options={"num_cpus": 0.1},
            health_check_period_s=2, health_check_timeout_s=10, graceful_shutdown_wait_loop_s=SHUTDOWN_CHECK_S,
        ).bind(cfg.embedded)
    options = cfg.deployment.as_options()
    options.setdefault("ray_actor_options", {"num_cpus": 0.25})
    options.setdefault("max_ongoing_requests", 256)
    if "num_replicas" not in options and "autoscaling_config" not in options:
        # Scales on its own load: ongoing lookups per replica.
        options["autoscaling_config"] = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 64}
    cache = serve.deployment(SemanticCache).options(name="SemanticCache", **options).bind(cfg, redis)
    return cache, redis


# Serve options that size a deployment: with ingress.colocate the ingress replicas are the first
# model's replicas, so they follow that model's.
REPLICA_COUNT_KEYS = ("num_replicas", "autoscaling_config")


def ingress_options(config: AppConfig) -> dict:
    """The Ingress deployment's Serve options; with `ingress.colocate`, each ingress replica also
    reserves what the first model's replica would (CPUs, GPUs, custom resources, its environment),
    gets that model's start-up allowance and health-check timing, and the deployment is sized as the
    model's would be: its `num_replicas` or `autoscaling_config` (the queue-length policy reads the
    engine's counts from `Ingress.record_autoscaling_stats`) replace the ingress's own."""
    options = config.ingress.deployment.as_options()
    first = config.colocated_model()
    if first is None:
        return options
    if replica_placement(first).bundles is not None:
        raise ValueError(f"ingress.colocate: model {first.name} needs a placement group (tensor_parallel_size x "
                         "pipeline_parallel_size > 1); serve it from its own LLM deployment")
    check_autoscaling_policy(first)
    _check_startup_allowance(first)
    sizing = {k: v for k, v in first.deployment.as_options().items() if k in REPLICA_COUNT_KEYS}
    own = {k: options.pop(k) for k in REPLICA_COUNT_KEYS if k in options}
    if own and own != sizing:
        logger.info("ingress.colocate: the ingress deployment is sized as model %s (%s), not by "
                    "ingress.deployment (%s)", first.name, sizing or "Serve's default", own)
    options.update(sizing)
    if may_scale_out(first):
        # HAProxy asks IngressRouter which ingress replica serves a request (deployments/ingress_router.py):
        # it runs the model's prefix/session/load-aware router over the ingress replicas.
        options["request_router_config"] = _router_config(first)
    actor = _llm_actor_options(first)
    actor_options = dict(options.get("ray_actor_options") or {})
    for key in ("num_cpus", "num_gpus", "resources", "runtime_env", "accelerator_type"):
        if key in actor:
            actor_options[key] = actor[key]
    options["ray_actor_options"] = actor_options
    options.setdefault("health_check_period_s", 5)
    options.setdefault("health_check_timeout_s", 30)
    return options


def may_scale_out(cfg: ModelConfig) -> bool:
    """Whether the model's deployment may run more than one replica."""
    options = cfg.deployment.as_options()
    auto = options.get("autoscaling_config")
    if auto is not None:
        return int(auto.get("max_replicas", 1)) > 1
    replicas = options.get("num_replicas", 1)
    return replicas == "auto" or int(replicas) > 1


def build_app(args: AppConfig) -> Application:
    config = args if isinstance(args, AppConfig) else AppConfig.model_validate(args or {})
    colocated = config.colocated_model()
    served_here = {colocated.name} if colocated is not None else set()
    llm = {m.name: build_llm_deployment(m) for m in config.models if m.name not in served_here}
    cache, redis = build_cache_deployments(config.cache) if config.cache.enabled else (None, None)
    ingress = Ingress.options(**ingress_options(config)).bind(config, llm, cache, redis)
    if colocated is not None and may_scale_out(colocated):
        router = IngressRouter.options(name="IngressRouter").bind(ingress, colocated.name)
        return ingress._with_ingress_request_router(router)
    return ingress
