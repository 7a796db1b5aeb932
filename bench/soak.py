"""Soak: minutes of mixed traffic, sampling every process's memory and open file descriptors.

    python -m bench.soak                     # 10 minutes; table, JSON and PNG in bench/results/
    python -m bench.soak --minutes 2         # a quick look (growth after a 24 s warm-up: a fifth of the run)

One `serve run serve_config.yaml` with auth on (two tenants) and the cache on. `--concurrency` workers
send, in a fixed random mix: fresh chats (cache misses), repeats (hits), streams read to the end,
streams dropped after a few chunks (client cancellation), bad inputs (invalid JSON, an unknown field,
an unknown model, a wrong key) and admin reads. Every `--sample-s` seconds it records RSS and open
file descriptors of every process of the server (Ray's, the replicas', vLLM's engine processes,
HAProxy, Valkey), summed by role. Reported: each role's RSS and fds at the end of warm-up and at
the end, the growth against the stated bound, and unexpected responses (a 5xx, a transport error,
or a status the request's kind does not expect), which must be 0.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import re
import threading
import time
from pathlib import Path
from typing import Optional

import psutil

from bench.report import add_out_arg, write_result
from bench.servers import REPO, Raygate, add_model_arg, config_for_model, free_port

KEYS = {"team-a": "sk-soak-team-a", "team-b": "sk-soak-team-b"}
# Growth allowed after warm-up, per role: RSS within this many MiB or percent (the larger), fds within this many.
RSS_BOUND_MIB, RSS_BOUND_PCT, FD_BOUND = 64, 10.0, 16

_ROLES = [  # (role, pattern on the command line), first match wins
    ("vllm engine", r"VLLM::"), ("llm replica", r"ServeReplica:raygate:LLM"),
    ("ingress", r"ServeReplica:raygate:Ingress"), ("semantic cache", r"ServeReplica:raygate:SemanticCache"),
    ("valkey", r"valkey-server"), ("redis replica", r"ServeReplica:raygate:CacheRedis"),
    ("serve controller", r"ServeController"), ("haproxy", r"haproxy"), ("raylet", r"raylet"),
    ("gcs", r"gcs_server"), ("serve run", r"serve run"), ("ray other", r"ray|dashboard|log_monitor"),
]


def _role(cmdline: str) -> Optional[str]:
    for role, pattern in _ROLES:
        if re.search(pattern, cmdline):
            return role
    return None


def sample_processes(root_pid: int) -> dict[str, dict]:
    """RSS (MiB) and open fds summed by role over the server's process tree and Ray's processes."""
    out: dict[str, dict] = collections.defaultdict(lambda: {"rss_mib": 0.0, "fds": 0, "processes": 0})
    try:
        tree = [psutil.Process(root_pid)] + psutil.Process(root_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    seen = {p.pid for p in tree}
    for p in psutil.process_iter(["cmdline"]):
        if p.pid not in seen and _role(" ".join(p.info["cmdline"] or [])) in ("haproxy", "valkey"):
            tree.append(p)  # started in sessions of their own
            seen.add(p.pid)
    for p in tree:
        try:
            role = _role(" ".join(p.cmdline())) or "other"
            out[role]["rss_mib"] += p.memory_info().rss / 2**20
            out[role]["fds"] += p.num_fds()
            out[role]["processes"] += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return {k: {**v, "rss_mib": round(v["rss_mib"], 1)} for k, v in out.items()}


class Traffic:
    """The request mix; each request's kind says which statuses it expects."""

    KINDS = {"fresh": 0.25, "repeat": 0.25, "stream": 0.15, "cancel": 0.1, "bad": 0.2, "admin": 0.05}
    EXPECTED = {"fresh": {200, 429, 503}, "repeat": {200, 429, 503}, "stream": {200, 429, 503},
                "cancel": {200, 429, 503}, "bad": {400, 401, 404}, "admin": {200}}

    def __init__(self, base_url: str, model: str, seed: int):
        self.base_url, self.model = base_url, model
        self.rng = random.Random(seed)
        self.counts: collections.Counter = collections.Counter()
        self.unexpected: list[str] = []
        self.n = 0

    def _chat(self, text: str, **extra) -> dict:
        return {"model": self.model, "messages": [{"role": "user", "content": text}], "temperature": 0,
                "max_tokens": 24, **extra}

    async def one(self, http) -> None:
        kind = self.rng.choices(list(self.KINDS), weights=list(self.KINDS.values()))[0]
        tenant = self.rng.choice(list(KEYS))
        auth = {"Authorization": f"Bearer {KEYS[tenant]}"}
        url = self.base_url + "/v1/chat/completions"
        self.n += 1
        try:
            if kind == "fresh":
                r = await http.post(url, json=self._chat(f"question {self.n}: {self.rng.random()}"), headers=auth)
            elif kind == "repeat":
                r = await http.post(url, json=self._chat(f"popular question {self.rng.randrange(20)}"), headers=auth)
            elif kind in ("stream", "cancel"):
                body = self._chat(f"stream {self.n}", stream=True, max_tokens=64 if kind == "stream" else 400,
                                  ignore_eos=True, cache={"mode": "off"})
                async with http.stream("POST", url, json=body, headers=auth) as r:
                    lines, last = 0, ""
                    async for line in r.aiter_lines():
                        lines += 1
                        if line:  # SSE separates events with blank lines
                            last = line
                        if kind == "cancel" and lines >= 6:
                            break  # the client goes away mid-stream
                    if kind == "stream" and r.status_code == 200 and last != "data: [DONE]":
                        self.unexpected.append(f"stream ended without [DONE]: {last[:80]}")
            elif kind == "bad":
                choice = self.rng.randrange(4)
                if choice == 0:
                    r = await http.post(url, content=b"{not json", headers={**auth, "content-type": "application/json"})
                elif choice == 1:
                    r = await http.post(url, json=self._chat("x", max_token=3), headers=auth)
                elif choice == 2:
                    r = await http.post(url, json={**self._chat("x"), "model": "no-such-model"}, headers=auth)
                else:
                    r = await http.post(url, json=self._chat("x"), headers={"Authorization": "Bearer sk-wrong"})
            else:
                r = await http.get(self.base_url + "/v1/models", headers=auth)
            status = r.status_code
        except Exception as e:  # noqa: BLE001 - counted, the soak goes on
            status = type(e).__name__
        self.counts[f"{kind} {status}"] += 1
        if status not in self.EXPECTED[kind]:
            self.unexpected.append(f"{kind}: {status}")


async def drive(traffic: Traffic, concurrency: int, seconds: float) -> None:
    import httpx

    end = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=concurrency * 2)) as http:
        async def worker():
            while time.monotonic() < end:
                await traffic.one(http)
        await asyncio.gather(*(worker() for _ in range(concurrency)))


def plot(samples: list[dict], warmup_s: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    roles = sorted({r for s in samples for r in s["roles"]}, key=lambda r: -samples[-1]["roles"].get(r, {}).get(
        "rss_mib", 0))
    t = [s["t"] / 60 for s in samples]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for role in roles:
        a.plot(t, [s["roles"].get(role, {}).get("rss_mib", 0) for s in samples], label=role)
        b.plot(t, [s["roles"].get(role, {}).get("fds", 0) for s in samples], label=role)
    for ax, title in ((a, "RSS (MiB) by role"), (b, "open file descriptors by role")):
        ax.axvline(warmup_s / 60, color="gray", ls=":")
        ax.set_xlabel("minutes")
        ax.set_title(title)
    b.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def growth_after_warmup(samples: list[dict], warmup_s: float) -> dict[str, dict]:
    """Per role, RSS and fds at the first sample after the warm-up against the last sample, and
    whether the growth is within the bounds. Raises ValueError when no sample falls between the
    warm-up's end and the last one (a comparison of the end with itself, or with the start)."""
    warm = next((s for s in samples if s["t"] >= warmup_s), None)
    end = samples[-1] if samples else None
    if warm is None or warm is end:
        raise ValueError(f"no sample after the {warmup_s:g} s warm-up and before the end: "
                         f"{[s['t'] for s in samples]}")
    growth = {}
    for role in sorted(set(warm["roles"]) | set(end["roles"])):
        a, b = warm["roles"].get(role, {}), end["roles"].get(role, {})
        d_rss = b.get("rss_mib", 0) - a.get("rss_mib", 0)
        d_fds = b.get("fds", 0) - a.get("fds", 0)
        rss_bound = max(RSS_BOUND_MIB, a.get("rss_mib", 0) * RSS_BOUND_PCT / 100)
        growth[role] = {"rss_warm_mib": a.get("rss_mib", 0), "rss_end_mib": b.get("rss_mib", 0),
                        "rss_growth_mib": round(d_rss, 1), "rss_bound_mib": round(rss_bound, 1),
                        "fds_warm": a.get("fds", 0), "fds_end": b.get("fds", 0), "fds_growth": d_fds,
                        "within_bound": d_rss <= rss_bound and d_fds <= FD_BOUND,
                        "from_s": warm["t"], "to_s": end["t"]}
    return growth


def main(argv: Optional[list[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=REPO / "serve_config.yaml")
    add_model_arg(p, default="builtin:tiny-llama")  # the serving layer's cost, not the model's
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--warmup-minutes", type=float, default=None,
                   help="growth is measured from the end of the warm-up; default: 2, or a fifth of a shorter run")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--sample-s", type=float, default=10)
    p.add_argument("--seed", type=int, default=0)
    add_out_arg(p, "soak")
    args = p.parse_args(argv)
    args.config = config_for_model(Path(args.config), args.model)
    if args.warmup_minutes is None:
        args.warmup_minutes = min(2.0, args.minutes / 5)
    if not 0 <= args.warmup_minutes < args.minutes:
        p.error(f"--warmup-minutes ({args.warmup_minutes:g}) must be shorter than --minutes ({args.minutes:g}): "
                "the growth after warm-up would compare the end with itself")
    if (args.minutes - args.warmup_minutes) * 60 < 2 * args.sample_s:
        p.error("the run after warm-up must span at least two samples (--sample-s)")
    import yaml

    from deployments.auth import hash_key
    from deployments.config import AppConfig

    app_args = yaml.safe_load(args.config.read_text())["applications"][0]["args"]
    model = AppConfig.model_validate(app_args).models[0].name
    overrides = {"auth.enabled": True, "auth.api_keys": [{"sha256": hash_key(k), "tenant": t} for t, k in KEYS.items()]}
    srv = Raygate(args.config, free_port(), REPO / "bench" / "results" / "logs", label="raygate-soak",
                  overrides=overrides)
    print("starting raygate ...", flush=True)
    srv.start()
    traffic = Traffic(srv.base_url, model, args.seed)
    samples: list[dict] = []
    t0 = time.monotonic()
    stop = threading.Event()

    def sampler():
        while not stop.is_set():
            samples.append({"t": round(time.monotonic() - t0, 1), "roles": sample_processes(srv.proc.pid),
                            "requests": traffic.n})
            last = samples[-1]
            total = sum(r["rss_mib"] for r in last["roles"].values())
            print(f"  t={last['t']:>6.0f}s requests={last['requests']:>6} rss={total:>8.0f} MiB "
                  f"fds={sum(r['fds'] for r in last['roles'].values()):>6}", flush=True)
            stop.wait(args.sample_s)

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    try:
        asyncio.run(drive(traffic, args.concurrency, args.minutes * 60))
        healthy = srv.is_ready()
    finally:
        stop.set()
        thread.join(timeout=30)
        srv.stop()
    growth = growth_after_warmup(samples, args.warmup_minutes * 60)
    results = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "bounds": {"rss_mib": RSS_BOUND_MIB, "rss_pct": RSS_BOUND_PCT, "fds": FD_BOUND},
        "requests": traffic.n, "responses": dict(traffic.counts), "unexpected": traffic.unexpected[:50],
        "unexpected_count": len(traffic.unexpected), "healthy_after": healthy, "growth_after_warmup": growth,
        "samples": samples,
    }
    print(f"\n{traffic.n} requests in {args.minutes:g} min; unexpected responses: {len(traffic.unexpected)} "
          f"(target 0); healthy afterwards: {healthy}")
    print(f"\n{'role':<18}{'RSS warm':>10}{'RSS end':>10}{'growth':>9}{'bound':>8}{'fds warm':>10}{'fds end':>9}"
          f"{'ok':>5}")
    for role, g in growth.items():
        print(f"{role:<18}{g['rss_warm_mib']:>10.0f}{g['rss_end_mib']:>10.0f}{g['rss_growth_mib']:>9.1f}"
              f"{g['rss_bound_mib']:>8.0f}{g['fds_warm']:>10}{g['fds_end']:>9}{'yes' if g['within_bound'] else 'NO':>5}")
    print("\nresponses:", dict(sorted(traffic.counts.items())))
    png = args.out.with_suffix(".png")
    plot(samples, args.warmup_minutes * 60, png)
    write_result(args.out, results, "bench.soak", argv)
    print(f"plot: {png}")
    return results


if __name__ == "__main__":
    main()
