"""CPU time per component during a benchmark: where the machine's cores went, per request.

On this 2-core machine the serving layer's CPU is taken from the engine, so CPU-ms per request by
component (engine worker, engine core, LLM replica, ingress, proxy, Ray daemons, client) is the
profile that explains a throughput ratio. Processes are grouped by their title (`ray::...`,
`VLLM::...`), sampled before and after the run; processes that start during it count from zero.
"""

from __future__ import annotations

import os
import re
import resource

import psutil

_GROUPS = [
    (re.compile(r"VLLM::Worker"), "vllm worker"),
    (re.compile(r"VLLM::EngineCore"), "vllm engine core"),
    (re.compile(r"ray::ServeReplica:[^:]+:LLM"), "serve LLM replica"),
    (re.compile(r"ray::ServeReplica:[^:]+:IngressRouter"), "serve ingress router"),
    (re.compile(r"ray::ServeReplica:[^:]+:Ingress"), "serve ingress"),
    (re.compile(r"ray::ServeReplica:[^:]+:SemanticCache"), "serve cache replicas"),
    (re.compile(r"valkey-server"), "valkey"),
    (re.compile(r"ray::ServeReplica"), "serve other replicas"),
    (re.compile(r"ray::ProxyActor"), "serve proxy"),
    (re.compile(r"ray::ServeController"), "serve controller"),
    (re.compile(r"haproxy"), "haproxy"),
    (re.compile(r"vllm\.entrypoints\.openai\.api_server|vllm serve"), "vllm api server"),
    (re.compile(r"bench\.vllm_bench|vllm\.benchmarks"), "benchmark client"),
    (re.compile(r"raylet|gcs_server|dashboard|log_monitor|ray::|monitor\.py|runtime_env|ray/_private"), "ray daemons"),
]


def _group(cmdline: str) -> str:
    for pat, name in _GROUPS:
        if pat.search(cmdline):
            return name
    return "other"


_DAEMON_PARTS = re.compile(r"(raylet|gcs_server|dashboard/agent\.py|dashboard/dashboard\.py|log_monitor\.py|"
                           r"monitor\.py|runtime_env/agent/main\.py|ray::IDLE|ray::[A-Za-z_]+)")


def _detail(cmd: str) -> str:
    """The group, and for Ray's daemons which one (raylet, gcs_server, the dashboard and its agent...)."""
    group = _group(cmd)
    if re.search(r"(^|[ /])serve run( |$)", cmd):
        return "other: serve run"
    if group in ("ray daemons", "other"):
        m = _DAEMON_PARTS.search(cmd)
        name = m.group(1) if m else (os.path.basename(cmd.split(" ", 1)[0]) or "?")
        return f"{group}: {name}"
    return group


def snapshot(detail: bool = False) -> dict[int, tuple[str, float]]:
    """{pid: (group, CPU seconds so far)} of every process; `detail` names each Ray daemon apart."""
    out = {}
    label = _detail if detail else _group
    for p in psutil.process_iter(["cmdline", "cpu_times"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            t = p.info["cpu_times"]
            if detail and not cmd:
                continue  # a kernel thread (memory monitors and the like): not the machine's programs
            if t is not None:
                out[p.pid] = (label(cmd), t.user + t.system)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    out.pop(os.getpid(), None)
    return out


def diff(before: dict, after: dict) -> dict[str, float]:
    """CPU seconds used per group between two snapshots."""
    used: dict[str, float] = {}
    for pid, (group, t) in after.items():
        t0 = before.get(pid, (group, 0.0))[1]
        used[group] = used.get(group, 0.0) + max(0.0, t - t0)
    return dict(sorted(used.items(), key=lambda kv: -kv[1]))


def children_cpu_s() -> float:
    """CPU seconds of this process's exited, waited-for children (e.g. a benchmark client)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime
