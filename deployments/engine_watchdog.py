"""The engine-progress watchdog: a replica whose engine stops making progress says so and stops it.

Why: an engine can hang without dying -- a stuck accelerator, a deadlocked collective, a frozen
process. Measured before this module (issue 18): with `VLLM::EngineCore` stopped (SIGSTOP) for 82 s,
streams in flight stalled with no error, new requests hung until the client gave up, a 1.5 s deadline
bounded nothing, `/health` said ok and Serve kept the replica. vLLM's own health check only asks
whether the engine process is alive, and a frozen process is. SGLang's server kills a step that runs
past `--watchdog-timeout`; vLLM bounds an engine iteration (`VLLM_ENGINE_ITERATION_TIMEOUT_S`).

Rule: while the engine holds requests, it must report progress (an output step) at least every
`stall_timeout_s`. The clock starts at the later of the last progress and the moment the engine
became busy, so an engine idle for an hour is not stalled by its first request. A stalled engine is
killed (its requests end with an error at once: streams with an SSE error event, whole answers are
retried on another replica by the ingress), and the replica reports itself unhealthy with the reason
until Serve replaces it.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

from deployments.engine_protocol import Engine


class EngineWatchdog:
    """Decides whether `engine` has stalled. Call `check()` periodically (every second or so)."""

    def __init__(self, engine: Engine, stall_timeout_s: float, clock: Callable[[], float] = time.monotonic):
        self.engine = engine
        self.stall_timeout_s = stall_timeout_s
        self._clock = clock
        self._busy_since: Optional[float] = None

    def check(self) -> Optional[str]:
        """None while the engine is idle or progressing; else why it is considered stalled."""
        in_flight = self.engine.num_unfinished_requests()
        if in_flight == 0:
            self._busy_since = None
            return None
        now = self._clock()
        if self._busy_since is None:
            self._busy_since = now
        since = max(self.engine.last_progress(), self._busy_since)
        if now - since <= self.stall_timeout_s:
            return None
        return (f"engine stalled: no progress for {now - since:.1f} s with {in_flight} requests in flight "
                f"(stall_timeout_s {self.stall_timeout_s:g})")
