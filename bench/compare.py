"""Compare raygate with `vllm serve` on one workload, in one run, on the same model.

    python -m bench.compare                       # 128 in / 64 out, concurrency 32, 400 prompts
    python -m bench.compare --model tiny-llama    # the random-weight demo: the serving layer's cost
    python -m bench.compare --repeats 2 --variant tput=RAY_SERVE_THROUGHPUT_OPTIMIZED=1
    python -m bench.compare --model tiny-llama --concurrency 32,64,128 --one-token 64 --repeats 2

`--model` serves another model in serve_config.yaml's first model block (default: the block's own,
builtin:smollm2-135m-instruct); `builtin:tiny-llama` (or `tiny-llama`) brings the demo model's engine
settings along (bench/servers.py TINY_LLAMA).

The client is `vllm bench serve` (openai-chat backend, streaming with usage, ignore_eos). Contenders
run one at a time, in rounds (A B A B ...) so that the shared machine's drift hits both alike; each
start serves every workload in turn (`--concurrency 32,64,128`, and `--one-token C`: 1-token requests
at concurrency C, which measure per-request overhead alone). It prints per workload output tok/s,
request/s and TTFT p50/p99 per contender and the ratio to `vllm serve`, and writes JSON with
`vllm bench serve`'s own field names (one workload: `summary` and `runs` at the top, as before; several:
under `workloads`, keyed `c64` or `c64-1tok`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path

from bench import cpu_account, vllm_bench
from bench.report import add_out_arg, write_result
from bench.servers import REPO, Raygate, Server, VLLMServe, model_overrides, model_spec_from_config

FIELDS = [
    "completed", "failed", "duration", "request_throughput", "output_throughput",
    "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "p99_tpot_ms", "median_itl_ms", "p99_itl_ms",
    "median_e2el_ms", "p99_e2el_ms",
]


def run_vllm_bench(server: Server, model: str, tokenizer: str, args, result_file: Path,
                   concurrency: int, output_len: int) -> dict:
    cmd = vllm_bench.random_command(
        server.base_url, model, tokenizer, input_len=args.input_len, output_len=output_len,
        num_prompts=args.num_prompts, seed=args.seed, warmups=args.warmups, result_file=result_file,
        concurrency=concurrency)
    idle = idle_rates(IDLE_S)
    before, client0 = cpu_account.snapshot(), cpu_account.children_cpu_s()
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.monotonic() - t0
    cpu = cpu_account.diff(before, cpu_account.snapshot())
    cpu["benchmark client"] = cpu_account.children_cpu_s() - client0  # it has exited: count it from rusage
    if proc.returncode != 0 or not result_file.exists():
        raise RuntimeError(f"vllm bench serve failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    res = json.loads(result_file.read_text())
    res["cpu_s_by_component"] = cpu
    res["idle_cpu_s_per_s_by_component"] = idle
    res["client_wall_s"] = wall
    return res


# Seconds of the idle measurement before each client run.
IDLE_S = 10.0


def idle_rates(seconds: float) -> dict[str, float]:
    """CPU seconds per second of each component with no request (the server's background)."""
    before = cpu_account.snapshot()
    time.sleep(seconds)
    return {g: s / seconds for g, s in cpu_account.diff(before, cpu_account.snapshot()).items()}


# What is not the serving layer: the model's own processes and the benchmark client.
NOT_THE_LAYER = {"vllm worker", "vllm engine core", "benchmark client"}


def layer_cpu_ms(run: dict, warmups: int, raw: bool = False) -> float:
    """The serving layer's CPU per request (ms): every process but the engine's and the client's.
    For `vllm serve` that is its API server (plus whatever else ran on the machine meanwhile).

    The client (`vllm bench serve`) spends ~10 s importing vLLM and loading a tokenizer before its
    first request, and the CPU is sampled around the whole client process: a server's background
    (for raygate ~140 ms of CPU per second: Serve's controller, Ray's daemons, idle replicas; ~0
    for `vllm serve`) accrues meanwhile and was charged to the requests (~5 ms per request at 25
    req/s, ~20 at 140). So each component's idle rate, measured just before, is not charged for the
    client's time outside its timed run (`client_wall_s - duration`): the background counts while
    requests are served, at the rate it has then (the warm-ups fall outside the timed run too: under a
    second, ~0.3 ms per request uncharged). `raw`: without that correction, as before."""
    n = (run["completed"] or 0) + warmups + 1
    return 1000 * sum(s for g, s in component_cpu_s(run, raw).items() if g not in NOT_THE_LAYER) / n


def component_cpu_s(run: dict, raw: bool = False) -> dict[str, float]:
    """CPU seconds per component, the background outside the timed run taken out (see layer_cpu_ms)."""
    outside = 0.0 if raw else max(0.0, (run.get("client_wall_s") or 0.0) - (run.get("duration") or 0.0))
    idle = run.get("idle_cpu_s_per_s_by_component") or {}
    return {g: max(0.0, s - idle.get(g, 0.0) * outside) for g, s in run["cpu_s_by_component"].items()}


def cpu_line(run: dict, warmups: int) -> str:
    n = (run["completed"] or 0) + warmups + 1
    cpu = dict(sorted(component_cpu_s(run).items(), key=lambda kv: -kv[1]))
    parts = ", ".join(f"{g} {1000 * s / n:.1f}" for g, s in cpu.items() if s * 1000 / n >= 0.5)
    return f"total {1000 * sum(cpu.values()) / n:.1f}, serving layer {layer_cpu_ms(run, warmups):.1f} = {parts}"


def parse_variant(text: str) -> tuple[str, dict, dict, int | None]:
    """LABEL=K=V,K=V: keys with a dot override the app's args (models.0.streaming.interval_ms),
    `client_port` points the client elsewhere, other keys are environment variables of the cluster."""
    label, _, assigns = text.partition("=")
    env, overrides, client_port = {}, {}, None
    for item in assigns.split(","):
        if item:
            k, _, v = item.partition("=")
            if k == "client_port":
                client_port = int(v)
            elif "." in k:
                overrides[k] = v
            else:
                env[k] = v
    return label, env, overrides, client_port


def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _workloads(args) -> list[tuple[str, int, int]]:
    """(key, concurrency, output length) of each workload run on one server start."""
    out = [(f"c{c}", c, args.output_len) for c in args.concurrency]
    if args.one_token:
        out.append((f"c{args.one_token}-1tok", args.one_token, 1))
    return out


def _summarize(runs: dict[str, list[dict]]) -> dict:
    summary = {}
    for name, rs in runs.items():
        summary[name] = {k: statistics.median([r[k] for r in rs]) for k in FIELDS if rs and rs[0].get(k) is not None}
        if rs:
            for k in ("serving_layer_cpu_ms_per_request", "serving_layer_cpu_ms_per_request_raw"):
                summary[name][k] = statistics.median(r[k] for r in rs)
    return summary


def _print_table(summary: dict, title: str) -> None:
    base = summary.get("vllm-serve")
    print(f"\n{title}")
    hdr = (f"{'contender':<28}{'out tok/s':>10}{'req/s':>8}{'x vllm':>8}{'TTFT p50':>10}{'TTFT p99':>10}"
           f"{'TPOT p50':>10}{'ITL p50':>9}{'failed':>8}{'layer ms':>10}")
    print(hdr)
    print("-" * len(hdr))
    for name, s in summary.items():
        s = {k: (v if v is not None else float("nan")) for k, v in s.items()}
        s = {k: s.get(k, float("nan")) for k in [*FIELDS, "serving_layer_cpu_ms_per_request"]}
        ratio = s["output_throughput"] / base["output_throughput"] if base else float("nan")
        print(f"{name:<28}{s['output_throughput']:>10.0f}{s['request_throughput']:>8.1f}{ratio:>8.2f}"
              f"{s['median_ttft_ms']:>10.1f}{s['p99_ttft_ms']:>10.1f}{s['median_tpot_ms']:>10.1f}"
              f"{s['median_itl_ms']:>9.1f}{s['failed']:>8.0f}{s['serving_layer_cpu_ms_per_request']:>10.1f}")
    if base:
        for name, s in summary.items():
            if name != "vllm-serve":
                print(f"{name}: throughput {s['output_throughput'] / base['output_throughput']:.3f}x vllm serve "
                      f"(request/s {s['request_throughput'] / base['request_throughput']:.3f}x), "
                      f"TTFT p50 {s['median_ttft_ms'] - base['median_ttft_ms']:+.1f} ms, serving layer "
                      f"{s['serving_layer_cpu_ms_per_request']:.1f} ms CPU/request vs "
                      f"{base['serving_layer_cpu_ms_per_request']:.1f} (with the background during the "
                      f"client's start-up: {s['serving_layer_cpu_ms_per_request_raw']:.1f} vs "
                      f"{base['serving_layer_cpu_ms_per_request_raw']:.1f})")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "serve_config.yaml"))
    ap.add_argument("--model", default=None,
                    help="serve this model instead of the config's first (builtin:tiny-llama, a HF id, a path)")
    ap.add_argument("--num-prompts", type=int, default=400)
    ap.add_argument("--concurrency", type=_int_list, default=[32],
                    help="one or more, comma-separated (32,64,128): each is run on every server start")
    ap.add_argument("--one-token", type=int, default=None, metavar="C",
                    help="also run 1-token requests (output length 1) at concurrency C")
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--warmups", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1, help="rounds over all contenders")
    ap.add_argument("--no-vllm", action="store_true", help="skip the vllm serve baseline")
    ap.add_argument("--no-raygate", action="store_true", help="skip raygate with the default environment")
    ap.add_argument("--variant", action="append", default=[],
                    help="extra raygate run: LABEL=K=V,... (env of the Ray cluster, or a dotted key of the app's "
                         "args such as models.0.streaming.interval_ms, or client_port)")
    ap.add_argument("--port", type=int, default=8000)
    add_out_arg(ap, "compare")
    args = ap.parse_args(argv)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    logs = out.parent / "logs"
    spec = model_spec_from_config(Path(args.config), args.model)
    model = model_overrides(args.model)

    contenders: list[Server] = []
    if not args.no_vllm:
        contenders.append(VLLMServe(spec, args.port + 100, logs))
    if not args.no_raygate:
        contenders.append(Raygate(Path(args.config), args.port, logs, overrides=model))
    for v in args.variant:
        label, env, overrides, client_port = parse_variant(v)
        contenders.append(Raygate(Path(args.config), args.port, logs, env=env, label=f"raygate[{label}]",
                                  overrides={**model, **overrides}, client_port=client_port))

    workloads = _workloads(args)
    runs: dict[str, dict[str, list[dict]]] = {key: {c.name: [] for c in contenders} for key, _, _ in workloads}
    for rnd in range(args.repeats):
        for c in contenders:
            print(f"[round {rnd + 1}/{args.repeats}] starting {c.name} ...", flush=True)
            c.start()
            try:
                print(f"  ready after {c.ready_s:.0f} s; benchmarking", flush=True)
                for key, concurrency, output_len in workloads:
                    res = run_vllm_bench(c, spec.name, spec.path, args, logs / f"{c.name}-{key}-r{rnd}.json",
                                         concurrency, output_len)
                    r = {k: res.get(k) for k in FIELDS} | {k: res[k] for k in (
                        "cpu_s_by_component", "idle_cpu_s_per_s_by_component", "client_wall_s")}
                    r["serving_layer_cpu_ms_per_request"] = layer_cpu_ms(r, args.warmups)
                    r["serving_layer_cpu_ms_per_request_raw"] = layer_cpu_ms(r, args.warmups, raw=True)
                    runs[key][c.name].append(r)
                    print(f"  {key}: {r['output_throughput']:.0f} tok/s, {r['request_throughput']:.1f} req/s, "
                          f"TTFT p50 {r['median_ttft_ms']:.0f} ms, failed {r['failed']}", flush=True)
                    print(f"  {key} CPU ms/request: {cpu_line(r, args.warmups)}", flush=True)
            finally:
                c.stop()

    summaries = {key: _summarize(runs[key]) for key, _, _ in workloads}
    print()
    print(f"model: {spec.name} ({spec.path})")
    for key, concurrency, output_len in workloads:
        _print_table(summaries[key], f"workload {key}: random {args.input_len} in / {output_len} out, concurrency "
                                     f"{concurrency}, {args.num_prompts} prompts, ignore_eos, median of "
                                     f"{args.repeats} round(s)")
        print(f"CPU per request by component (ms; all requests incl. warm-ups; last round; the background outside the timed run not charged), {key}:")
        for name, rs in runs[key].items():
            print(f"  {name}: {cpu_line(rs[-1], args.warmups)}")

    def workload_json(key, concurrency, output_len):
        return {"workload": {"input_len": args.input_len, "output_len": output_len, "concurrency": concurrency,
                             "num_prompts": args.num_prompts, "dataset": "random", "ignore_eos": True},
                "summary": summaries[key], "runs": runs[key]}

    doc = {"model": {"name": spec.name, "path": spec.path, "engine_args": spec.engine_args}}
    if len(workloads) == 1:
        doc |= workload_json(*workloads[0])
    else:
        doc["workloads"] = {key: workload_json(key, c, o) for key, c, o in workloads}
    write_result(out, doc, "bench.compare", argv)
    print(f"\nJSON: {out}")


if __name__ == "__main__":
    main()
