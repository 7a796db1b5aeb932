"""The peer benchmark's load generator and workloads, against an in-process fake server (httpx
MockTransport); the real servers are exercised by `python -m bench` itself."""

import asyncio
import json

import httpx
import pytest

from bench import benchmarks_md, loadgen, vllm_bench, workloads


def _fake_server(seen: list):
    """Answers a streamed chat with 3 content chunks and usage; a non-streamed one with JSON.
    A message containing 'boom' gets a 500."""
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        if "boom" in body["messages"][-1]["content"]:
            return httpx.Response(500, json={"error": {"message": "boom"}})
        n = len(body["messages"])
        if not body.get("stream"):
            return httpx.Response(200, headers={"x-raygate-cache": "hit-exact"}, json={
                "choices": [{"message": {"role": "assistant", "content": f"answer{n}"}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 3}})
        events = [{"choices": [{"delta": {"role": "assistant"}}]}]
        events += [{"choices": [{"delta": {"content": f"a{n}-{i} "}}]} for i in range(3)]
        events.append({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3}})
        text = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        return httpx.Response(200, headers={"content-type": "text/event-stream", "x-raygate-cache": "miss"},
                              content=text.encode())
    return httpx.MockTransport(handler)


def test_streamed_turns_carry_the_real_answers_and_are_measured():
    seen = []
    conv = loadgen.Conversation(turns=["first", "second"], system="sys", max_tokens=7)
    results, duration = asyncio.run(loadgen.run("http://fake", "m", [conv], concurrency=1,
                                                transport=_fake_server(seen)))
    assert [r.ok for r in results] == [True, True]
    assert seen[0]["messages"] == [{"role": "system", "content": "sys"}, {"role": "user", "content": "first"}]
    # The second turn's history holds the first answer exactly as streamed.
    assert seen[1]["messages"][2] == {"role": "assistant", "content": "a2-0 a2-1 a2-2 "}
    assert seen[1]["stream_options"] == {"include_usage": True} and seen[1]["temperature"] == 0
    r = results[0]
    assert r.output_tokens == 3 and len(r.itls_s) == 2 and 0 < r.ttft_s <= r.e2e_s <= duration


def test_failures_stop_a_conversation_and_are_counted_by_status():
    seen = []
    convs = [loadgen.Conversation(turns=["boom", "never sent"]), loadgen.Conversation(turns=["fine"])]
    results, duration = asyncio.run(loadgen.run("http://fake", "m", convs, concurrency=2, stream=False,
                                                transport=_fake_server(seen)))
    assert len(seen) == 2  # the failed conversation's second turn was not sent
    s = loadgen.summarize(results, duration)
    assert s["completed"] == 1 and s["failed"] == 1 and s["errors"] == {"500": 1}
    assert s["cache_hit_rate"] == 1.0  # the one success was a hit
    assert s["median_ttft_ms"] == s["median_e2el_ms"]  # not streamed: the first byte is the whole answer
    assert s["median_tpot_ms"] is None and s["median_itl_ms"] is None  # and no token timings: not 0


def test_summary_percentiles_and_throughput():
    results = [loadgen.Result(True, 200, ttft_s=t, e2e_s=2 * t, output_tokens=11, itls_s=[t / 10] * 10)
               for t in (0.1, 0.2, 0.3, 0.4)]
    s = loadgen.summarize(results, duration=2.0)
    assert s["request_throughput"] == pytest.approx(2.0)
    assert s["output_throughput"] == pytest.approx(22.0)
    assert s["median_ttft_ms"] == pytest.approx(250.0)
    assert s["p99_e2el_ms"] == pytest.approx(794.0)  # 600 + 0.97 * 200 (linear interpolation)
    assert s["median_tpot_ms"] == pytest.approx(25.0)  # (e2e - ttft) / (tokens - 1)


def test_workloads_are_deterministic_and_shaped():
    a, b = workloads.repeat_heavy(200, seed=3), workloads.repeat_heavy(200, seed=3)
    assert [c.turns for c in a] == [c.turns for c in b]
    texts = [c.turns[0] for c in a]
    top = workloads.QUESTIONS[0][0]
    assert texts.count(top) > texts.count(workloads.QUESTIONS[-1][0])  # Zipf: the first is the most asked
    assert len(set(texts)) > len(workloads.QUESTIONS)  # rewordings appear too
    convs = workloads.shared_prefix(16, groups=4, turns=3, seed=1)
    assert len({c.system for c in convs}) == 4 and all(len(c.turns) == 3 for c in convs)
    assert all(len(c.system.split()) > 500 for c in convs)


def test_benchmarks_page_renders_a_comparison_with_its_verdicts(tmp_path, monkeypatch):
    row = loadgen.summarize([loadgen.Result(True, 200, ttft_s=0.1, e2e_s=0.5, output_tokens=9, itls_s=[0.05] * 8)],
                            1.0)
    row["peak_memory_mib"] = 2048.0
    data = {"kind": "comparison", "command": "python -m bench", "time": "t", "workloads": {"random": "w"},
            "machine": {"cpus": 2, "memory_gib": 24, "platform": "linux"}, "model": {"name": "m"},
            "results": {"random": {"raygate": row, "ray-serve-llm": {"error": "did not start: x"}}},
            "acceptance": [{"target": "T", "measured": "0.5x", "met": False}]}
    monkeypatch.setattr(benchmarks_md, "RESULTS", tmp_path)
    (tmp_path / "peers.json").write_text(json.dumps(data))
    page = benchmarks_md.render()
    assert "| raygate | 1.00 | 9 | 100 |" in page
    assert "| ray-serve-llm | did not start: x |" in page
    assert "| T | 0.5x | **missed** |" in page and "2.0 |" in page


def test_peer_verdicts_follow_the_issue_targets():
    from bench import peers

    def row(tok, ttft, rps=1.0, p99=100.0):
        return {"output_throughput": tok, "median_ttft_ms": ttft, "request_throughput": rps, "p99_e2el_ms": p99}

    results = {"random": {"raygate": row(96, 90), "vllm-serve": row(100, 80), "ray-serve-llm": row(90, 100)},
               "repeat-heavy": {"raygate": row(0, 0, rps=30, p99=500), "naive": row(0, 0, rps=2, p99=400)}}
    verdicts = [v["met"] for v in peers.acceptance(results)]
    assert verdicts == [True, True, True, False]  # 0.96x; 90 < 100 ms; 96 > 90 tok/s; 15x but a higher p99
    results["random"]["ray-serve-llm"] = {"error": "did not start"}
    assert len(peers.acceptance(results)) == 2  # no verdict against a contender that did not run


def test_cache_is_off_for_random_and_for_the_nocache_variant_only():
    from bench import peers

    assert peers.extra_body("raygate", "random") == peers.CACHE_OFF
    assert peers.extra_body("raygate", "repeat-heavy") is None
    assert peers.extra_body("raygate-nocache", "repeat-heavy") == peers.CACHE_OFF
    assert peers.extra_body("vllm-serve", "random") is None  # peers never get raygate's extension field
    assert peers._share(peers.RandomTokens(256, 128, 64, 0), 0.25).n == 64


# ---- figures that were not measured are not shown as measured ------------------------------------

def test_empty_samples_are_none_and_print_as_a_dash_never_zero(tmp_path, monkeypatch):
    from bench import peers

    # A server that sends each answer whole (one SSE chunk: the naive one), and no cache header.
    plain = [loadgen.Result(True, 200, ttft_s=0.19, e2e_s=0.2, output_tokens=5)]
    s = loadgen.summarize(plain, 1.0)
    assert s["median_itl_ms"] is None and s["p99_tpot_ms"] is None and s["cache_hit_rate"] is None
    assert s["median_e2el_ms"] == pytest.approx(200.0)
    assert vllm_bench.unmeasured_token_timings({"itls": [[], []], "median_itl_ms": 0.0})  # vLLM's 0 for none
    assert not vllm_bench.unmeasured_token_timings({"itls": [[], [0.01]]})
    assert not vllm_bench.unmeasured_token_timings({"median_itl_ms": 3.0})  # no per-request data: trusted
    failed = loadgen.summarize([loadgen.Result(False, 503, e2e_s=0.1)], 1.0)
    assert failed["median_e2el_ms"] is None and failed["median_ttft_ms"] is None and failed["failed"] == 1
    assert loadgen.fmt(None) == "—" and loadgen.fmt(0.0) == "0" and loadgen.fmt(0.25, "{:.0%}") == "25%"
    # The terminal table and docs/benchmarks.md both show the dash.
    cells = peers.fmt_row("naive", s).split()
    assert cells[5] == cells[6] == "—" and cells[10] == "—"  # TPOT p50, ITL p50, cache
    monkeypatch.setattr(benchmarks_md, "RESULTS", tmp_path)
    data = {"kind": "comparison", "command": "python -m bench", "time": "t", "workloads": {"w": "w"},
            "machine": {"cpus": 2, "memory_gib": 24, "platform": "linux", "gpus": []}, "model": {"name": "m"},
            "results": {"w": {"naive": s}}, "acceptance": []}
    (tmp_path / "peers.json").write_text(json.dumps(data))
    line = next(line for line in benchmarks_md.render().splitlines() if line.startswith("| naive |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[7] == cells[8] == "—" and cells[12] == "—", cells  # ITL p50, ITL p99, cache hits
    assert cells[6] == "—"  # TPOT p50


def test_the_naive_verdict_compares_the_same_requests_on_both_sides():
    from bench import peers

    def row(rps, p99=100.0):
        return {"request_throughput": rps, "p99_e2el_ms": p99, "output_throughput": 1.0, "median_ttft_ms": 1.0}

    share = peers.share_label("raygate", 0.25)
    # raygate on the whole workload (a warm cache for most of it) against naive on its first 25%:
    # 40x, but not a comparison of the same requests; raygate on that same 25%: 8x, the verdict.
    results = {"repeat-heavy": {"raygate": row(40.0), share: row(8.0), "naive": row(1.0, p99=200.0)}}
    (verdict,) = peers.acceptance(results, naive_share=0.25)
    assert verdict["measured"].startswith("8.0x") and not verdict["met"]
    assert "first 25%" in verdict["target"]
    del results["repeat-heavy"][share]
    assert peers.acceptance(results, naive_share=0.25) == []  # no same-share row: no verdict
    (full,) = peers.acceptance({"repeat-heavy": {"raygate": row(12.0), "naive": row(1.0, p99=200.0)}}, 1.0)
    assert full["met"] and "first" not in full["target"]
    assert peers._share(list(range(320)), 0.25) == list(range(80))  # the first requests, as naive runs them


def test_cache_workload_reports_failed_requests_apart_from_throughput_and_latency():
    from bench import cache_workload

    workload = [("unique", "a"), ("repeat", "a"), ("unique", "b"), ("unique", "c")]
    answers = ["miss", "hit-exact", "error", "error"]
    latencies = [0.4, 0.01, 30.0, 0.001]  # a timed-out request, and one refused at once
    r = cache_workload.summarize(workload, answers, latencies, elapsed_s=2.0)
    assert r["completed"] == 2 and r["errors"] == 2 and r["requests"] == 4
    assert r["request_throughput"] == pytest.approx(1.0)  # 2 answered in 2 s, not 4
    assert r["p99_e2el_ms"] < 400.0 + 1e-6 and r["p50_e2el_ms"] == pytest.approx(205.0)
    assert "error" not in r["p50_e2el_ms_by_answer"] and r["cache_answers"]["unique"] == {"miss": 1, "error": 2}
    none = cache_workload.summarize(workload[:1], ["error"], [1.0], elapsed_s=1.0)
    assert none["p50_e2el_ms"] is None and none["request_throughput"] == 0


def test_soak_growth_is_measured_after_the_warm_up_never_from_the_end_itself():
    from bench import soak

    def sample(t, rss):
        return {"t": t, "roles": {"ingress": {"rss_mib": rss, "fds": 10}}, "requests": 0}

    samples = [sample(0, 100), sample(60, 150), sample(120, 400), sample(180, 410)]
    g = soak.growth_after_warmup(samples, warmup_s=60)["ingress"]
    assert (g["from_s"], g["to_s"], g["rss_growth_mib"]) == (60, 180, 260) and not g["within_bound"]
    with pytest.raises(ValueError):  # a warm-up as long as the run: the end compared with itself
        soak.growth_after_warmup(samples, warmup_s=180)
    with pytest.raises(ValueError):  # a warm-up longer than the run (the old code fell back to the start)
        soak.growth_after_warmup(samples, warmup_s=600)
    with pytest.raises(SystemExit):  # refused before any server starts
        soak.main(["--minutes", "2", "--warmup-minutes", "2"])


def test_the_machine_is_read_not_typed(monkeypatch):
    from bench import report

    monkeypatch.setattr(report.shutil, "which", lambda name: None)
    assert report.gpus() == [] and report.machine()["gpus"] == []
    assert "no GPU" in report.machine_line(report.machine())

    class Done:
        returncode, stdout = 0, "NVIDIA L4\nNVIDIA L4\n"

    monkeypatch.setattr(report.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(report.subprocess, "run", lambda *a, **k: Done())
    m = report.machine()
    assert m["gpus"] == ["NVIDIA L4", "NVIDIA L4"] and "no GPU" not in report.machine_line(m)
    # A result written before GPUs were read says so, instead of claiming there was none.
    assert "not recorded" in report.machine_line({"cpus": 2, "memory_gib": 24, "platform": "x", "gpu": None})


def test_cache_workload_names_the_entry_a_semantic_hit_was_served_from():
    from bench import cache_workload

    workload = [("unique", "How far is the Moon?"), ("unique", "How far is the Sun?"),
                ("paraphrase", "what's the moon's distance"), ("unique", "How far is Mars?")]
    answers = ["miss", "miss", "hit-semantic", "hit-semantic"]
    texts = ["384,400 km", "150 million km", "384,400 km", "150 million km"]
    hits = cache_workload.semantic_hit_sources(workload, answers, texts, [None, None, "0.93", "0.91"])
    assert hits == [
        {"kind": "paraphrase", "prompt": "what's the moon's distance", "similarity": "0.93",
         "sources": ["How far is the Moon?"]},
        # a prompt sent once, answered with another prompt's answer: the wrong answer, named
        {"kind": "unique", "prompt": "How far is Mars?", "similarity": "0.91", "sources": ["How far is the Sun?"]},
    ]
