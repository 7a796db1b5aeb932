"""What handing the ingress's validated request to the LLM replica costs, against the old dict path.

Before: the ingress sent the decoded body (a dict) and the replica validated it into vLLM's model.
Now: the ingress validates once (it must, before any cache answer) and sends the model object; the
replica does not validate again. The handle pickles the argument either way (cloudpickle on Serve's
gRPC path, `grpc_handles: true`). Per request, in one process (no Ray: the serialization and
validation CPU alone), for a short chat, a chat with a 2,000-character system prompt and tools, and a
completion:

    PYTHONPATH=$PWD python -m bench.request_handoff [--n 3000] [--out bench/results/request_handoff.json]
"""

from __future__ import annotations

import argparse
import statistics
import time

import cloudpickle

from bench.report import add_out_arg, write_result
from common.request_kind import RequestKind
from deployments.request_parsing import validate_request

TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
BODIES = {
    "short chat": (RequestKind.CHAT, {"model": "m", "messages": [{"role": "user", "content": "Hello there!"}],
                                      "max_tokens": 64, "temperature": 0}),
    "long chat + tools": (RequestKind.CHAT, {"model": "m", "max_tokens": 64, "tools": [TOOL] * 3, "messages": [
        {"role": "system", "content": "You are a careful assistant. " * 70},
        {"role": "user", "content": "What is the weather like in Paris today?"}]}),
    "completion": (RequestKind.COMPLETION, {"model": "m", "prompt": "Once upon a time " * 20, "max_tokens": 64}),
}


def _per_call_us(fn, n: int) -> float:
    """Median of 5 rounds of n calls, microseconds per call."""
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        rounds.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(rounds)


def measure(n: int) -> list[dict]:
    rows = []
    for name, (kind, body) in BODIES.items():
        request = validate_request(kind, dict(body))
        dict_bytes, obj_bytes = cloudpickle.dumps(body), cloudpickle.dumps(request)
        dict_pickle = _per_call_us(lambda: cloudpickle.loads(cloudpickle.dumps(body)), n)
        obj_pickle = _per_call_us(lambda: cloudpickle.loads(cloudpickle.dumps(request)), n)
        validate = _per_call_us(lambda: validate_request(kind, dict(body)), n)
        rows.append({
            "request": name, "dict_bytes": len(dict_bytes), "object_bytes": len(obj_bytes),
            "dict_pickle_us": round(dict_pickle, 1), "object_pickle_us": round(obj_pickle, 1),
            "validate_us": round(validate, 1),
            # old: ingress pickles the dict, the replica validates; new: the ingress validates (needed
            # before the cache either way) and pickles the object, the replica does neither.
            "old_handoff_us": round(dict_pickle + validate, 1),
            "new_handoff_us": round(obj_pickle, 1),
        })
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="calls per round (5 rounds, median)")
    add_out_arg(parser, "request_handoff")
    args = parser.parse_args(argv)
    rows = measure(args.n)
    cols = ["request", "dict_bytes", "object_bytes", "dict_pickle_us", "object_pickle_us", "validate_us",
            "old_handoff_us", "new_handoff_us"]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r[c]) for c in cols))
    write_result(args.out, {"n": args.n, "rows": rows,
                            "note": "cloudpickle dumps+loads; validate = vLLM's model_validate with raygate's checks"},
                 "bench.request_handoff", argv)


if __name__ == "__main__":
    main()
