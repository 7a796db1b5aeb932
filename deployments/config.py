"""The application's configuration: the `args` block of serve_config.yaml, validated once at build time.

Why pydantic: a typo in serve_config.yaml fails `serve run` at once with the field's name, instead of
surfacing as a replica crash loop minutes later. Every engine argument not named here passes through
to vLLM's `AsyncEngineArgs` untouched (`engine_args` allows extra keys).
"""

from __future__ import annotations

import re
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cache.config import CacheConfig
from deployments.admission import DEFAULT_ENGINE_SLOTS, AdmissionConfig
from deployments.auth import AuthConfig
from common.deployment_options import DeploymentOptions
from deployments.placement import expected_num_gpus, replica_placement

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
    pipeline_parallel_size: int = Field(default=1, ge=1)
    # None: "ray" when tensor_parallel_size x pipeline_parallel_size > 1 (workers in the replica's
    # placement group, deployments/placement.py), vLLM's own choice otherwise. "mp": workers are the
    # replica's child processes on its node (vLLM's CPU build accepts only this one).
    distributed_executor_backend: Optional[Literal["ray", "mp", "uni"]] = None
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
    # All of a replica's streams together get at most this many chunks per second: with many streams
    # each one's interval grows to streams / max_chunks_per_s (deployments/stream_coalescing.py,
    # ChunkBudget). null: a fixed `interval_ms` whatever the load.
    max_chunks_per_s: Optional[float] = Field(default=None, gt=0)


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


class StandInConfig(BaseModel):
    """The stand-in engine's timing (deployments/stand_in_engine.py): no model, no compute."""

    model_config = ConfigDict(extra="forbid")

    ttft_ms: float = Field(default=20.0, ge=0)  # time to the first token of a request
    itl_ms: float = Field(default=10.0, ge=0)  # time per later token


class PlacementConfig(BaseModel):
    """Where a replica's engine workers run when tensor_parallel_size x pipeline_parallel_size > 1
    (deployments/placement.py gives the bundles and the strategy)."""

    model_config = ConfigDict(extra="forbid")

    # The Ray resource each worker reserves one of: GPU, or a custom resource name (TPU hosts,
    # a node label resource, or a simulated accelerator in tests).
    accelerator: str = "GPU"
    # CPUs each worker's bundle reserves besides the accelerator (vLLM's worker keeps one busy).
    worker_cpus: float = Field(default=1.0, ge=0)
    # Accelerators of one node. null: the workers fit one node when pipeline_parallel_size is 1.
    accelerators_per_node: Optional[int] = Field(default=None, ge=1)
    # Strategy when the workers span nodes (pipeline stages): PACK fills a node before the next
    # (tensor-parallel groups stay together); SPREAD puts each worker on another node.
    multi_node_strategy: Literal["PACK", "SPREAD"] = "PACK"
    # Set to override the derived strategy.
    strategy: Optional[Literal["STRICT_PACK", "PACK", "SPREAD", "STRICT_SPREAD"]] = None


class LoadingConfig(BaseModel):
    """Where the weights of a Hugging Face id are cached, and how long a replica may take to start."""

    model_config = ConfigDict(extra="forbid")

    # HF_HOME of the replica and of its engine workers: one cache per node, shared by every replica
    # on it (huggingface_hub locks each file, so concurrent replicas download it once). Point it at
    # a node-local disk or a volume. null: huggingface_hub's default (~/.cache/huggingface). Local
    # paths in `model` are read where they are. The Hub token is HF_TOKEN from the environment.
    cache_dir: Optional[str] = None
    # Seconds a replica may spend loading (download + weights + warm-up). Serve runs no health
    # check before the constructor returns; the limit that does apply is the controller's
    # RAY_SERVE_SLOW_STARTUP_WARNING_S (a replica still starting when a restarted controller
    # recovers it is killed past it), which serve_config.yaml sets from this value's maximum.
    startup_allowance_s: float = Field(default=1800.0, gt=0)


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
    # Tool calling and reasoning, with vLLM's names and values (`vllm serve --enable-auto-tool-choice
    # --tool-call-parser hermes --reasoning-parser ... --chat-template ...`). `chat_template`: a file
    # (absolute, or relative to the raygate checkout) or the template itself; None: the tokenizer's.
    # `tool_choice` "required" and a named function need `tool_call_parser` (vLLM 0.32 refuses them
    # without one); "auto" needs `enable_auto_tool_choice` too, with a parser matching the chat
    # template. `tool_strict_level` (`--tool-strict-level`): "auto" holds a forced call's arguments to
    # the tool's schema only for tools sent with `strict: true`; "parameter" does it for every tool.
    chat_template: Optional[str] = None
    enable_auto_tool_choice: bool = False
    tool_call_parser: Optional[str] = None
    tool_strict_level: Literal["auto", "function", "parameter"] = "auto"
    reasoning_parser: Optional[str] = None
    engine_args: EngineArgs = Field(default_factory=EngineArgs)
    # The engine behind the replica (deployments/engine_protocol.py): vLLM, or the stand-in that emits
    # timed tokens with no model (`stand_in`), for measuring the serving layer alone.
    engine: Literal["vllm", "stand_in"] = "vllm"
    stand_in: StandInConfig = Field(default_factory=StandInConfig)
    # Environment of the LLM replica, e.g. VLLM_CPU_KVCACHE_SPACE on CPU.
    env: dict[str, str] = Field(default_factory=dict)
    # What each replica reserves from Ray: CPUs, GPUs (set num_gpus: 1 on GPU nodes), custom resources.
    # With tensor_parallel_size x pipeline_parallel_size = N > 1 the GPUs follow N (one per worker,
    # `placement`); a num_gpus set by hand must then equal N (0 for a non-GPU accelerator).
    num_gpus: float = 0.0
    resources: dict[str, float] = Field(default_factory=dict)
    num_cpus: float = 1.0
    placement: PlacementConfig = Field(default_factory=PlacementConfig)
    loading: LoadingConfig = Field(default_factory=LoadingConfig)
    deployment: DeploymentOptions = Field(default_factory=DeploymentOptions)
    streaming: StreamingConfig = Field(default_factory=StreamingConfig)
    submit_batching: SubmitBatchingConfig = Field(default_factory=SubmitBatchingConfig)
    # Real requests each replica serves before it reports healthy.
    warmup_requests: int = Field(default=2, ge=0)
    # System prompts each replica prefills before it reports healthy, so that their first real
    # requests hit the prefix cache; the prefix-aware router knows every replica holds them.
    warmup_system_prompts: list[str] = Field(default_factory=list)
    admission: AdmissionConfig = Field(default_factory=AdmissionConfig)
    # A stream whose first chunk has not come after this long is aborted with 504 (a request's own
    # deadline, x-raygate-timeout-ms or x-raygate-deadline, bounds streams and whole answers alike).
    ttft_timeout_s: float = Field(default=120.0, gt=0)
    # The engine-progress watchdog (deployments/engine_watchdog.py): an engine that holds requests but
    # reports no output step for this long is killed and its replica reports unhealthy.
    stall_timeout_s: float = Field(default=30.0, ge=1)
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

    @model_validator(mode="after")
    def _admission_follows_the_engine(self) -> "ModelConfig":
        """Admission's unset bounds follow the engine's batch (deployments/admission.py says why)."""
        self.admission = self.admission.sized_for(self.engine_args.max_num_seqs or DEFAULT_ENGINE_SLOTS)
        return self

    @model_validator(mode="after")
    def _auto_tools_need_a_parser(self) -> "ModelConfig":
        if self.enable_auto_tool_choice and not self.tool_call_parser:
            raise ValueError("enable_auto_tool_choice needs tool_call_parser (e.g. hermes, llama3_json, "
                             "qwen3_coder, glm45): the parser that reads this model's tool calls")
        return self

    @model_validator(mode="after")
    def _placement_is_possible(self) -> "ModelConfig":
        expected = expected_num_gpus(self)
        if expected is not None and "num_gpus" in self.model_fields_set and self.num_gpus != expected:
            ea = self.engine_args
            raise ValueError(
                f"num_gpus {self.num_gpus:g} disagrees with engine_args.tensor_parallel_size {ea.tensor_parallel_size}"
                f" x engine_args.pipeline_parallel_size {ea.pipeline_parallel_size} = {expected:g} "
                f"{self.placement.accelerator} workers (placement.accelerator {self.placement.accelerator!r}): "
                f"set num_gpus to {expected:g} or leave it out"
            )
        if "HF_TOKEN" in self.env:
            raise ValueError("env.HF_TOKEN: the Hub token comes from the environment (a Secret), never the config")
        replica_placement(self)  # raises for layouts that cannot work
        return self

    @property
    def name(self) -> str:
        """The served name: `served_model_name`, else `model` (`builtin:` stripped for built-ins)."""
        if self.served_model_name:
            return self.served_model_name
        return self.model.removeprefix("builtin:") if self.model in BUILTIN_MODELS else self.model


class CorsConfig(BaseModel):
    """Cross-origin access for browser clients (chat UIs served from another origin), with vLLM's
    meanings (`vllm serve --allowed-origins ...`).

    Default: no origin is allowed. raygate's demo runs with auth off, and with auth off every
    tenant is `anonymous` and shares one cache scope, so a page from any origin that a visitor opens
    could read answers from a raygate on the visitor's machine or network (and replay other users'
    cached answers). List the origins of the UIs that should call it; `["*"]` allows every origin
    (never together with `allow_credentials`, which browsers refuse)."""

    model_config = ConfigDict(extra="forbid")

    allow_origins: list[str] = Field(default_factory=list)
    allow_methods: list[str] = Field(default_factory=lambda: ["GET", "POST", "OPTIONS"])
    allow_headers: list[str] = Field(default_factory=lambda: [
        "authorization", "content-type", "x-request-id", "x-session-id",
        "x-raygate-priority", "x-raygate-timeout-ms", "x-raygate-deadline"])
    # Response headers a page may read (the cache verdict, which replica answered).
    expose_headers: list[str] = Field(default_factory=lambda: [
        "x-request-id", "x-raygate-cache", "x-raygate-cache-similarity", "x-raygate-replica", "x-raygate-ingress",
        "x-raygate-retries", "retry-after"])
    allow_credentials: bool = False
    max_age_s: int = Field(default=600, ge=0)  # how long a browser may reuse a preflight's answer

    @model_validator(mode="after")
    def _no_wildcard_with_credentials(self) -> "CorsConfig":
        if self.allow_credentials and "*" in self.allow_origins:
            raise ValueError("allow_credentials cannot be used with allow_origins ['*']: list the origins")
        return self


class IngressConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    deployment: DeploymentOptions = Field(default_factory=DeploymentOptions)
    # Bodies larger than this are refused with 413 before they are parsed.
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # Ingress -> LLM replica transport: Serve's gRPC channel (`_by_reference=False`) or Ray actor
    # calls with one object per streamed item. Chosen by measurement (docs/architecture.md): gRPC.
    grpc_handles: bool = True
    # The first model's engine runs inside each ingress replica (no LLM deployment, no gRPC hop for it):
    # the serving layer's per-request cost without the second process (docs/architecture.md, issue 16).
    # The ingress deployment is sized as that model's (num_replicas or autoscaling_config); with more
    # than one replica HAProxy asks IngressRouter (deployments/ingress_router.py) which replica serves
    # each request, by the model's prefix/session/load-aware router. Other models keep their LLM
    # deployments. Not with tensor/pipeline parallelism (a placement group): "auto" (the default)
    # colocates unless the first model needs one; true colocates or refuses such a model; false keeps
    # every model in its own LLM deployment (the graph: docs/architecture.md "The colocated ingress").
    colocate: bool | Literal["auto"] = "auto"
    cors: CorsConfig = Field(default_factory=CorsConfig)
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

    def colocated_model(self) -> Optional[ModelConfig]:
        """The model whose engine runs inside each ingress replica (`ingress.colocate`), or None.

        "auto" colocates the first model unless it needs a placement group (tensor_parallel_size x
        pipeline_parallel_size > 1); true always names it (the app then refuses such a model)."""
        first, mode = self.models[0], self.ingress.colocate
        if mode is False:
            return None
        if mode == "auto" and replica_placement(first).world_size > 1:
            return None
        return first
