"""The serving layer alone: raygate's whole graph with the stand-in engine, its request rate and its CPU.

    python -m bench.layer_alone                          # shipped serve_config.yaml, c=64, three scenarios
    python -m bench.layer_alone --set models.0.streaming.interval_ms=0 --out /tmp/la.json

Why: on a 2-core host the engine and the serving layer share the CPU, so a throughput ratio against
`vllm serve` mixes the two. Here the model is replaced by deployments/stand_in_engine.py (tokens at
a set TTFT and time per token, no compute) behind the same engine protocol, and everything else --
HAProxy, ingress, cache lookups, admission, routing, the Ray hop, SSE framing, Serve's controller
and Ray's daemons -- runs as shipped. A closed-loop client (aiohttp, SCHED_FIFO so that it times
the server and not its own wake-ups) keeps `concurrency` requests in flight, each with a fresh
prompt (so the cache misses, as in `bench.compare`), and the run reports per scenario:

- request/s: the layer's ceiling at that concurrency (the stand-in never makes it wait longer
  than its TTFT + tokens x time per token);
- TTFT p50/p99 and E2E p50 as the client sees them, and failed requests apart;
- CPU ms per request and per streamed chunk for each process group (bench/cpu_account.py), the
  client excluded.

Scenarios: `stream` (64 tokens, streamed with usage), `whole` (64 tokens, not streamed) and
`one-token` (1 token streamed: per-request overhead alone). Before them, `--idle-s` seconds with no
request: the CPU per second each process spends whatever the load (Serve's controller, Ray's
daemons one by one, replicas' background loops), the fixed cost that a request rate divides.
Output: a table and JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any, Optional

import aiohttp
import numpy as np
import yaml

from bench import client_priority, cpu_account
from bench.report import add_out_arg, write_result
from bench.servers import REPO, Raygate

SCENARIOS = {
    "stream": {"stream": True, "max_tokens": 64},
    "whole": {"stream": False, "max_tokens": 64},
    "one-token": {"stream": True, "max_tokens": 1},
}
CLIENT_GROUPS = {"benchmark client"}


def _parse_set(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key] = yaml.safe_load(value)
    return out


async def _one(session: aiohttp.ClientSession, url: str, body: dict) -> dict:
    t0 = time.perf_counter()
    ttft, chunks, status = None, 0, 0
    try:
        async with session.post(url, json=body) as resp:
            status = resp.status
            if body["stream"]:
                async for line in resp.content:
                    if line.startswith(b"data: "):
                        if ttft is None:
                            ttft = time.perf_counter() - t0
                        chunks += 1
            else:
                await resp.read()
                ttft = time.perf_counter() - t0
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        return {"ok": False, "error": type(e).__name__}
    return {"ok": status == 200, "status": status, "ttft": ttft, "e2e": time.perf_counter() - t0, "chunks": chunks}


async def closed_loop(base_url: str, model: str, scenario: dict, concurrency: int, requests: int) -> tuple[list[dict], float]:
    """`requests` requests, `concurrency` at a time, each prompt unique. Returns results and seconds."""
    url = base_url + "/v1/chat/completions"
    counter = iter(range(requests))
    results: list[dict] = []
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        async def worker() -> None:
            for i in counter:
                body = {"model": model, "max_tokens": scenario["max_tokens"], "stream": scenario["stream"],
                        "messages": [{"role": "user", "content": f"request {i} {time.time_ns()}: tell me a story"}]}
                if scenario["stream"]:
                    body["stream_options"] = {"include_usage": True}
                results.append(await _one(session, url, body))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return results, time.perf_counter() - t0


def _pct(values: list[float], q: float) -> Optional[float]:
    return float(np.percentile(values, q)) * 1000 if values else None


def _group_of(label: str) -> str:
    return label.split(": ", 1)[0]


def _by_group(detail: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for label, v in detail.items():
        out[_group_of(label)] = out.get(_group_of(label), 0.0) + v
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def idle_cpu(seconds: float) -> dict[str, float]:
    """CPU ms per second of every process (Ray's daemons named apart) over `seconds` with no request."""
    before = cpu_account.snapshot(detail=True)
    time.sleep(seconds)
    used = cpu_account.diff(before, cpu_account.snapshot(detail=True))
    return {label: 1000 * v / seconds for label, v in used.items() if _group_of(label) not in CLIENT_GROUPS}


def summarize(results: list[dict], seconds: float, cpu: dict[str, float]) -> dict:
    ok = [r for r in results if r["ok"]]
    n = max(len(ok), 1)
    chunks = sum(r["chunks"] for r in ok)
    layer = {g: s for g, s in _by_group(cpu).items() if g not in CLIENT_GROUPS}
    detail = {g: s for g, s in cpu.items() if _group_of(g) not in CLIENT_GROUPS}
    return {
        "completed": len(ok), "failed": len(results) - len(ok), "duration_s": seconds,
        "request_throughput": len(ok) / seconds,
        "median_ttft_ms": _pct([r["ttft"] for r in ok if r["ttft"] is not None], 50),
        "p99_ttft_ms": _pct([r["ttft"] for r in ok if r["ttft"] is not None], 99),
        "median_e2el_ms": _pct([r["e2e"] for r in ok], 50),
        "chunks_per_request": chunks / n,
        "cpu_ms_per_request": {g: 1000 * s / n for g, s in layer.items()},
        "cpu_ms_per_request_detail": {g: 1000 * s / n for g, s in detail.items() if 1000 * s / n >= 0.05},
        "layer_cpu_ms_per_request": 1000 * sum(layer.values()) / n,
        "layer_cpu_ms_per_chunk": (1000 * sum(layer.values()) / chunks) if chunks else None,
    }


def _fmt(v: Optional[float], spec: str = ".1f") -> str:
    return "—" if v is None else format(v, spec)


def main(argv: Optional[list[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "serve_config.yaml"))
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--requests", type=int, default=1500, help="per scenario, after a warm-up of 64")
    ap.add_argument("--ttft-ms", type=float, default=20.0, help="the stand-in engine's time to first token")
    ap.add_argument("--itl-ms", type=float, default=10.0, help="the stand-in engine's time per later token")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--set", action="append", default=[], metavar="DOTTED=YAML",
                    help="override the app's args, e.g. models.0.streaming.interval_ms=0")
    ap.add_argument("--env", action="append", default=[], metavar="K=V", help="environment of the Ray cluster")
    ap.add_argument("--idle-s", type=float, default=30.0, help="seconds of the idle measurement (0: none)")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--client-priority", choices=["fifo", "normal"], default="fifo")
    add_out_arg(ap, "layer_alone")
    args = ap.parse_args(argv)

    overrides = {"models.0.engine": "stand_in", "models.0.stand_in.ttft_ms": args.ttft_ms,
                 "models.0.stand_in.itl_ms": args.itl_ms, **_parse_set(args.set)}
    env = dict(kv.split("=", 1) for kv in args.env)
    out = Path(args.out)
    server = Raygate(Path(args.config), args.port, out.parent / "logs", env=env, label="raygate-stand-in",
                     overrides=overrides)
    model = yaml.safe_load(Path(args.config).read_text())["applications"][0]["args"]["models"][0]
    model_name = model.get("served_model_name") or "tiny-llama"
    report: dict[str, Any] = {
        "stand_in": {"ttft_ms": args.ttft_ms, "itl_ms": args.itl_ms}, "concurrency": args.concurrency,
        "overrides": overrides, "env": env, "scenarios": {},
    }
    print(f"starting raygate with the stand-in engine ({args.ttft_ms} ms TTFT, {args.itl_ms} ms/token) ...", flush=True)
    server.start()
    try:
        if args.idle_s > 0:
            time.sleep(10)  # start-up's own work (warm-up requests, the first metrics) settles
            report["idle_cpu_ms_per_s"] = idle_cpu(args.idle_s)
            print(f"  idle: {sum(report['idle_cpu_ms_per_s'].values()):.0f} ms of CPU per second", flush=True)
        report["client"] = client_priority.prioritise(args.client_priority)
        for name in args.scenarios.split(","):
            scenario = SCENARIOS[name]
            asyncio.run(closed_loop(server.base_url, model_name, scenario, args.concurrency, 64))  # warm-up
            time.sleep(2)
            before = cpu_account.snapshot(detail=True)
            results, seconds = asyncio.run(closed_loop(server.base_url, model_name, scenario, args.concurrency,
                                                       args.requests))
            cpu = cpu_account.diff(before, cpu_account.snapshot(detail=True))
            report["scenarios"][name] = summarize(results, seconds, cpu)
            s = report["scenarios"][name]
            print(f"  {name}: {s['request_throughput']:.1f} req/s, layer CPU {s['layer_cpu_ms_per_request']:.1f} ms/request, "
                  f"failed {s['failed']}", flush=True)
        client_priority.restore()
    finally:
        server.stop()

    print(f"\nraygate with the stand-in engine ({args.ttft_ms:.0f} ms TTFT, {args.itl_ms:.0f} ms/token), "
          f"closed loop, concurrency {args.concurrency}, {args.requests} requests per scenario")
    hdr = f"{'scenario':<11}{'req/s':>8}{'TTFT p50':>10}{'TTFT p99':>10}{'E2E p50':>9}{'chunks':>8}{'failed':>7}{'CPU ms/req':>11}{'ms/chunk':>9}"
    print(hdr)
    print("-" * len(hdr))
    for name, s in report["scenarios"].items():
        print(f"{name:<11}{s['request_throughput']:>8.1f}{_fmt(s['median_ttft_ms']):>10}{_fmt(s['p99_ttft_ms']):>10}"
              f"{_fmt(s['median_e2el_ms'], '.0f'):>9}{s['chunks_per_request']:>8.1f}{s['failed']:>7}"
              f"{s['layer_cpu_ms_per_request']:>11.1f}{_fmt(s['layer_cpu_ms_per_chunk'], '.2f'):>9}")
    print("\nCPU ms per request by process group (the client excluded):")
    for name, s in report["scenarios"].items():
        parts = ", ".join(f"{g} {v:.1f}" for g, v in sorted(s["cpu_ms_per_request"].items(), key=lambda kv: -kv[1])
                          if v >= 0.2)
        print(f"  {name}: {parts}")
    if "idle_cpu_ms_per_s" in report:
        idle = report["idle_cpu_ms_per_s"]
        print(f"\nIdle, no request ({args.idle_s:.0f} s): {sum(idle.values()):.0f} ms of CPU per second")
        for label, v in idle.items():
            if v >= 0.5:
                print(f"  {label:<45}{v:>8.1f}")
    write_result(out, report, "bench.layer_alone", argv)
    return report


if __name__ == "__main__":
    main()
