"""`vllm bench serve` (openai-chat, streaming) completes 200 prompts at concurrency 16 with 0 failed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_vllm_bench_serve_has_no_failures(base_url, model_name, tmp_path):
    from deployments.demo_model import ensure_demo_model

    cmd = [sys.executable, "-m", "bench.vllm_bench", "--backend", "openai-chat", "--base-url", base_url,
           "--endpoint", "/v1/chat/completions", "--tokenizer", str(ensure_demo_model()),
           "--dataset-name", "random", "--random-input-len", "128", "--random-output-len", "64",
           "--num-prompts", "200", "--max-concurrency", "16", "--disable-tqdm",
           "--save-result", "--result-dir", str(tmp_path), "--result-filename", "r.json"]
    # --model omitted on purpose: the client reads data[0].id and data[0].root from /v1/models
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["completed"] == 200 and result["failed"] == 0
    assert result["total_output_tokens"] > 0
