"""Does prefix-aware routing pay off? raygate's router against Serve's default router, 2 replicas each.

    python -m bench.routing                  # 8 system prompts x 8 users x 4 turns, concurrency 8
    python -m bench.routing --repeats 3      # 3 rounds over both contenders; medians reported

Workload: `--system-prompts` system prompts of about `--system-tokens` tokens; each has
`--users` users holding a `--turns`-turn conversation (each turn sends the whole conversation so
far, with the model's earlier answers, as a chat client does). Users take turns round-robin, so
consecutive requests rarely share a conversation -- the access pattern that defeats an LRU cache
unless requests with one prefix meet on one replica. Requests are streamed at a fixed concurrency
(`--max-tokens` output tokens, ignore_eos) with the cache off.

Each contender is `serve run serve_config.yaml` with the LLM deployment at `--replicas` replicas and
`--kv-blocks` KV-cache blocks per replica (vLLM's num_gpu_blocks_override: a GPU's KV cache holds a
few conversations, not all of them; the default 1 GiB here would hold every prompt of the
workload on every replica and hide the difference). Measured per contender: the engines' own
prefix-cache counters (hit rate = cached tokens / prompt tokens, summed over replicas), TTFT and
E2E percentiles, and each replica's share of requests. Printed side by side; JSON in `--out`.
With `--repeats N` the contenders take N rounds, their order reversed on odd rounds (single rounds
on this shared host read TTFT ratios from 0.50x to 1.04x); each figure is the median over rounds,
and every round is kept, with each round's ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from bench.report import add_out_arg, write_result
from bench.servers import REPO, Raygate, add_model_arg, config_for_model, free_port

CONTENDERS = {
    "raygate-router": {},  # serve_config.yaml's request_router_config
    "serve-default": {"models.0.deployment.request_router_config": None},  # Serve's power of two choices
}
_WORDS = ("signal ticket refund delay platform station timetable carriage conductor freight junction "
          "express local weekday weekend holiday luggage bicycle accessible quiet dining sleeper border "
          "customs passport coupon season fare reserve cancel connection transfer").split()


def system_prompt(i: int, tokens: int, rng: random.Random) -> str:
    words = [rng.choice(_WORDS) for _ in range(tokens)]  # ~1 token per word with this tokenizer
    return f"System prompt {i}. You are assistant number {i}. Rules: " + " ".join(words)


def build_users(n_prompts: int, users: int, tokens: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    prompts = [system_prompt(i, tokens, rng) for i in range(n_prompts)]
    out = [{"system": prompts[p], "name": f"user-{p}-{u}", "history": []} for p in range(n_prompts) for u in range(users)]
    rng.shuffle(out)
    return out


async def drive(base_url: str, model: str, users: list[dict], turns: int, concurrency: int,
                max_tokens: int) -> dict:
    import httpx

    queue: collections.deque = collections.deque((u, 0) for u in users)
    records: list[dict] = []
    errors = 0

    async def one_turn(client: httpx.AsyncClient, user: dict, turn: int) -> None:
        nonlocal errors
        messages = [{"role": "system", "content": user["system"]}] + user["history"] + [
            {"role": "user", "content": f"{user['name']} asks question {turn}: what about {random.choice(_WORDS)}?"}]
        body = {"model": model, "messages": messages, "max_tokens": max_tokens, "ignore_eos": True,
                "stream": True, "cache": {"mode": "off"}}
        t0 = time.perf_counter()
        ttft, text = None, []
        try:
            async with client.stream("POST", base_url + "/v1/chat/completions", json=body) as r:
                if r.status_code != 200:
                    errors += 1
                    return
                replica = r.headers.get("x-raygate-replica", "?")
                async for line in r.aiter_lines():
                    if not line.startswith("data: {"):
                        continue
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                    for choice in json.loads(line[6:]).get("choices", []):
                        text.append(choice.get("delta", {}).get("content") or "")
        except httpx.HTTPError:
            errors += 1
            return
        user["history"] = messages[1:] + [{"role": "assistant", "content": "".join(text)}]
        records.append({"ttft": ttft, "e2e": time.perf_counter() - t0, "replica": replica})

    async def worker(client: httpx.AsyncClient) -> None:
        while queue:
            user, turn = queue.popleft()
            await one_turn(client, user, turn)
            if turn + 1 < turns:
                queue.append((user, turn + 1))

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency)) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    duration = time.perf_counter() - start
    ttft = np.array([r["ttft"] for r in records]) * 1000
    e2e = np.array([r["e2e"] for r in records]) * 1000
    shares = collections.Counter(r["replica"] for r in records)
    return {
        "completed": len(records), "errors": errors, "duration_s": duration,
        "request_throughput": len(records) / duration,
        "p50_ttft_ms": float(np.percentile(ttft, 50)), "p90_ttft_ms": float(np.percentile(ttft, 90)),
        "p99_ttft_ms": float(np.percentile(ttft, 99)),
        "p50_e2el_ms": float(np.percentile(e2e, 50)), "p99_e2el_ms": float(np.percentile(e2e, 99)),
        "replica_shares": {k: v / len(records) for k, v in shares.most_common()},
    }


def _engine_counters_here(model: str, replicas: int, attempts: int = 200) -> dict[str, dict]:
    import ray
    from ray import serve

    from deployments.config import llm_deployment_name

    ray.init(address="auto", log_to_driver=False, logging_level="ERROR")
    handle = serve.get_deployment_handle(llm_deployment_name(model), app_name="raygate")
    seen: dict[str, dict] = {}
    for _ in range(attempts):
        stats = handle.engine_stats.remote().result()
        seen[stats["replica"]] = stats
        if len(seen) >= replicas:
            return seen
    raise RuntimeError(f"only {len(seen)} of {replicas} replicas answered")


def engine_counters(model: str, replicas: int) -> dict[str, dict]:
    """Each replica's engine counters, read through a DeploymentHandle (called until every replica
    answered) in a short-lived process: a handle's router outlives `ray.shutdown()` in its process
    and would keep probing the stopped contender's replicas during the next run."""
    errors = []
    for _ in range(3):  # on a loaded host the handle's first call can time out (a 3rd round once lost so)
        out = subprocess.run([sys.executable, "-c", "import json, sys; from bench.routing import _engine_counters_here; "
                              "print(json.dumps(_engine_counters_here(sys.argv[1], int(sys.argv[2]))))",
                              model, str(replicas)], capture_output=True, text=True, cwd=str(REPO))
        if out.returncode == 0:
            return json.loads(out.stdout.strip().splitlines()[-1])
        errors.append(out.stderr.strip().splitlines()[-1:] or [f"exit {out.returncode}"])
        time.sleep(5)
    raise RuntimeError(f"engine counters unreadable after 3 tries: {errors}")


def hit_rate(before: dict[str, dict], after: dict[str, dict]) -> float:
    hits = sum(after[r]["prefix_cache_hits"] - before.get(r, {}).get("prefix_cache_hits", 0) for r in after)
    queries = sum(after[r]["prefix_cache_queries"] - before.get(r, {}).get("prefix_cache_queries", 0) for r in after)
    return hits / queries if queries else 0.0


SUMMED = ("completed", "errors")  # counted over all rounds; every other figure is a median


def median_of_rounds(rounds: list[dict]) -> dict:
    """One contender's figures over rounds: `completed`/`errors` summed, each other number the
    median over rounds, `max_replica_share` the median of each round's largest share, and the
    rounds themselves under `rounds`. Raises ValueError on no rounds."""
    if not rounds:
        raise ValueError("no rounds")
    out: dict = {k: sum(r[k] for r in rounds) for k in SUMMED}
    for k, v in rounds[0].items():
        if k not in SUMMED and isinstance(v, (int, float)):
            out[k] = statistics.median(r[k] for r in rounds)
    out["max_replica_share"] = statistics.median(max(r["replica_shares"].values()) for r in rounds)
    out["rounds"] = rounds
    return out


def main(argv: Optional[list[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, default=REPO / "serve_config.yaml")
    add_model_arg(p, default="builtin:tiny-llama")  # the serving layer's cost, not the model's
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--system-prompts", type=int, default=8)
    p.add_argument("--system-tokens", type=int, default=1000)
    p.add_argument("--users", type=int, default=8, help="users per system prompt")
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--kv-blocks", type=int, default=48,
                   help="KV-cache blocks (128 tokens on CPU) per replica; 0: vLLM's default (1 GiB)")
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1, help="rounds over all contenders (medians reported)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override an app arg")
    add_out_arg(p, "routing")
    args = p.parse_args(argv)
    args.config = config_for_model(Path(args.config), args.model)
    import yaml

    from deployments.config import AppConfig

    model = AppConfig.model_validate(yaml.safe_load(args.config.read_text())["applications"][0]["args"]).models[0].name
    results: dict = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    n_requests = args.system_prompts * args.users * args.turns
    from transformers import AutoTokenizer

    from deployments.demo_model import ensure_demo_model

    tokens = len(AutoTokenizer.from_pretrained(str(ensure_demo_model()))(
        system_prompt(0, args.system_tokens, random.Random(args.seed)))["input_ids"])
    results["system_prompt_tokens"] = tokens
    print(f"workload: {args.system_prompts} system prompts x {tokens} tokens, {args.users} users each, "
          f"{args.turns} turns = {n_requests} requests; concurrency {args.concurrency}; {args.replicas} replicas",
          flush=True)
    log_dir = REPO / "bench" / "results" / "logs"
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    rounds: dict[str, list[dict]] = collections.defaultdict(list)
    order = args.contenders.split(",")
    for rnd, label in [(r, lbl) for r in range(args.repeats) for lbl in (order[::-1] if r % 2 else order)]:
        overrides = {"models.0.deployment.num_replicas": args.replicas,
                     "models.0.deployment.autoscaling_config": None, "cache.enabled": False,
                     "models.0.num_cpus": round(1.8 / args.replicas, 2),  # Ray reservations on a 2-core host
                     "models.0.admission.max_inflight_per_replica": 256, "models.0.admission.max_queued": 1024,
                     # The LLM deployment's replicas, whose engine counters are read through a handle.
                     "ingress.colocate": False,
                     **CONTENDERS[label], **dict(kv.split("=", 1) for kv in args.set)}
        if args.kv_blocks:
            overrides["models.0.engine_args.num_gpu_blocks_override"] = args.kv_blocks
        srv = Raygate(args.config, free_port(), log_dir, label=label, overrides=overrides)
        print(f"[round {rnd + 1}/{args.repeats}] starting {label} ...", flush=True)
        srv.start()
        try:
            before = engine_counters(model, args.replicas)
            users = build_users(args.system_prompts, args.users, args.system_tokens, args.seed)
            run = asyncio.run(drive(srv.base_url, model, users, args.turns, args.concurrency, args.max_tokens))
            run["prefix_cache_hit_rate"] = hit_rate(before, engine_counters(model, args.replicas))
            rounds[label].append(run)
            # every finished round on disk: a later round's failure must not lose the earlier ones
            write_result(args.out, {**results, "partial": True, "rounds_so_far": dict(rounds)}, "bench.routing", argv)
        finally:
            srv.stop()
        print(f"  hit rate {run['prefix_cache_hit_rate']:.1%}, TTFT p50 {run['p50_ttft_ms']:.0f} ms, "
              f"p99 {run['p99_ttft_ms']:.0f} ms, {run['request_throughput']:.2f} req/s, errors {run['errors']}, "
              f"shares {[round(s, 3) for s in run['replica_shares'].values()]}", flush=True)
    for label, runs in rounds.items():
        results[label] = median_of_rounds(runs)
    labels = [lbl for lbl in args.contenders.split(",") if lbl in results]
    if args.repeats > 1:
        print(f"\nmedians of {args.repeats} rounds (errors: summed)")
    print(f"\n{'contender':<16}{'prefix hit':>11}{'TTFT p50':>10}{'TTFT p99':>10}{'E2E p50':>9}{'req/s':>8}"
          f"{'max share':>11}{'errors':>8}")
    for label in labels:
        r = results[label]
        print(f"{label:<16}{r['prefix_cache_hit_rate']:>10.1%}{r['p50_ttft_ms']:>9.0f}ms{r['p99_ttft_ms']:>8.0f}ms"
              f"{r['p50_e2el_ms']:>7.0f}ms{r['request_throughput']:>8.2f}{r['max_replica_share']:>10.1%}"
              f"{r['errors']:>8}")
    if {"raygate-router", "serve-default"} <= set(results):
        ours, base = results["raygate-router"], results["serve-default"]
        results["hit_rate_ratio"] = ours["prefix_cache_hit_rate"] / max(base["prefix_cache_hit_rate"], 1e-9)
        results["ttft_p50_ratio"] = ours["p50_ttft_ms"] / base["p50_ttft_ms"]
        results["ratios_by_round"] = [
            {"hit_rate": o["prefix_cache_hit_rate"] / max(b["prefix_cache_hit_rate"], 1e-9),
             "ttft_p50": o["p50_ttft_ms"] / b["p50_ttft_ms"]} for o, b in zip(ours["rounds"], base["rounds"])]
        print(f"raygate / serve default: prefix hit rate {results['hit_rate_ratio']:.2f}x (target >= 2), "
              f"TTFT p50 {results['ttft_p50_ratio']:.2f}x (target <= 0.7), "
              f"max replica share {ours['max_replica_share']:.1%} (target <= 65%)")
    write_result(args.out, results, "bench.routing", argv)
    return results


if __name__ == "__main__":
    main()
