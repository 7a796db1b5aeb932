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
import json
import os
import random
import time
from pathlib import Path
from typing import Optional

import numpy as np

from bench import client_priority
from bench.report import add_out_arg, write_result
from bench.servers import REPO, Raygate, add_model_arg, config_for_model, free_port


def _body(model: str, i: int, max_tokens: int) -> dict:
    return {"model": model, "max_tokens": max_tokens, "ignore_eos": True, "cache": {"mode": "off"},
            "messages": [{"role": "user", "content": f"request {i}: summarise the history of the steam engine "
                                                     "in a few sentences, with dates and names."}]}


async def _send(session, url: str, body: dict, priority: str, planned: Optional[float] = None) -> dict:
    import aiohttp

    t0 = time.perf_counter()
    try:
        async with session.post(url, json=body, headers={"x-raygate-priority": priority}) as r:
            await r.read()
            status, retry_after = r.status, r.headers.get("retry-after")
            refused_by = r.headers.get("x-raygate-refused-by", "ingress") if status in (429, 503) else None
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        status, retry_after, refused_by = f"transport error: {type(e).__name__}", None, None
    return {"status": status, "latency": time.perf_counter() - t0, "retry_after": retry_after, "priority": priority,
            "refused_by": refused_by, "send_lag": t0 - planned if planned is not None else 0.0}


def _session(timeout_s: float):
    """aiohttp, as `vllm bench serve` uses, with no connection limit: every request is sent when due."""
    import aiohttp

    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                 timeout=aiohttp.ClientTimeout(total=timeout_s))


async def closed_loop(url: str, model: str, concurrency: int, seconds: float, max_tokens: int) -> float:
    done = 0
    end = time.perf_counter() + seconds
    async with _session(120) as client:
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
                  seed: int) -> tuple[list[dict], float]:
    """Every response of an open loop of Poisson arrivals, and the client's own CPU share meanwhile
    (near 1.0 would mean the load generator, not the server, sets the latencies)."""
    rng = random.Random(seed)
    levels, weights = zip(*mix.items())
    tasks = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    async with _session(300) as client:
        start = time.perf_counter()
        t, i = 0.0, 0
        while t < seconds:
            t += rng.expovariate(rate)
            delay = start + t - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_send(client, url, _body(model, i, max_tokens),
                                                   rng.choices(levels, weights)[0], planned=start + t)))
            i += 1
        records = list(await asyncio.gather(*tasks))
    return records, (time.process_time() - cpu0) / (time.perf_counter() - wall0)


_PROBE = """
import asyncio, json, sys, time
async def main(seconds):
    lags, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        await asyncio.sleep(0.005)
        lags.append((time.perf_counter() - t - 0.005) * 1000)
    lags.sort()
    print(json.dumps({"samples": len(lags), "p50_ms": lags[len(lags) // 2], "p99_ms": lags[int(len(lags) * 0.99)],
                      "max_ms": lags[-1]}))
asyncio.run(main(float(sys.argv[1])))
"""


def _wakeup_probe(seconds: float):
    """A normal-priority process that sleeps 5 ms at a time and records how late it wakes: what any
    process without special priority (a client, HAProxy, the ingress) meets on this host meanwhile."""
    import subprocess
    import sys

    def normal_policy():
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))

    return subprocess.Popen([sys.executable, "-c", _PROBE, str(seconds)], stdout=subprocess.PIPE, text=True,
                            preexec_fn=normal_policy)


def _probe_result(proc) -> dict:
    out, _ = proc.communicate(timeout=60)
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": out[-200:]}


def summarise(records: list[dict], offered_rate: float, client_cpu_share: float) -> dict:
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
        "refused_by": dict(collections.Counter(r["refused_by"] for r in refused if r["refused_by"])),
        "refusal_p99_ms_by": {k: float(np.percentile([r["latency"] for r in refused if r["refused_by"] == k], 99) * 1000)
                              for k in {r["refused_by"] for r in refused if r["refused_by"]}},
        "accepted_p50_ms": float(np.percentile(lat_ok, 50)), "accepted_p99_ms": float(np.percentile(lat_ok, 99)),
        "refusal_p50_ms": float(np.percentile(lat_ref, 50)), "refusal_p99_ms": float(np.percentile(lat_ref, 99)),
        "by_priority": by_priority,
        "client_send_lag_p50_ms": float(np.percentile([r["send_lag"] for r in records], 50) * 1000),
        "client_send_lag_p99_ms": float(np.percentile([r["send_lag"] for r in records], 99) * 1000),
        "client_cpu_share": client_cpu_share,
    }


def main(argv: Optional[list[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, default=REPO / "serve_config.yaml")
    add_model_arg(p, default="builtin:tiny-llama")  # the serving layer's cost, not the model's
    p.add_argument("--capacity-seconds", type=float, default=30)
    p.add_argument("--unloaded", type=float, default=0.5, help="unloaded phase: this fraction of capacity")
    p.add_argument("--unloaded-seconds", type=float, default=30)
    p.add_argument("--overload", type=float, default=3.0, help="overload phase: this multiple of capacity")
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--mix", default="high=0.2,normal=0.5,low=0.3")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override an app arg")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="a Serve controller environment variable, e.g. RAYGATE_FRONT_DOOR_MAXCONN=24")
    p.add_argument("--client-priority", choices=("fifo", "normal"), default="fifo",
                   help="fifo: the load generator runs SCHED_FIFO once the server is up (see bench/client_priority.py)")
    add_out_arg(p, "overload")
    args = p.parse_args(argv)
    args.config = config_for_model(Path(args.config), args.model)
    import httpx
    import yaml

    from deployments.config import AppConfig

    app_args = yaml.safe_load(args.config.read_text())["applications"][0]["args"]
    srv = Raygate(args.config, free_port(), REPO / "bench" / "results" / "logs", label="raygate-overload",
                  overrides={"cache.enabled": False, **dict(kv.split("=", 1) for kv in args.set)},
                  settings={f"controller_options.runtime_env.env_vars.{name}": json.dumps(value)  # stays a string
                            for name, value in (kv.split("=", 1) for kv in args.env)})
    model = AppConfig.model_validate(app_args).models[0].name
    mix = {k: float(v) for k, v in (kv.split("=") for kv in args.mix.split(","))}
    results: dict = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    print("starting raygate ...", flush=True)
    srv.start()
    results["client_scheduling"] = client_priority.prioritise(args.client_priority)
    url = srv.base_url + "/v1/chat/completions"
    try:
        bound = httpx.get(srv.base_url + "/admin/models", timeout=30).json()["models"][model]["admission"]["capacity"]
        capacity = asyncio.run(closed_loop(url, model, bound, args.capacity_seconds, args.max_tokens))
        results["capacity_rps"] = capacity
        print(f"capacity: {capacity:.2f} req/s at concurrency {bound} (the admission bound)", flush=True)
        unloaded, cpu = asyncio.run(poisson(url, model, args.unloaded * capacity, args.unloaded_seconds,
                                            args.max_tokens, {"normal": 1.0}, args.seed))
        results["unloaded"] = summarise(unloaded, args.unloaded * capacity, cpu)
        print(f"unloaded ({args.unloaded:g}x): p99 {results['unloaded']['accepted_p99_ms']:.0f} ms, "
              f"statuses {results['unloaded']['statuses']}", flush=True)
        probe = _wakeup_probe(min(args.seconds, 30))
        overload, cpu = asyncio.run(poisson(url, model, args.overload * capacity, args.seconds, args.max_tokens, mix,
                                            args.seed + 1))
        results["overload"] = o = summarise(overload, args.overload * capacity, cpu)
        results["host_wakeup_lag"] = _probe_result(probe)
        health = httpx.get(srv.base_url + "/health", timeout=30)
        results["healthy_after"] = health.status_code == 200
    finally:
        srv.stop()
    u = results["unloaded"]
    results["accepted_p99_ratio"] = o["accepted_p99_ms"] / u["accepted_p99_ms"]
    print(f"\noverload {args.overload:g}x capacity for {args.seconds:g} s: {o['sent']} sent, statuses {o['statuses']}")
    print(f"{'':<34}{'measured':>12}{'target':>12}")
    print(f"{'refusals without 429/503+Retry-After':<34}{o['refusals_not_429_503_with_retry_after']:>12}{'0':>12}")
    print(f"{'refused by (p99 ms)':<34}" + (", ".join(f"{k} {v} ({o['refusal_p99_ms_by'][k]:.0f})"
                                                      for k, v in sorted(o["refused_by"].items())) or "-"))
    print(f"{'time to refuse p99':<34}{o['refusal_p99_ms']:>10.1f}ms{'<= 50 ms':>12}")
    print(f"{'accepted p99 / unloaded p99':<34}{results['accepted_p99_ratio']:>11.2f}x{'<= 2x':>12}"
          f"   ({o['accepted_p99_ms']:.0f} / {u['accepted_p99_ms']:.0f} ms)")
    for level, s in o["by_priority"].items():
        target = ">= 99%" if level == "high" else ""
        print(f"{'success, ' + level:<34}{s['success_rate']:>11.1%} {target:>11}   ({s['succeeded']}/{s['sent']})")
    print(f"{'healthy afterwards':<34}{str(results['healthy_after']):>12}")
    print(f"{'client: send lag p99, CPU share':<34}{o['client_send_lag_p99_ms']:>10.1f}ms{o['client_cpu_share']:>11.0%}"
          f"   ({results['client_scheduling']})")
    lag = results["host_wakeup_lag"]
    if "p99_ms" in lag:
        print(f"{'host: a normal process wakes late':<34}{lag['p99_ms']:>10.1f}ms (p99; max {lag['max_ms']:.0f} ms)")
    write_result(args.out, results, "bench.overload", argv)
    return results


if __name__ == "__main__":
    main()
