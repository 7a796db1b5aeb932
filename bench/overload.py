"""Overload: offered load at 3x capacity for 60 s. Does raygate answer or refuse, fast, and keep
accepted requests and high-priority traffic healthy?

    python -m bench.overload                   # capacity, then 50% load, then 300% load for 60 s

Three phases against one `serve run serve_config.yaml` (cache off, so every request needs the model):
1. capacity: a closed loop at the admission bound's concurrency measures the requests/s C the model
   sustains with this request shape;
2. unloaded: Poisson arrivals at `--unloaded` x C; its latency p99 is the reference;
3. overload: Poisson arrivals at `--overload` x C for `--seconds`, priorities mixed
   (`--mix`, default 20% high / 50% normal / 30% low via `x-raygate-priority`).
Reported: every response's status; refusals without `Retry-After` or with another status than
429/503 (must be 0); time to refuse p50/p99; accepted requests' latency p99 against the unloaded
p99; success rate per priority; whether the server still answers /health afterwards. JSON in `--out`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import time
from pathlib import Path
from typing import Optional

import numpy as np

from bench.report import write_json
from bench.servers import REPO, Raygate, free_port


def _body(model: str, i: int, max_tokens: int) -> dict:
    return {"model": model, "max_tokens": max_tokens, "ignore_eos": True, "cache": {"mode": "off"},
            "messages": [{"role": "user", "content": f"request {i}: summarise the history of the steam engine "
                                                     "in a few sentences, with dates and names."}]}


async def _send(client, url: str, body: dict, priority: str) -> dict:
    import httpx

    t0 = time.perf_counter()
    try:
        r = await client.post(url, json=body, headers={"x-raygate-priority": priority})
        status, retry_after = r.status_code, r.headers.get("retry-after")
    except httpx.HTTPError as e:
        status, retry_after = f"transport error: {type(e).__name__}", None
    return {"status": status, "latency": time.perf_counter() - t0, "retry_after": retry_after, "priority": priority}


async def closed_loop(url: str, model: str, concurrency: int, seconds: float, max_tokens: int) -> float:
    import httpx

    done = 0
    end = time.perf_counter() + seconds
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker(w):
            nonlocal done
            i = 0
            while time.perf_counter() < end:
                rec = await _send(client, url, _body(model, w * 100000 + i, max_tokens), "normal")
                i += 1
                if rec["status"] == 200:
                    done += 1
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return done / (time.perf_counter() - t0)


async def poisson(url: str, model: str, rate: float, seconds: float, max_tokens: int, mix: dict[str, float],
                  seed: int) -> list[dict]:
    import httpx

    rng = random.Random(seed)
    levels, weights = zip(*mix.items())
    tasks = []
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=4096)) as client:
        start = time.perf_counter()
        t, i = 0.0, 0
        while t < seconds:
            t += rng.expovariate(rate)
            delay = start + t - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_send(client, url, _body(model, i, max_tokens),
                                                   rng.choices(levels, weights)[0])))
            i += 1
        return list(await asyncio.gather(*tasks))


def summarise(records: list[dict], offered_rate: float) -> dict:
    ok = [r for r in records if r["status"] == 200]
    refused = [r for r in records if r["status"] != 200]
    bad = [r for r in refused if r["status"] not in (429, 503) or not r["retry_after"]]
    by_priority = {}
    for level in sorted({r["priority"] for r in records}):
        mine = [r for r in records if r["priority"] == level]
        by_priority[level] = {"sent": len(mine), "succeeded": sum(r["status"] == 200 for r in mine),
                              "success_rate": sum(r["status"] == 200 for r in mine) / len(mine)}
    lat_ok = np.array([r["latency"] for r in ok]) * 1000 if ok else np.array([np.nan])
    lat_ref = np.array([r["latency"] for r in refused]) * 1000 if refused else np.array([np.nan])
    return {
        "offered_rate": offered_rate, "sent": len(records), "succeeded": len(ok),
        "statuses": {str(k): v for k, v in collections.Counter(r["status"] for r in records).items()},
        "refusals_not_429_503_with_retry_after": len(bad),
        "accepted_p50_ms": float(np.percentile(lat_ok, 50)), "accepted_p99_ms": float(np.percentile(lat_ok, 99)),
        "refusal_p50_ms": float(np.percentile(lat_ref, 50)), "refusal_p99_ms": float(np.percentile(lat_ref, 99)),
        "by_priority": by_priority,
    }


def main(argv: Optional[list[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, default=REPO / "serve_config.yaml")
    p.add_argument("--capacity-seconds", type=float, default=30)
    p.add_argument("--unloaded", type=float, default=0.5, help="unloaded phase: this fraction of capacity")
    p.add_argument("--unloaded-seconds", type=float, default=30)
    p.add_argument("--overload", type=float, default=3.0, help="overload phase: this multiple of capacity")
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--mix", default="high=0.2,normal=0.5,low=0.3")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override an app arg")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "overload.json")
    args = p.parse_args(argv)
    import httpx
    import yaml

    from deployments.config import AppConfig

    app_args = yaml.safe_load(args.config.read_text())["applications"][0]["args"]
    srv = Raygate(args.config, free_port(), REPO / "bench" / "results" / "logs", label="raygate-overload",
                  overrides={"cache.enabled": False, **dict(kv.split("=", 1) for kv in args.set)})
    model = AppConfig.model_validate(app_args).models[0].name
    mix = {k: float(v) for k, v in (kv.split("=") for kv in args.mix.split(","))}
    results: dict = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    print("starting raygate ...", flush=True)
    srv.start()
    url = srv.base_url + "/v1/chat/completions"
    try:
        bound = httpx.get(srv.base_url + "/admin/models", timeout=30).json()["models"][model]["admission"]["capacity"]
        capacity = asyncio.run(closed_loop(url, model, bound, args.capacity_seconds, args.max_tokens))
        results["capacity_rps"] = capacity
        print(f"capacity: {capacity:.2f} req/s at concurrency {bound} (the admission bound)", flush=True)
        unloaded = asyncio.run(poisson(url, model, args.unloaded * capacity, args.unloaded_seconds, args.max_tokens,
                                       {"normal": 1.0}, args.seed))
        results["unloaded"] = summarise(unloaded, args.unloaded * capacity)
        print(f"unloaded ({args.unloaded:g}x): p99 {results['unloaded']['accepted_p99_ms']:.0f} ms, "
              f"statuses {results['unloaded']['statuses']}", flush=True)
        overload = asyncio.run(poisson(url, model, args.overload * capacity, args.seconds, args.max_tokens, mix,
                                       args.seed + 1))
        results["overload"] = o = summarise(overload, args.overload * capacity)
        health = httpx.get(srv.base_url + "/health", timeout=30)
        results["healthy_after"] = health.status_code == 200
    finally:
        srv.stop()
    u = results["unloaded"]
    results["accepted_p99_ratio"] = o["accepted_p99_ms"] / u["accepted_p99_ms"]
    print(f"\noverload {args.overload:g}x capacity for {args.seconds:g} s: {o['sent']} sent, statuses {o['statuses']}")
    print(f"{'':<34}{'measured':>12}{'target':>12}")
    print(f"{'refusals without 429/503+Retry-After':<34}{o['refusals_not_429_503_with_retry_after']:>12}{'0':>12}")
    print(f"{'time to refuse p99':<34}{o['refusal_p99_ms']:>10.1f}ms{'<= 50 ms':>12}")
    print(f"{'accepted p99 / unloaded p99':<34}{results['accepted_p99_ratio']:>11.2f}x{'<= 2x':>12}"
          f"   ({o['accepted_p99_ms']:.0f} / {u['accepted_p99_ms']:.0f} ms)")
    for level, s in o["by_priority"].items():
        target = ">= 99%" if level == "high" else ""
        print(f"{'success, ' + level:<34}{s['success_rate']:>11.1%} {target:>11}   ({s['succeeded']}/{s['sent']})")
    print(f"{'healthy afterwards':<34}{str(results['healthy_after']):>12}")
    write_json(args.out, results)
    return results


if __name__ == "__main__":
    main()
