"""How long an LLM replica's engine takes to start, against the size of the weights it loads.

    python -m bench.model_load                 # table + bench/results/model_load.json

Why: a replica is not routed to before its engine has loaded (deployments/llm_server.py), so the
start-up allowance (`loading.startup_allowance_s`) and the time to add capacity both follow the size
of the weights. This measures it on this machine for three checkpoints of one architecture (Llama,
head_dim 64, random bf16 weights built here with a fixed seed: the demo model, ~0.5 GB and ~2 GB),
each started by raygate's own `VLLMEngine.start` in a fresh process, as a replica does: the process
start and imports, the engine's configuration, the weight loading (vLLM's own figure, read from its
log) and the KV cache set-up. Files are read from the page cache (they were just written or read):
a cold local disk adds size / its read bandwidth, a Hub download adds size / the network's (once per
node, `loading.cache_dir`). A fit `start = fixed + per_gb x size` separates the two parts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from bench.report import add_out_arg, write_result

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "results" / "model_load.json"
BUILD_DIR = Path(os.environ.get("RAYGATE_CACHE_DIR", Path.home() / ".cache" / "raygate")) / "load-bench"

# name -> Llama architecture (head_dim 64, which vLLM's CPU attention supports)
SIZES = {
    "0.5gb": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=16, num_attention_heads=16,
                  num_key_value_heads=16),
    "2gb": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=32,
                num_key_value_heads=32),
}
ENGINE_ARGS = {"dtype": "bfloat16", "max_model_len": 512, "enforce_eager": True, "max_num_seqs": 8}


def build(name: str) -> Path:
    """A random-weight Llama of the given size with the demo model's tokenizer (no network; once)."""
    target = BUILD_DIR / f"llama-{name}"
    if (target / ".complete").exists():
        return target
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from deployments.demo_model import ensure_demo_model

    demo = ensure_demo_model()
    tokenizer = AutoTokenizer.from_pretrained(str(demo))
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.cls_token_id,
                         eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id,
                         max_position_embeddings=4096, torch_dtype="bfloat16", tie_word_embeddings=False,
                         **SIZES[name])
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.no_grad():
        model = LlamaForCausalLM(config)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(target), safe_serialization=True)
    tokenizer.save_pretrained(str(target))
    (target / ".complete").touch()
    return target


def weights_gb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.glob("*.safetensors")) / 1e9


def start_once(path: str) -> None:
    """In a fresh process: start raygate's engine on `path`, print the seconds it took."""
    t0 = time.monotonic()
    from deployments.config import ModelConfig
    from deployments.engine import VLLMEngine

    cfg = ModelConfig.model_validate({"model": path, "engine_args": ENGINE_ARGS, "engine_metrics": False})
    t_import = time.monotonic()
    engine = VLLMEngine.start(cfg)
    t_ready = time.monotonic()
    engine.shutdown()
    print(json.dumps({"imports_s": t_import - t0, "engine_start_s": t_ready - t_import}), flush=True)


def measure(path: Path) -> dict:
    """Start the engine on `path` in a fresh process; wall time from the process start to ready."""
    for f in path.glob("*.safetensors"):  # page cache: every run reads warm, as the table says
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", PYTHONPATH=str(REPO))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "bench.model_load", "--one", str(path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"engine start failed on {path}:\n{proc.stderr[-3000:]}")
    timing = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    log = proc.stdout + proc.stderr  # vLLM's logger writes to stdout, its engine core's to either
    weights = re.search(r"Loading weights took ([\d.]+) seconds", log)
    # GPU model runners log "Model loading took ..."; the CPU build logs the engine's set-up instead.
    init = re.search(r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+) s", log)
    return {
        "model": path.name,
        "weights_gb": round(weights_gb(path), 3),
        "process_to_ready_s": round(wall, 2),
        "imports_s": round(timing["imports_s"], 2),
        "engine_start_s": round(timing["engine_start_s"], 2),
        "vllm_loading_weights_s": float(weights.group(1)) if weights else None,
        "vllm_init_engine_s": float(init.group(1)) if init else None,
    }


def _fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - slope * mx, slope


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--one", help=argparse.SUPPRESS)
    add_out_arg(parser, "model_load")
    args = parser.parse_args(argv)
    if args.one:
        start_once(args.one)
        return 0
    from deployments.demo_model import ensure_demo_model

    paths = [ensure_demo_model()] + [build(name) for name in SIZES]
    rows = [measure(p) for p in paths]
    xs = [r["weights_gb"] for r in rows]
    fixed, per_gb = _fit(xs, [r["process_to_ready_s"] for r in rows])
    if any(r["vllm_loading_weights_s"] is None for r in rows):
        raise RuntimeError("vLLM's 'Loading weights took' line was not found in an engine's log")
    w_fixed, w_per_gb = _fit(xs, [r["vllm_loading_weights_s"] for r in rows])
    nan = float("nan")
    head = f"{'model':<36}{'GB':>7}{'ready s':>9}{'imports':>9}{'engine':>9}{'weights':>9}{'kv+warmup':>10}"
    print(head)
    for r in rows:
        print(f"{r['model']:<36}{r['weights_gb']:>7.3f}{r['process_to_ready_s']:>9.1f}{r['imports_s']:>9.1f}"
              f"{r['engine_start_s']:>9.1f}{r['vllm_loading_weights_s']:>9.2f}{(r['vllm_init_engine_s'] or nan):>10.2f}")
    print(f"fit: process to ready = {fixed:.1f} s + {per_gb:.1f} s/GB; vLLM's weight loading = "
          f"{w_fixed:.2f} s + {w_per_gb:.2f} s/GB")
    result = {"rows": rows, "fit": {"fixed_s": round(fixed, 2), "per_gb_s": round(per_gb, 2),
                                    "loading_fixed_s": round(w_fixed, 2), "loading_per_gb_s": round(w_per_gb, 2)},
              "engine_args": ENGINE_ARGS, "page_cache": "warm"}
    write_result(args.out, result, "bench.model_load", argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
