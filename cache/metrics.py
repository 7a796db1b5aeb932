"""The cache's Prometheus series, exported through Ray's metrics agent (`ray_raygate_cache_*`)."""

from __future__ import annotations

from ray.util.metrics import Counter, Gauge, Histogram

LOOKUPS = Counter(
    "raygate_cache_lookups",
    description="Cache lookups by result: hit_exact, hit_semantic, miss, bypass (Redis slow or down), "
                "coalesced (served by an identical request in flight), off (not cacheable).",
    tag_keys=("result",),
)
LOOKUP_SECONDS = Histogram(
    "raygate_cache_lookup_seconds",
    description="Time of one semantic lookup in a cache replica (embedding, search, guards, fetch).",
    boundaries=[0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0],
)
EMBED_BATCH_SIZE = Histogram(
    "raygate_cache_embed_batch_size",
    description="Texts per embedding forward pass (@serve.batch).",
    boundaries=[1, 2, 4, 8, 16, 32, 64],
)
ENTRIES = Gauge("raygate_cache_entries", description="Entries in this cache replica's vector index.")
GUARD_REJECTIONS = Counter(
    "raygate_cache_guard_rejections",
    description="Semantic neighbours above the threshold rejected by a detail check, by reason.",
    tag_keys=("reason",),
)
