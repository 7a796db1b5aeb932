"""The application's configuration: the `args` block of serve_config.yaml, validated once at build time.

Why pydantic: a typo in serve_config.yaml fails `serve run` at once with the field's name, instead of
surfacing as a replica crash loop minutes later. Every engine argument not named here passes through
to vLLM's `AsyncEngineArgs` untouched (`engine_args` allows extra keys).
"""

from __future__ import annotations

import re
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cache.config import CacheConfig
from deployments.admission import AdmissionConfig
from deployments.auth import AuthConfig
from common.deployment_options import DeploymentOptions

# Models built on the machine from PyPI packages (deployments/builtin_models.py): `builtin:tiny-llama`
# is the random-weight demo (deployments/demo_model.py), `builtin:smollm2-135m-instruct` a real
# instruct model converted from a GGUF file (deployments/smollm2_model.py).
BUILTIN_DEMO = "builtin:tiny-llama"
BUILTIN_SMOLLM2 = "builtin:smollm2-135m-instruct"
BUILTIN_MODELS = (BUILTIN_DEMO, BUILTIN_SMOLLM2)


class EngineArgs(BaseModel):
    """vLLM engine arguments. The common ones are typed; any other `AsyncEngineArgs` field passes through."""

    model_config = ConfigDict(extra="allow")

    dtype: str = "auto"
    max_model_len: Optional[int] = Field(default=None, ge=16)
    max_num_seqs: Optional[int] = Field(default=None, ge=1)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    quantization: Optional[str] = None
    tensor_parallel_size: int = Field(default=1, ge=1)
    enable_prefix_caching: Optional[bool] = None
    enforce_eager: bool = False

    def as_kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class StreamingConfig(BaseModel):
    """How a streamed generation's tokens are grouped into SSE chunks.

    The first token always leaves at once (TTFT) and the last one too (E2E). Between them, the
    engine's per-step outputs are merged until `interval_ms` has passed since the last chunk or
    `max_tokens_per_chunk` tokens are waiting. Every chunk costs CPU three times: vLLM's JSON
    rendering, the Ray hop to the ingress, and the HTTP write; on a 2-core machine that CPU is taken
    from the engine. `interval_ms: 0` sends one chunk per engine step, as `vllm serve` does.
    """

    model_config = ConfigDict(extra="forbid")

    interval_ms: float = Field(default=50.0, ge=0, le=1000)
    max_tokens_per_chunk: int = Field(default=64, ge=1)


class SubmitBatchingConfig(BaseModel):
    """`@serve.batch` grouping of request submission at the LLM replica.

    Requests that arrive together reach the engine together, so one scheduler step prefills them
    all; at concurrency 32 this lowered TTFT p50 in 3 of 4 measured runs at equal throughput
    (docs/architecture.md). The price: a lone request waits up to `batch_wait_timeout_s`.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    max_batch_size: int = Field(default=32, ge=1)
    batch_wait_timeout_s: float = Field(default=0.01, ge=0)


def llm_deployment_name(model_name: str) -> str:
    """The Serve deployment that serves `model_name`."""
    return "LLM:" + re.sub(r"[^A-Za-z0-9_.-]+", "-", model_name)


class ModelConfig(BaseModel):
    """One served model: where its weights come from, its engine, and its deployment."""

    model_config = ConfigDict(extra="forbid")

    # Hugging Face id, local path, or one of BUILTIN_MODELS (built offline on this machine).
    model: str = BUILTIN_DEMO
    # The name clients send as `model` and see in /v1/models; defaults to `model`.
    served_model_name: Optional[str] = None
    tokenizer: Optional[str] = None
    chat_template: Optional[str] = None
    engine_args: EngineArgs = Field(default_factory=EngineArgs)
    # Environment of the LLM replica, e.g. VLLM_CPU_KVCACHE_SPACE on CPU.
    env: dict[str, str] = Field(default_factory=dict)
    # What each replica reserves from Ray: CPUs, GPUs (set num_gpus: 1 on GPU nodes), custom resources.
    num_gpus: float = 0.0
    resources: dict[str, float] = Field(default_factory=dict)
    num_cpus: float = 1.0
    deployment: DeploymentOptions = Field(default_factory=DeploymentOptions)
    streaming: StreamingConfig = Field(default_factory=StreamingConfig)
    submit_batching: SubmitBatchingConfig = Field(default_factory=SubmitBatchingConfig)
    # Real requests each replica serves before it reports healthy.
    warmup_requests: int = Field(default=2, ge=0)
    # System prompts each replica prefills before it reports healthy, so that their first real
    # requests hit the prefix cache; the prefix-aware router knows every replica holds them.
    warmup_system_prompts: list[str] = Field(default_factory=list)
    admission: AdmissionConfig = Field(default_factory=AdmissionConfig)
    # A replica that fails before its first byte reaches the client (it died, or could not be
    # reached): the request is sent again, to another replica, up to this many times.
    retries: int = Field(default=2, ge=0, le=10)
    # vLLM's own Prometheus series (TTFT, ITL, E2E and queue histograms, KV-cache and prefix-cache
    # use) exported through Ray's metrics agent as `ray_vllm_*`, tagged with the replica.
    engine_metrics: bool = True

    @field_validator("model")
    @classmethod
    def _known_builtin(cls, v: str) -> str:
        if v.startswith("builtin:") and v not in BUILTIN_MODELS:
            raise ValueError(f"unknown built-in model {v!r}; known: {', '.join(BUILTIN_MODELS)}")
        return v

    @property
    def name(self) -> str:
        """The served name: `served_model_name`, else `model` (`builtin:` stripped for built-ins)."""
        if self.served_model_name:
            return self.served_model_name
        return self.model.removeprefix("builtin:") if self.model in BUILTIN_MODELS else self.model


class IngressConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    deployment: DeploymentOptions = Field(default_factory=DeploymentOptions)
    # Bodies larger than this are refused with 413 before they are parsed.
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # Ingress -> LLM replica transport: Serve's gRPC channel (`_by_reference=False`) or Ray actor
    # calls with one object per streamed item. Chosen by measurement (docs/architecture.md).
    grpc_handles: bool = False
    # Log each request's body and each non-streamed answer (tenant, model, prompt, completion) at INFO.
    # Off by default: prompts and completions are the users' data, not operational telemetry.
    log_payloads: bool = False


class AppConfig(BaseModel):
    """The `args` of the raygate application in serve_config.yaml."""

    model_config = ConfigDict(extra="forbid")

    models: list[ModelConfig] = Field(default_factory=lambda: [ModelConfig()])
    ingress: IngressConfig = Field(default_factory=IngressConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)

    @field_validator("models")
    @classmethod
    def _at_least_one(cls, v: list[ModelConfig]) -> list[ModelConfig]:
        if not v:
            raise ValueError("at least one model is required")
        return v

    @model_validator(mode="after")
    def _unique_names(self) -> "AppConfig":
        names = [m.name for m in self.models]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate served model names: {sorted(dup)}")
        return self
