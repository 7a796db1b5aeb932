"""Where benchmark results go: JSON files under bench/results/ (the tables go to the terminal)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_json(path: Path, results: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")
