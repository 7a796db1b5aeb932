"""Per-request scheduling controls, read from headers before anything else happens to the request.

- `x-raygate-priority`: `high`, `normal` (default) or `low` (deployments/admission.py);
- `x-raygate-timeout-ms`: how long the client will wait for the model to start, from arrival;
- `x-raygate-deadline`: the same as an absolute Unix time in seconds (the earlier of the two wins);
- `x-session-id`: conversations with one id go to the same replica while it is not overloaded.

Headers rather than body fields: they pass through OpenAI SDKs (`extra_headers`) and proxies without
touching the request schema, and vLLM already owns a body field named `priority` (its scheduler's).
A malformed value is the client's mistake: 400 naming the header, never a silent default.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Mapping, Optional

from deployments.admission import DEFAULT_PRIORITY, PRIORITIES
from common.errors import APIError

PRIORITY_HEADER = "x-raygate-priority"
TIMEOUT_HEADER = "x-raygate-timeout-ms"
DEADLINE_HEADER = "x-raygate-deadline"
SESSION_HEADER = "x-session-id"

_SESSION_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
_MAX_TIMEOUT_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class RequestControls:
    priority: str = DEFAULT_PRIORITY
    deadline: Optional[float] = None  # Unix time (seconds); passes between processes
    session_id: Optional[str] = None

    def monotonic_deadline(self) -> Optional[float]:
        if self.deadline is None:
            return None
        return time.monotonic() + (self.deadline - time.time())


def _number(header: str, raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise APIError(400, f"Invalid header '{header}': expected a number, got {raw[:40]!r}.", param=header) from None
    if not math.isfinite(value):
        raise APIError(400, f"Invalid header '{header}': expected a finite number.", param=header)
    return value


def parse_controls(headers: Mapping[str, str], now: Optional[float] = None) -> RequestControls:
    """The controls of one request; raises APIError(400) naming the first malformed header."""
    now = time.time() if now is None else now
    priority = DEFAULT_PRIORITY
    raw = headers.get(PRIORITY_HEADER)
    if raw is not None:
        priority = raw.strip().lower()
        if priority not in PRIORITIES:
            raise APIError(400, f"Invalid header '{PRIORITY_HEADER}': {raw[:40]!r} is not one of "
                                f"{', '.join(PRIORITIES)}.", param=PRIORITY_HEADER)
    deadline = None
    raw = headers.get(TIMEOUT_HEADER)
    if raw is not None:
        timeout_ms = _number(TIMEOUT_HEADER, raw)
        if timeout_ms < 0:
            raise APIError(400, f"Invalid header '{TIMEOUT_HEADER}': the timeout must not be negative.",
                           param=TIMEOUT_HEADER)
        if timeout_ms > _MAX_TIMEOUT_MS:
            raise APIError(400, f"Invalid header '{TIMEOUT_HEADER}': at most {_MAX_TIMEOUT_MS} ms.",
                           param=TIMEOUT_HEADER)
        deadline = now + timeout_ms / 1000.0
    raw = headers.get(DEADLINE_HEADER)
    if raw is not None:
        absolute = _number(DEADLINE_HEADER, raw)
        if not 1e9 <= absolute <= 1e11:  # seconds since 1970, not ms and not a relative value
            raise APIError(400, f"Invalid header '{DEADLINE_HEADER}': expected a Unix time in seconds "
                                f"(e.g. {now + 5:.3f}).", param=DEADLINE_HEADER)
        deadline = absolute if deadline is None else min(deadline, absolute)
    session = headers.get(SESSION_HEADER)
    if session is not None and not _SESSION_ID.fullmatch(session):
        raise APIError(400, f"Invalid header '{SESSION_HEADER}': 1 to 128 characters of letters, digits "
                            "and ._:@/+=- are allowed.", param=SESSION_HEADER)
    return RequestControls(priority, deadline, session)
