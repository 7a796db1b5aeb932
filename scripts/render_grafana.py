"""Render raygate's Grafana dashboard (dashboards/raygate.json) from the panel list below.

    python scripts/render_grafana.py           # write it
    python scripts/render_grafana.py --check   # exit 1 if the committed file differs

Why generated: a dashboard's JSON is hundreds of lines of layout around a few dozen PromQL
expressions; the expressions are what matter and what reviews should see. Every series named here
is one raygate, vLLM or Ray Serve exports through Ray's metrics agent, and every label a panel groups
or filters by is one its series carries (tests/unit/test_grafana_dashboard.py); a real Prometheus
scraping a live app returns data for every query (tests/integration/test_prometheus_dashboard.py).
Import the JSON into Grafana with a Prometheus data source that scrapes Ray (Ray's docs: "Collecting
and monitoring metrics").
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "dashboards" / "raygate.json"


def _quantiles(metric: str, by: str, legend: str) -> list[tuple[str, str]]:
    labels = ", ".join(["le", *([by] if by else [])])
    return [(f"histogram_quantile({q}, sum by ({labels}) (rate({metric}_bucket[$__rate_interval])))",
             f"p{int(q * 100)} {legend}") for q in (0.5, 0.99)]


# (row, title, unit, [(expr, legend)], description)
PANELS: list[tuple[str, str, str, list[tuple[str, str]], str]] = [
    ("Traffic", "Requests/s by route and status", "reqps",
     [("sum by (route, status_code) (rate(ray_serve_num_http_requests_total{application=\"raygate\"}[$__rate_interval]))",
       "{{route}} {{status_code}}")],
     "Every HTTP request at Serve's proxy (HAProxy), by route and status code. 499 is a client that hung up "
     "before the response ended."),
    ("Traffic", "Latency at the ingress (arrival to last byte)", "s",
     _quantiles("ray_raygate_request_seconds", "model, source", "{{model}} {{source}}"),
     "Successful requests, by what answered: the model or the cache."),
    ("Traffic", "Time to first chunk at the ingress (streams)", "s",
     _quantiles("ray_raygate_first_chunk_seconds", "model, source", "{{model}} {{source}}"),
     "The client's TTFT less the network."),
    ("Engine", "vLLM time to first token", "s",
     _quantiles("ray_vllm_time_to_first_token_seconds", "model_name", "{{model_name}}"),
     "Inside the engine: from the request's arrival at vLLM to its first token."),
    ("Engine", "vLLM inter-token latency", "s",
     _quantiles("ray_vllm_inter_token_latency_seconds", "model_name", "{{model_name}}"), ""),
    ("Engine", "vLLM end-to-end request latency", "s",
     _quantiles("ray_vllm_e2e_request_latency_seconds", "model_name", "{{model_name}}"), ""),
    ("Queues", "Engine running and waiting, per replica", "short",
     [("sum by (ReplicaId) (ray_vllm_num_requests_running)", "running {{ReplicaId}}"),
      ("sum by (ReplicaId) (ray_vllm_num_requests_waiting)", "waiting {{ReplicaId}}")],
     "The queue the autoscaling policy counts (with the handles' queue)."),
    ("Queues", "Admission: queued by priority, in flight", "short",
     [("sum by (model, priority) (ray_raygate_admission_queued)", "queued {{model}} {{priority}}"),
      ("sum by (model) (ray_raygate_admission_inflight)", "in flight {{model}}")],
     "Requests waiting at the ingress for a slot, and those at the model."),
    ("Queues", "Rejections by reason", "reqps",
     [("sum by (model, reason) (rate(ray_raygate_admission_rejections_total[$__rate_interval]))",
       "{{model}} {{reason}}"),
      ("sum by (tenant, limit) (rate(ray_raygate_rate_limited_total[$__rate_interval]))", "429 {{tenant}} {{limit}}"),
      ("sum by (status) (rate(ray_raygate_auth_failures_total[$__rate_interval]))", "auth {{status}}")],
     "503s from admission control, 429s from tenant limits, 401/403s."),
    ("Queues", "Refusals and errors by status", "reqps",
     [("sum by (status_code) (rate(ray_serve_num_http_requests_total{status_code=~\"4..|5..\"}[$__rate_interval]))",
       "{{status_code}}")],
     "Every 4xx/5xx answer at Serve's proxy, of every application and of HAProxy itself (the front door's 503s, "
     "413 for a body over ingress.max_body_bytes, 400s, 404s, 429s); 499 counts clients that hung up."),
    ("Queues", "Deadline drops by stage", "reqps",
     [("sum by (model, stage) (rate(ray_raygate_deadline_drops_total[$__rate_interval]))", "{{model}} {{stage}}")],
     "Requests whose x-raygate-timeout-ms / x-raygate-deadline passed before the engine (503 + Retry-After): "
     "while waiting for a slot at the ingress, or in Serve's queues before the replica."),
    ("Cache", "Cache lookups by result", "reqps",
     [("sum by (result) (rate(ray_raygate_cache_lookups_total[$__rate_interval]))", "{{result}}")],
     "hit_exact, hit_semantic, coalesced, miss, bypass (Redis slow or down), off."),
    ("Cache", "Cache hit ratio", "percentunit",
     [("sum(rate(ray_raygate_cache_lookups_total{result=~\"hit_.*|coalesced\"}[$__rate_interval])) / "
       "sum(rate(ray_raygate_cache_lookups_total{result!=\"off\"}[$__rate_interval]))", "hits")], ""),
    ("Cache", "Semantic lookup latency", "s",
     _quantiles("ray_raygate_cache_lookup_seconds", "", "all replicas"),
     "One lookup in a SemanticCache replica: embedding, search, guards, fetch."),
    ("Routing", "Routing decisions", "reqps",
     [("sum by (deployment, decision) (rate(ray_raygate_router_decisions_total[$__rate_interval]))",
       "{{deployment}} {{decision}}")],
     "affinity (session), prefix (cached prefix), balance, fallback (prefix holder overloaded)."),
    ("Routing", "vLLM prefix-cache hit rate", "percentunit",
     [("sum by (model_name) (rate(ray_vllm_prefix_cache_hits_total[$__rate_interval])) / "
       "sum by (model_name) (rate(ray_vllm_prefix_cache_queries_total[$__rate_interval]))", "{{model_name}}")],
     "Prompt tokens found in the KV cache: what prefix-aware routing buys."),
    ("Capacity", "Healthy replicas by deployment", "short",
     [("sum by (deployment) (ray_serve_deployment_replica_healthy{application=\"raygate\"})", "{{deployment}}")],
     "Autoscaling at work."),
    ("Capacity", "KV-cache usage per replica", "percentunit",
     [("max by (ReplicaId) (ray_vllm_kv_cache_usage_perc)", "{{ReplicaId}}")], ""),
]


def series_names() -> set[str]:
    """Every exported series (as scraped: with _bucket/_total) that the dashboard's expressions read."""
    return {name for _, _, _, targets, _ in PANELS for expr, _ in targets
            for name in re.findall(r"\b(ray_[a-z0-9_]+)", expr)}


def dashboard() -> dict:
    panels, y, pid = [], 0, 1
    rows: dict[str, list] = {}
    for row, *rest in PANELS:
        rows.setdefault(row, []).append(rest)
    for row, items in rows.items():
        panels.append({"type": "row", "title": row, "id": pid, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid, y = pid + 1, y + 1
        for i, (title, unit, targets, description) in enumerate(items):
            panels.append({
                "type": "timeseries", "title": title, "description": description, "id": pid,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "gridPos": {"h": 8, "w": 8, "x": 8 * (i % 3), "y": y + 8 * (i // 3)},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
                "targets": [{"expr": expr, "legendFormat": legend, "refId": chr(ord("A") + j),
                             "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                            for j, (expr, legend) in enumerate(targets)],
            })
            pid += 1
        y += 8 * ((len(items) + 2) // 3)
    return {
        "title": "raygate", "uid": "raygate", "schemaVersion": 39, "version": 1, "editable": True,
        "tags": ["raygate", "ray-serve", "vllm"], "time": {"from": "now-30m", "to": "now"}, "refresh": "10s",
        "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus",
                                 "label": "Prometheus", "current": {}}]},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="fail if dashboards/raygate.json is stale")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: run python scripts/render_grafana.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
