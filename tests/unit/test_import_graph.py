"""The package layers import downward only.

common/ is beneath everything; cache/ and router/ sit beside each other on common/; deployments/ (the
Serve application) sits on all three; bench/ and scripts/ may use anything. An upward import (cache/
reaching into deployments/, say) ties a lower layer to the application built on it: this test reads
every module's imports (top level and inside functions) and fails naming the offending line.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# For each package, the raygate packages it may import (itself always allowed).
ALLOWED = {
    "common": set(),
    "cache": {"common"},
    "router": {"common"},
    "deployments": {"common", "cache", "router"},
}
RAYGATE_PACKAGES = {"common", "cache", "router", "deployments", "bench", "scripts", "tests"}


def _imported_packages(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return [(line, pkg) for line, pkg in found if pkg in RAYGATE_PACKAGES]


def upward_imports() -> list[str]:
    bad = []
    for package, allowed in ALLOWED.items():
        for path in sorted((REPO / package).glob("*.py")):
            for line, imported in _imported_packages(path):
                if imported != package and imported not in allowed:
                    bad.append(f"{path.relative_to(REPO)}:{line} imports {imported}")
    return bad


def test_no_package_imports_upward():
    assert upward_imports() == []


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The checker itself can fail: a cache module importing deployments is reported."""
    fake = tmp_path / "cache"
    fake.mkdir()
    (fake / "bad.py").write_text("def f():\n    from deployments.config import AppConfig\n")
    for name in ("common", "router", "deployments"):
        (tmp_path / name).mkdir()
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert upward_imports() == ["cache/bad.py:2 imports deployments"]
