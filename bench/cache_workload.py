"""Does the cache pay off on repeat-heavy traffic? raygate with the cache against raygate without it.

    python -m bench.cache_workload                    # 600 requests, concurrency 16
    python -m bench.cache_workload --model tiny-llama # on the random-weight demo model

`--model` serves another model in serve_config.yaml's first model block (default: the block's own,
builtin:smollm2-135m-instruct), as in bench.compare.

The workload comes from a dataset in dev.jsonl's schema: 50% unique prompts (anchors and hard
negatives, each sent once), 30% exact repeats of a prompt already sent, 20% paraphrases of an anchor
already sent; chat, temperature 0, 64 output tokens (ignore_eos). The same sequence is sent, with the
official `openai` client at a fixed concurrency, to raygate with `cache.enabled: true` and then to
raygate with `cache.enabled: false`, each started with `serve run` on serve_config.yaml. It prints
request throughput and latency p50/p99 of the answered requests, the failed ones apart, the cache's
answer per request (from the `x-raygate-cache` header), their ratio, and writes JSON (`--out`). `--rounds` pairs of runs alternate
which side goes first (the shared host's speed drifts by tens of percent between minutes: one
cache-off run measured 25.2 req/s, the next, same code, 37.3); the ratio is the median of the pairs'.
The client runs SCHED_FIFO while it drives a server (`--client-priority`, bench/client_priority.py):
at normal priority an exact hit took 665 ms p50 on the client's clock, at SCHED_FIFO 11 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import time
from pathlib import Path
from typing import Optional

import numpy as np
import psutil

from bench import client_priority, cpu_account
from bench.loadgen import fmt
from bench.report import add_out_arg, write_result
from bench.servers import REPO, Raygate, free_port, model_overrides

DATASET = REPO.parent / "shared" / "semcache" / "dev.jsonl"


def build_workload(path: Path, n: int, seed: int = 0) -> list[tuple[str, str]]:
    """(kind, prompt) pairs: kind is unique, repeat or paraphrase."""
    rng = random.Random(seed)
    groups = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rng.shuffle(groups)
    fresh = [(g["anchor"], g) for g in groups] + [(neg["text"], None) for g in groups for neg in g["hard_negatives"]]
    sent: list[str] = []
    sent_anchors: list[dict] = []
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.3 and sent:
            kind, prompt = "repeat", rng.choice(sent)
        elif r < 0.5 and sent_anchors:
            kind, prompt = "paraphrase", rng.choice(rng.choice(sent_anchors)["paraphrases"])
        else:
            text, group = fresh.pop(0)
            kind, prompt = "unique", text
            sent.append(text)
            if group is not None:
                sent_anchors.append(group)
        out.append((kind, prompt))
    return out


async def drive(base_url: str, model: str, workload: list[tuple[str, str]], concurrency: int,
                max_tokens: int) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=300)
    queue = list(enumerate(workload))
    latencies: list[float] = [0.0] * len(workload)
    answers: list[str] = [""] * len(workload)
    texts: list[Optional[str]] = [None] * len(workload)
    similarities: list[Optional[str]] = [None] * len(workload)

    async def worker():
        while queue:
            i, (_, prompt) = queue.pop(0)
            t0 = time.perf_counter()
            try:
                raw = await client.chat.completions.with_raw_response.create(
                    model=model, messages=[{"role": "user", "content": prompt}], temperature=0,
                    max_tokens=max_tokens, extra_body={"ignore_eos": True})
                texts[i] = raw.parse().choices[0].message.content
                answers[i] = raw.headers.get("x-raygate-cache", "none")
                similarities[i] = raw.headers.get("x-raygate-cache-similarity")
            except Exception:
                answers[i] = "error"
            latencies[i] = time.perf_counter() - t0

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    await client.close()
    result = summarize(workload, answers, latencies, elapsed)
    result["semantic_hits"] = semantic_hit_sources(workload, answers, texts, similarities)
    return result


def semantic_hit_sources(workload: list[tuple[str, str]], answers: list[str], texts: list[Optional[str]],
                         similarities: list[Optional[str]]) -> list[dict]:
    """Which stored entry each semantic hit was answered from, so that a wrong one can be read: the
    prompts whose generated answer (a miss, which the cache stored) has the served answer's text.
    At temperature 0 with 64 tokens two prompts rarely share an answer; `sources` lists every
    prompt that had it (empty when none did: an entry from before the run)."""
    generated: dict[str, list[str]] = collections.defaultdict(list)
    for (_, prompt), answer, text in zip(workload, answers, texts):
        if answer == "miss" and text is not None and prompt not in generated[text]:
            generated[text].append(prompt)
    return [{"kind": kind, "prompt": prompt, "similarity": similarity, "sources": generated.get(text, [])}
            for (kind, prompt), answer, text, similarity in zip(workload, answers, texts, similarities)
            if answer == "hit-semantic"]


def summarize(workload: list[tuple[str, str]], answers: list[str], latencies_s: list[float], elapsed_s: float) -> dict:
    """Throughput and latency of the requests that were answered; failed requests (answer "error")
    are counted apart (`errors`, and in `cache_answers`), never in req/s or the percentiles. A
    percentile with no answered request is None."""
    ok = [a != "error" for a in answers]
    lat = np.asarray([s for s, good in zip(latencies_s, ok) if good]) * 1000
    by_kind: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for (kind, _), answer in zip(workload, answers):
        by_kind[kind][answer] += 1
    by_answer: dict[str, list[float]] = collections.defaultdict(list)
    for answer, s, good in zip(answers, latencies_s, ok):
        if good:
            by_answer[answer].append(s * 1000)

    def pct(p):
        return float(np.percentile(lat, p)) if lat.size else None

    return {"requests": len(workload), "completed": int(sum(ok)), "errors": len(ok) - int(sum(ok)),
            "duration_s": elapsed_s,
            "p50_e2el_ms_by_answer": {k: float(np.percentile(v, 50)) for k, v in by_answer.items()},
            "request_throughput": sum(ok) / elapsed_s if elapsed_s else None,
            "p50_e2el_ms": pct(50), "p99_e2el_ms": pct(99),
            "cache_answers": {k: dict(v) for k, v in by_kind.items()}}


def run_once(args, workload: list[tuple[str, str]], label: str, enabled: bool) -> dict:
    """Start raygate with the cache on or off, drive the workload through it, stop it."""
    from deployments.config import AppConfig
    import yaml

    log_dir = REPO / "bench" / "results" / "logs"
    overrides = {**model_overrides(args.model), **dict(kv.split("=", 1) for kv in args.set),
                 "cache.enabled": enabled, "cache.embedded.port": free_port()}
    srv = Raygate(args.config, free_port(), log_dir, label=f"raygate-{label}", overrides=overrides)
    print(f"starting raygate ({label}) ...", flush=True)
    srv.start()
    try:
        model = (overrides.get("models.0.served_model_name") or AppConfig.model_validate(
            yaml.safe_load(args.config.read_text())["applications"][0]["args"]).models[0].name)
        before, me = cpu_account.snapshot(), psutil.Process().cpu_times()
        scheduling = client_priority.prioritise(args.client_priority)
        try:
            r = asyncio.run(drive(srv.base_url, model, workload, args.concurrency, args.max_tokens))
        finally:
            client_priority.restore()  # the next server must not inherit SCHED_FIFO
        r["client_scheduling"] = scheduling
        cpu = cpu_account.diff(before, cpu_account.snapshot())
        now = psutil.Process().cpu_times()
        cpu["benchmark client"] = (now.user + now.system) - (me.user + me.system)
        r["cpu_ms_per_request"] = {k: round(v * 1000 / len(workload), 2) for k, v in
                                   sorted(cpu.items(), key=lambda kv: -kv[1]) if v > 0}
    finally:
        srv.stop()
    print(f"  {fmt(r['request_throughput'], '{:.2f}')} req/s, p50 {fmt(r['p50_e2el_ms'])} ms, "
          f"p99 {fmt(r['p99_e2el_ms'])} ms (answered requests); failed {r['errors']} of {r['requests']}, "
          f"answers {r['cache_answers']}", flush=True)
    for hit in r["semantic_hits"]:
        if hit["kind"] == "unique":  # a prompt sent once answered from another's entry: read it
            print(f"  semantic hit on a unique prompt (similarity {hit['similarity']}): {hit['prompt']!r} "
                  f"answered from {hit['sources']!r}", flush=True)
    print("  latency p50 by answer (ms): " + ", ".join(f"{k} {v:.0f}" for k, v in r["p50_e2el_ms_by_answer"].items()))
    print("  CPU ms/request: " + ", ".join(f"{k} {v}" for k, v in r["cpu_ms_per_request"].items()), flush=True)
    return r


def main(argv: Optional[list[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", type=Path, default=DATASET)
    p.add_argument("--config", type=Path, default=REPO / "serve_config.yaml")
    p.add_argument("--model", default=None,
                   help="serve this model instead of the config's first (builtin:tiny-llama, a HF id, a path)")
    p.add_argument("--requests", type=int, default=600)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2,
                   help="pairs of runs, cache on and off, in alternating order (on-off, off-on, ...)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override an app arg in both runs, e.g. models.0.engine_args.enable_prefix_caching=false")
    p.add_argument("--client-priority", choices=("fifo", "normal"), default="fifo",
                   help="fifo: the client runs SCHED_FIFO while it drives a started server (bench/client_priority.py)")
    add_out_arg(p, "cache_workload")
    args = p.parse_args(argv)
    workload = build_workload(args.dataset, args.requests)
    mix = collections.Counter(kind for kind, _ in workload)
    print(f"workload: {dict(mix)}, concurrency {args.concurrency}, {args.max_tokens} output tokens, "
          f"{args.rounds} rounds")
    results: dict = {"workload": dict(mix), "concurrency": args.concurrency, "max_tokens": args.max_tokens,
                     "model": args.model or "serve_config.yaml's first model", "overrides": args.set, "rounds": []}
    for n in range(args.rounds):
        # The host's speed drifts by tens of percent between minutes: alternate which side runs first.
        order = (("cache_on", True), ("cache_off", False)) if n % 2 == 0 else (("cache_off", False), ("cache_on", True))
        runs = {label: run_once(args, workload, label, enabled) for label, enabled in order}
        on, off = runs["cache_on"]["request_throughput"], runs["cache_off"]["request_throughput"]
        runs["throughput_ratio"] = on / off if on and off else None
        runs["order"] = [label for label, _ in order]
        results["rounds"].append(runs)
    for label in ("cache_on", "cache_off"):  # the run of median throughput stands for each side
        ranked = sorted((r[label] for r in results["rounds"]), key=lambda r: r["request_throughput"] or 0.0)
        results[label] = ranked[(len(ranked) - 1) // 2]
        results[label + "_req_per_s"] = [r[label]["request_throughput"] for r in results["rounds"]]
        results[label + "_failed"] = [r[label]["errors"] for r in results["rounds"]]
    ratios = sorted(r["throughput_ratio"] for r in results["rounds"] if r["throughput_ratio"] is not None)
    results["round_ratios"] = [r["throughput_ratio"] for r in results["rounds"]]
    results["throughput_ratio"] = float(np.median(ratios)) if ratios else None
    print(f"\n{'round':<8}{'order':<20}{'on req/s':>10}{'off req/s':>11}{'ratio':>8}{'failed on/off':>15}")
    for n, r in enumerate(results["rounds"]):
        print(f"{n:<8}{'-'.join(x.split('_')[1] for x in r['order']):<20}"
              f"{fmt(r['cache_on']['request_throughput'], '{:.2f}'):>10}"
              f"{fmt(r['cache_off']['request_throughput'], '{:.2f}'):>11}{fmt(r['throughput_ratio'], '{:.2f}x'):>8}"
              f"{r['cache_on']['errors']:>8}/{r['cache_off']['errors']}")
    print(f"throughput with the cache / without (answered requests), median of {len(ratios)} rounds: "
          f"{fmt(results['throughput_ratio'], '{:.2f}x')}")
    write_result(args.out, results, "bench.cache_workload", argv)
    return results


if __name__ == "__main__":
    main()
