"""raygate against the servers a user would pick instead, on the same model, in one run.

    python -m bench                                   # small defaults (~10 min): 4 contenders x 3 workloads
    python -m bench --repeats 2                       # two rounds, medians (what docs/benchmarks.md shows)
    python -m bench --full                            # 4x the requests
    python -m bench --contenders raygate,vllm-serve --workloads random
    python -m bench --contenders raygate,raygate-nocache   # what the semantic cache costs or saves
    python -m bench --sweep-concurrency 1,4,16,32,64  # throughput against concurrency (random workload)
    python -m bench --sweep-rate 2,4,8,16             # latency against offered load (Poisson arrivals)
    python -m bench --ablation                        # naive -> +batching -> +streaming -> +routing -> +cache
    python -m bench --sweep-batch 8:0.005,32:0.01,64:0.02   # raygate's @serve.batch settings

Contenders, each started fresh and stopped before the next (never two at once on a small host):
`raygate` (`serve run serve_config.yaml`), `vllm-serve` (vLLM's OpenAI server), `ray-serve-llm`
(Ray Serve LLM's `build_openai_app`) and `naive` (bench/naive_server.py: transformers, one request
at a time, no streaming, no cache). Workloads (bench/workloads.py): `random` (raygate's cache off,
per request), `shared-prefix` multi-turn chats and `repeat-heavy` questions with rewordings. Every
contender gets the same conversations, at a fixed concurrency (closed loop) or Poisson arrivals.

Reported per contender and workload: request/s, output tok/s, TTFT/TPOT/ITL/E2E p50/p90/p99,
errors, cache hit rate and the server's peak memory (RSS of its whole process tree); a table,
JSON in bench/results/ with `vllm bench serve`'s field names, PNG plots, and docs/benchmarks.md
rewritten from every result file present (bench/benchmarks_md.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import psutil

from bench import loadgen, vllm_bench, workloads
from bench.report import write_result
from bench.servers import (REPO, NaiveServer, Raygate, RayServeLLM, Server, VLLMServe, free_port,
                           add_model_arg, config_for_model, model_spec_from_config)

RESULTS = REPO / "bench" / "results"
CONTENDERS = ("raygate", "vllm-serve", "ray-serve-llm", "naive")
WORKLOADS = ("random", "shared-prefix", "repeat-heavy")
CACHE_OFF = {"cache": {"mode": "off"}}


class PeakMemory(threading.Thread):
    """Samples the RSS of a server's whole process tree once a second; keeps the peak."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak_mib, self.stop_event = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                root = psutil.Process(self.pid)
                total = 0
                for p in [root] + root.children(recursive=True):
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak_mib = max(self.peak_mib, total / 2**20)
            except psutil.Error:
                pass
            self.stop_event.wait(1.0)


def make_workload(name: str, args, spec) -> list[loadgen.Conversation]:
    scale = 4 if args.full else 1
    if name == "random":
        return RandomTokens(args.random_prompts * scale, args.input_len, args.output_len, args.seed)
    if name == "shared-prefix":
        return workloads.shared_prefix(args.conversations * scale, seed=args.seed)
    if name == "repeat-heavy":
        return workloads.repeat_heavy(args.repeat_prompts * scale, seed=args.seed)
    raise ValueError(name)


def extra_body(contender: str, workload: str) -> Optional[dict]:
    """raygate's extension field: the cache is off for the random workload (nothing repeats in it),
    and always for `raygate-nocache` (the same server, to see what the cache costs or saves)."""
    if contender == "raygate-nocache" or (contender == "raygate" and workload == "random"):
        return CACHE_OFF
    return None


def build(name: str, spec, args, port: int) -> Server:
    logs = RESULTS / "logs"
    if name in ("raygate", "raygate-nocache"):
        return Raygate(Path(args.config), port, logs, label=name)
    if name == "vllm-serve":
        return VLLMServe(spec, port, logs)
    if name == "ray-serve-llm":
        return RayServeLLM(spec, port, logs)
    if name == "naive":
        return NaiveServer(spec, port, logs)
    raise ValueError(name)


@dataclass
class RandomTokens:
    """The random workload, driven by `vllm bench serve` itself: its dataset and its client.

    Why its client here: this is the workload where raygate is compared with `vllm serve` on raw
    throughput, and on a 2-core host the client shares the CPU with the server; vLLM's own tool
    (aiohttp) is the yardstick its users know, and it costs the same for every contender."""

    n: int
    input_len: int
    output_len: int
    seed: int


def _client_cpu_s() -> float:
    """CPU used by this process and its finished children (the `vllm bench serve` runs)."""
    me = psutil.Process().cpu_times()
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.user + me.system + kids.ru_utime + kids.ru_stime


_VLLM_FIELDS = ("completed", "failed", "duration", "total_input_tokens", "total_output_tokens",
                "request_throughput", "output_throughput")


def _vllm_bench(server: Server, spec, work: RandomTokens, concurrency: int, rate: Optional[float],
                extra: Optional[dict]) -> dict:
    result = Path(tempfile.mkdtemp(prefix="peers-vllm-bench-")) / "result.json"
    # A rate is an open loop (no concurrency cap); without one, a closed loop at `concurrency`.
    cmd = vllm_bench.random_command(
        server.base_url, spec.name, spec.path, input_len=work.input_len, output_len=work.output_len,
        num_prompts=work.n, seed=work.seed, warmups=concurrency, result_file=result,
        concurrency=None if rate else concurrency, rate=rate, temperature=0, extra_body=extra)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0 or not result.exists():
        raise RuntimeError(f"vllm bench serve failed ({proc.returncode}): {proc.stderr[-2000:]}")
    raw = json.loads(result.read_text())
    summary = {k: raw.get(k) for k in _VLLM_FIELDS}
    no_token_timings = vllm_bench.unmeasured_token_timings(raw)
    for metric in ("ttft", "tpot", "itl", "e2el"):
        for stat in ("mean", "median", "p90", "p99"):
            unmeasured = no_token_timings and metric in ("tpot", "itl")  # vLLM's 0 for an empty sample
            summary[f"{stat}_{metric}_ms"] = None if unmeasured else raw.get(f"{stat}_{metric}_ms")
    errors = [e for e in raw.get("errors") or [] if e]
    summary["errors"] = {"request error": len(errors)} if errors else {}
    summary["cache_hit_rate"] = None  # vllm bench serve does not read response headers
    return summary


def measure(server: Server, spec, work, *, label: str, concurrency: int, rate: Optional[float] = None,
            stream: bool = True, extra: Optional[dict] = None, seed: int = 0) -> dict:
    """One workload against a running server, with the server's peak memory and the client's CPU."""
    peak = PeakMemory(server.proc.pid)
    peak.start()
    cpu0 = _client_cpu_s()
    try:
        if isinstance(work, RandomTokens):
            print(f"  {label}: vllm bench serve ...", flush=True)
            summary, client = _vllm_bench(server, spec, work, concurrency, rate, extra), "vllm bench serve"
        else:
            results, duration = asyncio.run(loadgen.run(
                server.base_url, spec.name, work, concurrency=concurrency, request_rate=rate, stream=stream,
                extra=extra, seed=seed, progress=label))
            summary, client = loadgen.summarize(results, duration), "bench.loadgen"
    finally:
        peak.stop_event.set()
        peak.join()
    summary.update(peak_memory_mib=round(peak.peak_mib, 1), concurrency=concurrency, request_rate=rate,
                   stream=stream, client=client, client_cpu_s=round(_client_cpu_s() - cpu0, 1))
    return summary


def warm_up(server: Server, spec, args) -> None:
    """Two waves at the run's concurrency, short and long prompts (never the workloads' own texts, so
    no cache is filled): the engine meets its batch shapes before anything is timed."""
    for input_len in (64, 1024):
        convs = workloads.random_tokens(spec.path, 2 * args.concurrency, input_len, 16, args.seed + 1)
        asyncio.run(loadgen.run(server.base_url, spec.name, convs, concurrency=args.concurrency,
                                extra=CACHE_OFF if server.name.startswith("raygate") else None, stream=True))


def with_server(server: Server, spec, args, body: Callable[[Server], None]) -> Optional[str]:
    """Start, warm up, run `body`, stop; returns an error line instead of raising (the run goes on)."""
    print(f"starting {server.name} ...", flush=True)
    try:
        server.start(timeout_s=args.start_timeout_s)
    except Exception as e:  # noqa: BLE001 - a contender that cannot start is reported, not fatal
        server.stop()
        print(f"  {server.name} did not start: {e}", flush=True)
        return f"did not start: {str(e).splitlines()[0]}"
    try:
        print(f"  ready after {server.ready_s:.0f} s", flush=True)
        warm_up(server, spec, args)
        body(server)
    finally:
        left = server.stop()
        if left:
            print(f"  left behind after a graceful stop (killed): {left}", flush=True)
    return None


_COLS = [("req/s", "request_throughput", "{:.2f}"), ("out tok/s", "output_throughput", "{:.0f}"),
         ("TTFT p50", "median_ttft_ms", "{:.0f}"), ("TTFT p99", "p99_ttft_ms", "{:.0f}"),
         ("TPOT p50", "median_tpot_ms", "{:.1f}"), ("ITL p50", "median_itl_ms", "{:.1f}"),
         ("E2E p50", "median_e2el_ms", "{:.0f}"), ("E2E p99", "p99_e2el_ms", "{:.0f}"), ("failed", "failed", "{}"),
         ("cache", "cache_hit_rate", "{:.0%}"), ("GiB", "peak_memory_mib", "{:.1f}")]
HEADER = f"{'contender':<44}" + "".join(f"{c:>10}" for c, _, _ in _COLS)


def fmt_row(name: str, s: dict) -> str:
    cells = [loadgen.fmt(s[k] / 1024 if k == "peak_memory_mib" and s.get(k) is not None else s.get(k), spec)
             for _, k, spec in _COLS]
    return f"{name:<44}" + "".join(f"{c:>10}" for c in cells)


def print_table(title: str, rows: dict[str, dict]) -> None:
    print(f"\n{title}   (ms unless stated; GiB = peak RSS of the server's processes)")
    print(HEADER)
    print("-" * len(HEADER))
    for name, s in rows.items():
        if "error" in s:
            print(f"{name:<24}{s['error']}")
        else:
            print(fmt_row(name, s))


def _progress(label: str, s: dict) -> None:
    print(f"  {label}: {loadgen.fmt(s.get('request_throughput'), '{:.2f}')} req/s, "
          f"{loadgen.fmt(s.get('output_throughput'))} tok/s, TTFT p50 {loadgen.fmt(s.get('median_ttft_ms'))} ms, "
          f"E2E p99 {loadgen.fmt(s.get('p99_e2el_ms'))} ms, failed {s.get('failed')}", flush=True)


def share_label(name: str, fraction: float) -> str:
    """The row of contender `name` run on the naive baseline's share of a workload."""
    return f"{name} (first {fraction:.0%}, as naive)"


def acceptance(results: dict, naive_share: float = 1.0) -> list[dict]:
    """The issue's targets, computed from this run; a missing contender or workload gives no verdict.
    Every ratio compares runs of the same requests: against the naive baseline, which runs only the
    first `naive_share` of a workload, raygate's row on that same share (`share_label`)."""
    out = []
    rnd = results.get("random", {})
    rg, vl, rs = rnd.get("raygate"), rnd.get("vllm-serve"), rnd.get("ray-serve-llm")
    ok = lambda s: s is not None and "error" not in s  # noqa: E731
    if ok(rg) and ok(vl):
        ratio = rg["output_throughput"] / vl["output_throughput"]
        out.append({"target": "random, cache off: raygate output tok/s >= 0.95x vllm serve",
                    "measured": f"{ratio:.3f}x", "met": ratio >= 0.95})
    if ok(rg) and ok(rs):
        out.append({"target": "random: raygate TTFT p50 below Ray Serve LLM's",
                    "measured": f"{rg['median_ttft_ms']:.0f} ms vs {rs['median_ttft_ms']:.0f} ms",
                    "met": rg["median_ttft_ms"] < rs["median_ttft_ms"]})
        out.append({"target": "random: raygate output tok/s above Ray Serve LLM's",
                    "measured": f"{rg['output_throughput']:.0f} vs {rs['output_throughput']:.0f}",
                    "met": rg["output_throughput"] > rs["output_throughput"]})
    rep = results.get("repeat-heavy", {})
    rg = rep.get("raygate") if naive_share >= 1 else rep.get(share_label("raygate", naive_share))
    nv = rep.get("naive")
    same = "" if naive_share >= 1 else f" (both on the first {naive_share:.0%} of the workload)"
    if ok(rg) and ok(nv) and None not in (rg["request_throughput"], nv["request_throughput"],
                                          rg["p99_e2el_ms"], nv["p99_e2el_ms"]):
        ratio = rg["request_throughput"] / nv["request_throughput"]
        out.append({"target": f"repeat-heavy{same}: raygate request/s >= 10x naive at equal or lower E2E p99",
                    "measured": f"{ratio:.1f}x, E2E p99 {rg['p99_e2el_ms']:.0f} vs {nv['p99_e2el_ms']:.0f} ms",
                    "met": ratio >= 10 and rg["p99_e2el_ms"] <= nv["p99_e2el_ms"]})
    return out


def flush_cache(server: Server) -> None:
    """Empty raygate's semantic cache (POST /admin/cache/flush; the benchmark config has auth off)."""
    import httpx

    r = httpx.post(server.base_url + "/admin/cache/flush", timeout=60)
    if r.status_code != 200:
        raise RuntimeError(f"cache flush failed: {r.status_code} {r.text[:200]}")


def _share(work, fraction: float):
    """The first `fraction` of a workload (the naive baseline's: its rate is steady, all of it takes long)."""
    if fraction >= 1:
        return work
    if isinstance(work, RandomTokens):
        return RandomTokens(max(1, int(work.n * fraction)), work.input_len, work.output_len, work.seed)
    return work[:max(1, int(len(work) * fraction))]


def _median_run(rs: list[dict]) -> dict:
    """Per field, the median over rounds (an error if any round failed to start: no partial medians)."""
    errors = [r["error"] for r in rs if "error" in r]
    if errors or not rs:
        return {"error": errors[0] if errors else "not run"}
    out = dict(rs[-1])
    for k, v in rs[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and all(r.get(k) is not None for r in rs):
            out[k] = statistics.median(r[k] for r in rs)
    out["rounds"] = len(rs)
    return out


def run_comparison(args, spec, png: Path) -> dict:
    names = [c for c in args.contenders.split(",") if c]
    loads = [w for w in args.workloads.split(",") if w]
    convs = {w: make_workload(w, args, spec) for w in loads}
    runs: dict[str, dict[str, list]] = {w: {n: [] for n in names} for w in loads}
    share_row = (share_label("raygate", args.naive_share)
                 if {"raygate", "naive"} <= set(names) and args.naive_share < 1 and "repeat-heavy" in loads else None)
    if share_row:
        runs["repeat-heavy"][share_row] = []
    for rnd in range(args.repeats):
        for name in names:  # rounds A B C A B C: the shared host's drift hits every contender alike
            print(f"[round {rnd + 1}/{args.repeats}]", end=" ")
            server = build(name, spec, args, free_port())

            def body(srv: Server, name=name) -> None:
                for w in loads:
                    work = _share(convs[w], args.naive_share) if name == "naive" else convs[w]
                    s = measure(srv, spec, work, label=f"{name} {w}", concurrency=args.concurrency,
                                rate=args.request_rate, extra=extra_body(name, w), seed=args.seed)
                    s["ready_s"] = round(srv.ready_s or 0, 1)
                    runs[w][name].append(s)
                    _progress(w, s)
                    if name == "raygate" and w == "repeat-heavy" and share_row:
                        # The verdict against naive compares the same requests: raygate again on the
                        # naive baseline's share, from an empty cache (what the full run stored is flushed).
                        flush_cache(srv)
                        s = measure(srv, spec, _share(convs[w], args.naive_share), label=share_row,
                                    concurrency=args.concurrency, rate=args.request_rate,
                                    extra=extra_body(name, w), seed=args.seed)
                        runs[w][share_row].append(s)
                        _progress(share_row, s)

            err = with_server(server, spec, args, body)
            if err:
                for w in loads:
                    runs[w][name].append({"error": err})
                if name == "raygate" and share_row:
                    runs["repeat-heavy"][share_row].append({"error": err})
    results = {w: {n: _median_run(rs) for n, rs in by_name.items()} for w, by_name in runs.items()}
    lines = {w: workload_line(w, args, convs[w]) + (f"; naive: the first {args.naive_share:.0%}"
                                                     if "naive" in names and args.naive_share < 1 else "")
             for w in loads}
    for w in loads:
        print_table(f"workload {w}: {lines[w]}", results[w])
    verdicts = acceptance(results, args.naive_share if "naive" in names else 1.0)
    if verdicts:
        print("\nacceptance (this run):")
        for v in verdicts:
            print(f"  {'met   ' if v['met'] else 'MISSED'} {v['target']}: {v['measured']}")
    out = {"kind": "comparison", "results": results, "acceptance": verdicts, "rounds": runs,
           "workloads": lines}
    plot_comparison(results, png)
    return out


def workload_line(name: str, args, convs, load: Optional[str] = None) -> str:
    load = load or (f"Poisson {args.request_rate}/s" if args.request_rate else f"concurrency {args.concurrency}")
    if isinstance(convs, RandomTokens):
        return (f"{convs.n} requests, {convs.input_len} random tokens in / {convs.output_len} out (ignore_eos), "
                f"{load}; client: vllm bench serve")
    n = sum(len(c.turns) for c in convs)
    if name == "shared-prefix":
        return (f"{len(convs)} conversations x {len(convs[0].turns)} turns under 8 system prompts of ~800 tokens, "
                f"{convs[0].max_tokens} tokens out, {load}")
    return f"{n} questions from {len(workloads.QUESTIONS)} popular ones (Zipf), half reworded, {load}"


def _sweep(args, spec, points: list[str], point_kwargs: Callable[[str, list], dict]) -> tuple[dict, list]:
    """The random workload at each point (a concurrency, a request rate) on every contender but the
    naive one (a sweep of one-at-a-time serving says nothing); one server start per contender."""
    names = [c for c in args.contenders.split(",") if c and c != "naive"]
    convs = make_workload("random", args, spec)
    out: dict[str, dict] = {}
    for name in names:
        out[name] = {}

        def body(srv: Server, name=name) -> None:
            for point in points:
                s = measure(srv, spec, convs, label=f"{name} {point}", extra=extra_body(name, "random"),
                            seed=args.seed, **point_kwargs(point, convs))
                out[name][point] = s
                _progress(point, s)

        err = with_server(build(name, spec, args, free_port()), spec, args, body)
        if err:
            out[name] = {"error": err}
    return out, convs


def run_concurrency_sweep(args, spec, png: Path) -> dict:
    out, convs = _sweep(args, spec, args.sweep_concurrency.split(","), lambda c, _: {"concurrency": int(c)})
    plot_sweep(out, "concurrency", "output_throughput", "output tok/s", png)
    return {"kind": "concurrency_sweep", "results": out,
            "workload": workload_line("random", args, convs, load="at each concurrency (closed loop)")}


def run_rate_sweep(args, spec, png: Path) -> dict:
    out, convs = _sweep(args, spec, args.sweep_rate.split(","),
                        lambda r, work: {"rate": float(r), "concurrency": work.n})
    plot_sweep(out, "offered load (req/s, Poisson)", "p99_e2el_ms", "E2E p99 (ms)", png,
               extra_metric=("median_ttft_ms", "TTFT p50"))
    return {"kind": "rate_sweep", "results": out,
            "workload": workload_line("random", args, convs, load="Poisson arrivals at each rate, no concurrency cap")}


def run_ablation(args, spec, png: Path) -> dict:
    """One workload (shared-prefix chats and repeat-heavy questions together), each feature added in turn."""
    convs = workloads.shared_prefix(args.conversations, seed=args.seed) + workloads.repeat_heavy(
        args.repeat_prompts, seed=args.seed)
    rows: dict[str, dict] = {}
    two = {"models.0.deployment.num_replicas": 2, "models.0.deployment.autoscaling_config": None,
           "models.0.num_cpus": 0.5}
    steps = [
        ("naive", NaiveServer(spec, free_port(), RESULTS / "logs"), [("naive", False, None)]),
        ("serve-default-router", Raygate(Path(args.config), free_port(), RESULTS / "logs", label="raygate-default-router",
                                         overrides={**two, "models.0.deployment.request_router_config": None}),
         [("+ continuous batching (vLLM, no streaming)", False, CACHE_OFF), ("+ streaming", True, CACHE_OFF)]),
        ("raygate", Raygate(Path(args.config), free_port(), RESULTS / "logs", label="raygate-2-replicas", overrides=two),
         [("+ prefix-aware routing", True, CACHE_OFF), ("+ semantic cache (raygate)", True, None)]),
    ]
    for _, server, variants in steps:
        def body(srv: Server, variants=variants) -> None:
            for label, stream, extra in variants:
                s = measure(srv, spec, convs, label=label, concurrency=args.concurrency, stream=stream, extra=extra)
                rows[label] = s
                _progress(label, s)

        err = with_server(server, spec, args, body)
        if err:
            for label, _, _ in variants:
                rows[label] = {"error": err}
    print_table("ablation: shared-prefix chats + repeat-heavy questions", rows)
    return {"kind": "ablation", "results": rows,
            "workload": f"{len(convs)} conversations ({args.conversations} shared-prefix x 3 turns, "
                        f"{args.repeat_prompts} repeat-heavy questions), concurrency {args.concurrency}; "
                        f"raygate rows on 2 LLM replicas"}


def run_batch_sweep(args, spec, png: Path) -> dict:
    """raygate's `@serve.batch` around request submission (models.0.submit_batching) on the random workload."""
    convs = make_workload("random", args, spec)
    rows: dict[str, dict] = {}
    for item in args.sweep_batch.split(","):
        size, wait = item.split(":")
        label = f"max_batch_size={size} wait={wait}s"
        overrides = {"models.0.submit_batching.enabled": True, "models.0.submit_batching.max_batch_size": int(size),
                     "models.0.submit_batching.batch_wait_timeout_s": float(wait)}
        server = Raygate(Path(args.config), free_port(), RESULTS / "logs", label=f"raygate[{label}]",
                         overrides=overrides)

        def body(srv: Server, label=label) -> None:
            rows[label] = measure(srv, spec, convs, label=label, concurrency=args.concurrency, extra=CACHE_OFF)

        err = with_server(server, spec, args, body)
        if err:
            rows[label] = {"error": err}
    print_table("@serve.batch sweep (submission batching), random workload", rows)
    return {"kind": "batch_sweep", "results": rows, "workload": workload_line("random", args, convs)}


def plot_comparison(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loads = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, metric, title in ((axes[0], "request_throughput", "requests/s (higher is better)"),
                              (axes[1], "median_ttft_ms", "TTFT p50, ms (lower is better)")):
        names = sorted({n for w in loads for n in results[w]})
        width = 0.8 / max(1, len(names))
        for i, n in enumerate(names):
            vals = [results[w].get(n, {}).get(metric, 0) for w in loads]
            ax.bar([x + i * width for x in range(len(loads))], vals, width, label=n)
        ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(loads))], loads)
        ax.set_title(title)
        ax.set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_sweep(out: dict, xlabel: str, metric: str, ylabel: str, path: Path,
               extra_metric: Optional[tuple[str, str]] = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, points in out.items():
        if "error" in points:
            continue
        xs = sorted(points, key=float)
        ax.plot([float(x) for x in xs], [points[x][metric] for x in xs], marker="o", label=f"{name} {ylabel}")
        if extra_metric:
            ax.plot([float(x) for x in xs], [points[x][extra_metric[0]] for x in xs], marker="x", ls="--",
                    label=f"{name} {extra_metric[1]}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xscale("log", base=2)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Optional[list[str]] = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "serve_config.yaml"))
    add_model_arg(p, default="builtin:tiny-llama")  # the serving layer's cost, not the model's
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--request-rate", type=float, default=None, help="Poisson arrivals per second instead of a "
                                                                     "fixed concurrency")
    p.add_argument("--random-prompts", type=int, default=256)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--conversations", type=int, default=48, help="shared-prefix conversations (3 turns each)")
    p.add_argument("--repeat-prompts", type=int, default=320)
    p.add_argument("--full", action="store_true", help="4x the requests of every workload")
    p.add_argument("--naive-share", type=float, default=0.25,
                   help="the naive baseline runs this share of each workload (the first requests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1, help="rounds over all contenders; tables show medians")
    p.add_argument("--start-timeout-s", type=float, default=600)
    p.add_argument("--sweep-concurrency", default=None, help="e.g. 1,4,16,32,64 (random workload)")
    p.add_argument("--sweep-rate", default=None, help="e.g. 2,4,8,16 requests/s, Poisson (random workload)")
    p.add_argument("--sweep-batch", default=None, help="raygate @serve.batch MAX_BATCH:WAIT_S,... (random workload)")
    p.add_argument("--ablation", action="store_true")
    p.add_argument("--out", default=None, help="JSON path (default: bench/results/peers[_<mode>].json)")
    args = p.parse_args(argv)
    args.config = str(config_for_model(Path(args.config), args.model))
    spec = model_spec_from_config(Path(args.config))
    if args.sweep_concurrency:
        run, default = run_concurrency_sweep, "peers_concurrency.json"
    elif args.sweep_rate:
        run, default = run_rate_sweep, "peers_rate.json"
    elif args.sweep_batch:
        run, default = run_batch_sweep, "peers_batch.json"
    elif args.ablation:
        run, default = run_ablation, "peers_ablation.json"
    else:
        run, default = run_comparison, "peers.json"
    path = Path(args.out) if args.out else RESULTS / default
    out = run(args, spec, path.with_suffix(".png"))  # plots (where a mode has one) beside the JSON
    out.update(model={"name": spec.name, "engine_args": spec.engine_args})
    write_result(path, out, "bench", argv)
    from bench import benchmarks_md

    benchmarks_md.write()
    print(f"\nJSON: {path}\ndocs: {benchmarks_md.DOC}")
    return out
