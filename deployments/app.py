"""The application builder that serve_config.yaml's `import_path` names.

Graph: HTTP -> Ingress (FastAPI) -> one LLM deployment per configured model (vLLM replicas).
Everything a deployment needs is in the validated `AppConfig`; per-deployment Serve options come
from the same file, so one YAML describes the whole application.
"""

from __future__ import annotations

import re

from ray import serve
from ray.serve import Application

from deployments.config import AppConfig, ModelConfig
from deployments.ingress import Ingress
from deployments.llm_server import LLMServer


def llm_deployment_name(model_name: str) -> str:
    return "LLM:" + re.sub(r"[^A-Za-z0-9_.-]+", "-", model_name)


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


def build_llm_deployment(cfg: ModelConfig) -> Application:
    options = cfg.deployment.as_options()
    options["ray_actor_options"] = _llm_actor_options(cfg)
    options.setdefault("max_ongoing_requests", 256)
    # Replicas load a model before they are ready: give them time, then check the engine often.
    options.setdefault("health_check_period_s", 10)
    options.setdefault("health_check_timeout_s", 30)
    return serve.deployment(LLMServer).options(name=llm_deployment_name(cfg.name), **options).bind(cfg)


def build_app(args: AppConfig) -> Application:
    config = args if isinstance(args, AppConfig) else AppConfig.model_validate(args or {})
    llm = {m.name: build_llm_deployment(m) for m in config.models}
    return Ingress.options(**config.ingress.deployment.as_options()).bind(config, llm)
