"""The semantic cache: exact and meaning-level hits on plain Redis/Valkey; see docs/architecture.md.

keys.py decides what may answer what (scopes), guards.py rejects look-alikes, store.py is the Redis
layout, vector_index.py/embedder.py/matching.py the meaning-level search, service.py the
SemanticCache deployment, client.py the ingress's side (exact path, coalescing, write-back).
"""
