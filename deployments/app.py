"""The application builder that serve_config.yaml's `import_path` names.

Graph: HTTP -> Ingress (FastAPI, exact-match cache path) -> SemanticCache (embeddings, vector index)
-> one LLM deployment per configured model (vLLM replicas); CacheRedis (embedded Valkey) when no
Redis URL is configured.
Everything a deployment needs is in the validated `AppConfig`; per-deployment Serve options come
from the same file, so one YAML describes the whole application.
"""

from __future__ import annotations

from ray import serve
from ray.serve import Application

from cache.config import CacheConfig
from cache.embedded_redis import EmbeddedRedis
from cache.service import SemanticCache
from deployments.config import AppConfig, ModelConfig, llm_deployment_name
from deployments.ingress import Ingress
from deployments.llm_server import LLMServer
from router.policy import RouterSettings
from router.prompt_text import routing_text
from router.request_router import PrefixAwareRequestRouter

PREFIX_ROUTER = f"{PrefixAwareRequestRouter.__module__}:{PrefixAwareRequestRouter.__qualname__}"


def _llm_actor_options(cfg: ModelConfig) -> dict:
    opts = dict(cfg.deployment.ray_actor_options or {})
    opts.setdefault("num_cpus", cfg.num_cpus)
    if cfg.num_gpus:
        opts.setdefault("num_gpus", cfg.num_gpus)
    if cfg.resources:
        opts.setdefault("resources", dict(cfg.resources))
    if cfg.env:
        runtime_env = dict(opts.get("runtime_env") or {})
        runtime_env["env_vars"] = {**cfg.env, **runtime_env.get("env_vars", {})}
        opts["runtime_env"] = runtime_env
    return opts


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
    return config


def build_llm_deployment(cfg: ModelConfig) -> Application:
    options = cfg.deployment.as_options()
    router = _router_config(cfg)
    if router is not None:
        options["request_router_config"] = router
    options["ray_actor_options"] = _llm_actor_options(cfg)
    options.setdefault("max_ongoing_requests", 256)
    # Replicas load a model before they are ready: give them time, then check the engine often.
    options.setdefault("health_check_period_s", 10)
    options.setdefault("health_check_timeout_s", 30)
    return serve.deployment(LLMServer).options(name=llm_deployment_name(cfg.name), **options).bind(cfg)


def build_cache_deployments(cfg: CacheConfig) -> tuple[Application, Application | None]:
    """The SemanticCache deployment, and the embedded Valkey when no Redis URL is configured."""
    redis = None
    if not cfg.redis_url:
        redis = serve.deployment(EmbeddedRedis).options(
            name="CacheRedis", num_replicas=1, ray_actor_options={"num_cpus": 0.1},
            health_check_period_s=2, health_check_timeout_s=10, graceful_shutdown_wait_loop_s=0.25,
        ).bind(cfg.embedded)
    options = cfg.deployment.as_options()
    options.setdefault("ray_actor_options", {"num_cpus": 0.25})
    options.setdefault("max_ongoing_requests", 256)
    if "num_replicas" not in options and "autoscaling_config" not in options:
        # Scales on its own load: ongoing lookups per replica.
        options["autoscaling_config"] = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 64}
    cache = serve.deployment(SemanticCache).options(name="SemanticCache", **options).bind(cfg, redis)
    return cache, redis


def build_app(args: AppConfig) -> Application:
    config = args if isinstance(args, AppConfig) else AppConfig.model_validate(args or {})
    llm = {m.name: build_llm_deployment(m) for m in config.models}
    cache, redis = build_cache_deployments(config.cache) if config.cache.enabled else (None, None)
    return Ingress.options(**config.ingress.deployment.as_options()).bind(config, llm, cache, redis)
