"""The test tree can be collected as one: `pytest tests` (the README's test command, what CI runs).

tests/unit and tests/integration have no __init__.py, so pytest imports each test file under its bare
file name: two files with one name in the two folders stop the whole run at collection ("import file
mismatch"), even though `pytest tests/unit` and `pytest tests/integration` each pass alone. That
stopped CI once (tests/unit/test_placement.py beside tests/integration/test_placement.py). This test
fails in the unit run, where it is cheap to see.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def duplicate_module_names(root: Path) -> dict[str, list[str]]:
    """Python files under ``root`` (conftest.py aside) that share a file name, by name."""
    seen: dict[str, list[str]] = defaultdict(list)
    for path in root.rglob("*.py"):
        if path.name != "conftest.py" and "__pycache__" not in path.parts:
            seen[path.name].append(str(path.relative_to(root)))
    return {name: paths for name, paths in seen.items() if len(paths) > 1}


def test_no_two_test_modules_share_a_name():
    assert duplicate_module_names(TESTS) == {}


def test_the_check_sees_a_planted_duplicate(tmp_path):
    for folder in ("unit", "integration"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "test_same.py").write_text("")
        (tmp_path / folder / "conftest.py").write_text("")
    found = duplicate_module_names(tmp_path)
    assert list(found) == ["test_same.py"]
    assert sorted(found["test_same.py"]) == ["integration/test_same.py", "unit/test_same.py"]
