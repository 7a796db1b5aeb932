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
