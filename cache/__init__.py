"""The semantic cache: exact and meaning-level hits on plain Redis/Valkey; see docs/architecture.md.

keys.py decides what may answer what (scopes), guards.py rejects look-alikes, store.py is the Redis
layout, vector_index.py/embedder.py/matching.py the meaning-level search, service.py the
SemanticCache deployment, client.py the ingress's side (exact path, coalescing, write-back).
responses.py frames a stored answer as the hitting request asks and folds a live stream back into
one; config.py holds the settings and per-request options, lexicon.py the WordNet table guards.py
reads, onnx_encoder.py the embedder's ONNX runtime, metrics.py the counters, embedded_redis.py the
Valkey started when no redis_url is given.
"""
