"""Where benchmark results go: JSON files under bench/results/ (the tables go to the terminal)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

RESULTS = Path(__file__).resolve().parent / "results"


def write_json(path: Path, results: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")


def add_out_arg(parser, name: str) -> None:
    """Every benchmark's `--out`: its JSON, by default bench/results/<name>.json."""
    parser.add_argument("--out", type=Path, default=RESULTS / f"{name}.json",
                        help=f"where the JSON goes (default: bench/results/{name}.json)")


def write_result(path: Path, results: dict, module: str, argv: Optional[list[str]] = None) -> None:
    """Write a benchmark's JSON headed by where it came from, the same in every result: the command
    as run (`python -m <module> <args>`), the local time and the machine (read, never typed)."""
    args = list(argv) if argv is not None else sys.argv[1:]
    head = {"command": " ".join(["python -m", module, *args]), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "machine": machine()}
    write_json(path, {**head, **{k: v for k, v in results.items() if k not in head}})


def gpus() -> list[str]:
    """The GPUs this machine has, by name, as the driver reports them (`nvidia-smi`); [] without one."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def machine() -> dict:
    """What a result ran on, read from the machine: CPUs, memory, platform and GPUs (never typed)."""
    import psutil

    return {"cpus": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30),
            "platform": platform.platform(), "gpus": gpus()}


def machine_line(m: dict) -> str:
    """"2 CPUs, 24 GiB, no GPU (Linux-...)" from a result's `machine`; a result written before GPUs were
    read says so instead of guessing."""
    if "gpus" not in m:
        gpu = "GPUs not recorded"
    elif not m["gpus"]:
        gpu = "no GPU"
    else:
        gpu = ", ".join(m["gpus"])
    return f"{m.get('cpus')} CPUs, {m.get('memory_gib')} GiB, {gpu} ({m.get('platform')})"
