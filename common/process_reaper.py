"""Make a replica's vLLM engine processes die with the replica, however the replica dies.

Why a separate process: vLLM's EngineCore does not watch its parent (no death pipe, no
PR_SET_PDEATHSIG), so a replica killed by SIGKILL, the OOM killer or `ray stop --force` leaves
`VLLM::EngineCore` and `VLLM::Worker` running, holding their memory (on a GPU node, the GPU's). A
killed process can run no clean-up of its own, so a tiny watchdog, started in its own session so
that process-group kills of the replica do not reach it, polls the replica and kills the recorded
engine processes when the replica is gone. It exits by itself once they are all gone.

Processes are identified by (pid, create_time), so a recycled PID is never killed by mistake.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

POLL_S = 0.5
TERM_GRACE_S = 2.0


def _identity(pid: int) -> str:
    return f"{pid}:{psutil.Process(pid).create_time()!r}"


def _alive(ident: str) -> psutil.Process | None:
    pid_s, created = ident.split(":", 1)
    try:
        p = psutil.Process(int(pid_s))
        if repr(p.create_time()) == created and p.status() != psutil.STATUS_ZOMBIE:
            return p
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass
    return None


def kill_all(idents: list[str], grace_s: float = TERM_GRACE_S) -> int:
    """SIGTERM the processes (and their descendants), then SIGKILL what is left; returns how many."""
    procs: dict[int, psutil.Process] = {}
    for ident in idents:
        p = _alive(ident)
        if p is None:
            continue
        procs[p.pid] = p
        try:
            for child in p.children(recursive=True):
                procs[child.pid] = child
        except psutil.NoSuchProcess:
            pass
    for p in procs.values():
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(list(procs.values()), timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace_s)
    return len(procs)


def watch(parent: str, children: list[str]) -> None:
    while True:
        if not any(_alive(c) for c in children):
            return
        if _alive(parent) is None:
            kill_all(children)
            return
        time.sleep(POLL_S)


def start_reaper(child_pids: list[int]) -> subprocess.Popen | None:
    """Start the watchdog for this process and the given children; None if there is nothing to watch."""
    idents = []
    for pid in child_pids:
        try:
            idents.append(_identity(pid))
        except psutil.NoSuchProcess:
            pass
    if not idents:
        return None
    return subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), _identity(os.getpid()), *idents],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        close_fds=True,
    )


if __name__ == "__main__":
    try:
        import setproctitle

        setproctitle.setproctitle("raygate::engine-reaper")
    except ImportError:
        pass
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only the watched processes' fate ends it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watch(sys.argv[1], sys.argv[2:])
