"""Write docs/benchmarks.md from the peer benchmark's result files (bench/results/peers*.json).

`python -m bench` calls this after every run, so the page always holds the latest result of each
mode (comparison, sweeps, ablation) with the exact command, the time and the machine it ran on.
Nothing here is typed by hand: a figure on the page is a figure a run wrote.

    python -m bench.benchmarks_md      # rewrite the page from the files present
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.report import machine_line

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
DOC = REPO / "docs" / "benchmarks.md"

COLUMNS = [("req/s", "request_throughput", "{:.2f}"), ("out tok/s", "output_throughput", "{:.0f}"),
           ("TTFT p50", "median_ttft_ms", "{:.0f}"), ("TTFT p90", "p90_ttft_ms", "{:.0f}"),
           ("TTFT p99", "p99_ttft_ms", "{:.0f}"), ("TPOT p50", "median_tpot_ms", "{:.1f}"),
           ("ITL p50", "median_itl_ms", "{:.1f}"), ("ITL p99", "p99_itl_ms", "{:.0f}"),
           ("E2E p50", "median_e2el_ms", "{:.0f}"), ("E2E p99", "p99_e2el_ms", "{:.0f}"),
           ("failed", "failed", "{}"), ("cache hits", "cache_hit_rate", "{:.0%}"),
           ("peak RSS GiB", "peak_memory_mib", "{:.1f}")]


def _cell(s: dict, key: str, fmt: str) -> str:
    v = s.get(key)
    if v is None:  # not measured (bench/loadgen.py): never shown as 0
        return "—"
    if key == "peak_memory_mib":
        v = v / 1024
    return fmt.format(v)


def table(rows: dict[str, dict], first: str = "contender") -> list[str]:
    out = ["| " + first + " | " + " | ".join(c for c, _, _ in COLUMNS) + " |",
           "|---" * (len(COLUMNS) + 1) + "|"]
    for name, s in rows.items():
        if "error" in s:
            out.append(f"| {name} | {s['error']} |" + " |" * (len(COLUMNS) - 1))
        else:
            out.append(f"| {name} | " + " | ".join(_cell(s, k, f) for _, k, f in COLUMNS) + " |")
    return out


def _header(data: dict) -> list[str]:
    m = data.get("machine", {})
    return [f"`{data['command']}` — {data['time']}; {machine_line(m)}; model {data['model']['name']}.", ""]


def section_comparison(data: dict) -> list[str]:
    lines = ["## raygate against its peers", ""] + _header(data)
    rounds = {s.get("rounds", 1) for rows in data["results"].values() for s in rows.values() if "error" not in s}
    if rounds and max(rounds) > 1:
        lines += [f"Each figure is the median of {max(rounds)} rounds (contenders interleaved round by round; "
                  "every round's figures are in the JSON).", ""]
    for w, rows in data["results"].items():
        lines += [f"### Workload `{w}`: {data['workloads'][w]}", ""] + table(rows) + [""]
        rounds = data.get("rounds", {}).get(w, {})
        if any(len(rs) > 1 for rs in rounds.values()):
            per = "; ".join(f"{n} " + " / ".join(_cell(r, "output_throughput", "{:.0f}") for r in rs if "error" not in r)
                            for n, rs in rounds.items())
            lines += [f"Output tok/s in each round: {per}.", ""]
    if data.get("acceptance"):
        lines += ["### Targets (computed from this run)", "", "| target | measured | verdict |", "|---|---|---|"]
        lines += [f"| {a['target']} | {a['measured']} | {'met' if a['met'] else '**missed**'} |"
                  for a in data["acceptance"]]
        lines.append("")
    lines += ["![requests/s and TTFT p50 by workload](../bench/results/peers.png)", ""]
    return lines


def section_sweep(data: dict, title: str, xname: str, png: str) -> list[str]:
    lines = [f"## {title}", ""] + _header(data) + [f"Workload: {data['workload']}.", ""]
    for name, points in data["results"].items():
        lines.append(f"**{name}**")
        lines.append("")
        if "error" in points:
            lines += [points["error"], ""]
            continue
        lines += table({f"{xname} {x}": s for x, s in points.items()}, first=xname) + [""]
    lines += [f"![{title}](../bench/results/{png})", ""]
    return lines


def section_rows(data: dict, title: str, first: str) -> list[str]:
    return [f"## {title}", ""] + _header(data) + [f"Workload: {data['workload']}.", ""] + table(
        data["results"], first=first) + [""]


def render() -> str:
    lines = ["# Benchmarks", "",
             "Written by `python -m bench` (bench/peers.py, bench/benchmarks_md.py) from the result files in",
             "bench/results/; each section is the latest run of its mode. Latencies in ms. The machine is shared",
             "and noisy: compare contenders within one run, as ratios. How to read and reproduce: README.md",
             "(Benchmarks); what each figure means for the design: docs/architecture.md.", ""]
    files = {"peers.json": lambda d: section_comparison(d),
             "peers_concurrency.json": lambda d: section_sweep(d, "Throughput against concurrency", "concurrency",
                                                               "peers_concurrency.png"),
             "peers_rate.json": lambda d: section_sweep(d, "Latency against offered load", "offered req/s", "peers_rate.png"),
             "peers_ablation.json": lambda d: section_rows(d, "Ablation: what each part adds", "stack"),
             "peers_batch.json": lambda d: section_rows(d, "`@serve.batch` sweep (submission batching)", "setting")}
    found = False
    for name, render_section in files.items():
        path = RESULTS / name
        if path.exists():
            found = True
            lines += render_section(json.loads(path.read_text()))
    if not found:
        lines += ["No results yet: run `python -m bench`.", ""]
    return "\n".join(lines)


def write() -> None:
    DOC.write_text(render())


if __name__ == "__main__":
    write()
    print(f"wrote {DOC}")
