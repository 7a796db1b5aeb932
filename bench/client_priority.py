"""Load generators that share the host with the server they measure: run them SCHED_FIFO.

Why: client and server share this host's 2 cores, which the engine saturates under load. A normal
process that only sleeps a few ms at a time then wakes up hundreds of ms late (bench/overload.py
measures it in every run: `host_wakeup_lag`), so a plain client times its own scheduling, not the
server. SCHED_FIFO stands in for a client on another machine. The server's processes must be
started *before* the client raises its policy (children inherit it) and after it has dropped it
again (`restore`). Needs root or CAP_SYS_NICE; otherwise the run says so in its JSON.
"""

from __future__ import annotations

import os


def prioritise(policy: str) -> str:
    """Raise this process to SCHED_FIFO (policy "fifo"); returns what it runs at, for the JSON."""
    if policy != "fifo":
        return "normal"
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
        return "SCHED_FIFO 10"
    except (AttributeError, PermissionError, OSError) as e:
        print(f"client stays at normal priority ({type(e).__name__}: {e})", flush=True)
        return f"normal ({type(e).__name__})"


def restore() -> None:
    """Back to the normal policy, before this process starts another server."""
    try:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except (AttributeError, PermissionError, OSError):
        pass
