"""The Grafana dashboard (dashboards/raygate.json) is current and reads only series raygate declares.

The live check -- every series it reads is exported by a running app -- is
tests/integration/test_metrics.py; this one needs no cluster.
"""

import importlib.util
import json
import re
from pathlib import Path

from ray.util.metrics import Counter, Histogram

from cache import metrics as cache_metrics
from deployments import serving_metrics
from router import metrics as router_metrics

REPO = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("render_grafana", REPO / "scripts" / "render_grafana.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _declared() -> dict[str, set[str]]:
    """Exported name (as Prometheus sees it) -> the suffixes its kind has."""
    out = {}
    for module in (cache_metrics, serving_metrics, router_metrics):
        for obj in vars(module).values():
            if isinstance(obj, Histogram):
                out["ray_" + obj._name] = {"_bucket", "_count", "_sum"}
            elif isinstance(obj, Counter):
                out["ray_" + obj._name] = {"_total"}
            elif hasattr(obj, "_name") and hasattr(obj, "set"):
                out["ray_" + obj._name] = {""}
    return out


def test_committed_dashboard_is_current():
    assert _script().main(["--check"]) == 0, "run python scripts/render_grafana.py"


def test_every_raygate_series_it_reads_is_declared_with_its_kind():
    declared = _declared()
    used = {n for n in _script().series_names() if n.startswith("ray_raygate_")}
    assert len(used) >= 8
    for name in used:
        base = re.sub(r"(_bucket|_count|_sum|_total)$", "", name)
        assert base in declared, f"{name}: no metric named {base[4:]} in cache/, deployments/ or router/"
        assert name[len(base):] in declared[base], f"{name}: wrong suffix for its kind"


def test_panels_are_wellformed_and_do_not_overlap():
    board = json.loads((REPO / "dashboards" / "raygate.json").read_text())
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for p in board["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {p['title']!r} overlaps another"
                cells.add((x, y))
        if p["type"] != "row":
            assert p["targets"] and all(t["expr"] and t["refId"] for t in p["targets"])
            # Parentheses balance in every PromQL expression (a cheap syntax check).
            for t in p["targets"]:
                depth = 0
                for ch in t["expr"]:
                    depth += {"(": 1, ")": -1}.get(ch, 0)
                    assert depth >= 0
                assert depth == 0, t["expr"]


# Labels Ray's metrics agent adds to every series it exports (seen on a live scrape).
RAY_LABELS = {"Component", "NodeAddress", "SessionName", "Version", "WorkerId"}
# vLLM's series through Ray's stat logger (RayPrometheusStatLogger), as scraped from a live replica.
VLLM_LABELS = {"model_name", "engine", "ReplicaId"}
# Serve's replica-health gauge (ray/serve/_private/deployment_state.py; `replica` only with
# RAY_SERVE_CONTROLLER_METRICS_INCLUDE_HIGH_CARDINALITY_TAGS).
SERVE_HEALTHY_LABELS = {"deployment", "application"}


def _labels_of(series: str) -> set[str]:
    """The labels a series carries, from the code that declares it."""
    base = re.sub(r"(_bucket|_count|_sum|_total)$", "", series)
    if base.startswith("ray_raygate_"):
        for module in (cache_metrics, serving_metrics, router_metrics):
            for obj in vars(module).values():
                if getattr(obj, "_name", None) == base[4:]:
                    return RAY_LABELS | set(obj._tag_keys)
        raise AssertionError(f"{series}: not declared")
    if base == "ray_serve_num_http_requests":
        from ray.serve._private.common import RequestProtocol
        from ray.serve._private.request_ingress_metrics import RequestIngressMetrics

        counter = RequestIngressMetrics(RequestProtocol.HTTP, source="proxy", node_id="n",
                                        node_ip_address="127.0.0.1").request_counter
        assert counter._name == base[4:]
        return RAY_LABELS | set(counter._tag_keys)
    if base == "ray_serve_deployment_replica_healthy":
        return RAY_LABELS | SERVE_HEALTHY_LABELS
    if base.startswith("ray_vllm_"):
        return RAY_LABELS | VLLM_LABELS
    raise AssertionError(f"{series}: no known labels")


def _label_uses(expr: str) -> list[tuple[str, str]]:
    """(series, label) for every `by (...)` grouping and every `{label...}` matcher in an expression."""
    uses = []
    for m in re.finditer(r"\bby \(([^)]*)\) \(", expr):
        series = re.search(r"\b(ray_[a-z0-9_]+)", expr[m.end():]).group(1)
        uses += [(series, label.strip()) for label in m.group(1).split(",") if label.strip() not in ("", "le")]
    for m in re.finditer(r"\b(ray_[a-z0-9_]+)\{([^}]*)\}", expr):
        uses += [(m.group(1), label) for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", m.group(2))]
    return uses


def test_every_panel_groups_and_filters_by_labels_its_series_carry():
    """Grouping by a label the series lacks (Serve's `code` for `status_code`, `ReplicaId` on the
    cache's latency) silently merges every series into one; the live check is
    tests/integration/test_prometheus_dashboard.py."""
    uses = [(title, use) for _, title, _, targets, _ in _script().PANELS for expr, _ in targets
            for use in _label_uses(expr)]
    assert len(uses) >= 20
    wrong = [f"{title}: {series} has no label {label!r}" for title, (series, label) in uses
             if label not in _labels_of(series)]
    assert not wrong, wrong
