"""The launcher runs Ray's bundled HAProxy with splicing off, and never itself."""

import subprocess
import sys
from pathlib import Path

from deployments.haproxy_launcher import haproxy_argv


def test_argv_prepends_nosplice_to_the_bundled_binary():
    argv = haproxy_argv(["-db", "-f", "/tmp/x.cfg"])
    assert argv[1:] == ["-dS", "-db", "-f", "/tmp/x.cfg"]
    assert argv[0].endswith("/haproxy") and "raygate" not in Path(argv[0]).name


def test_console_script_execs_a_working_haproxy():
    launcher = Path(sys.executable).with_name("raygate-haproxy")
    out = subprocess.run([str(launcher), "-vv"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "HAProxy version" in out.stdout


def test_the_launched_haproxy_leaves_rays_low_cpu_priority(tmp_path):
    """Started at nice 15 like Ray's workers, the launcher execs HAProxy at nice 0 (root or CAP_SYS_NICE)."""
    import os
    import time

    import psutil

    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = tmp_path / "h.cfg"
    cfg.write_text("global\n    maxconn 16\ndefaults\n    mode http\n    timeout client 5s\n"
                   "    timeout connect 5s\n    timeout server 5s\nfrontend f\n"
                   f"    bind 127.0.0.1:{port}\n"
                   "    http-request return status 200\n")
    launcher = Path(sys.executable).with_name("raygate-haproxy")
    proc = subprocess.Popen([str(launcher), "-db", "-f", str(cfg)], preexec_fn=lambda: os.nice(15),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        p = psutil.Process(proc.pid)
        assert proc.poll() is None and "haproxy" in p.name()  # the launcher exec'd HAProxy in place
        assert p.nice() == 0
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_launched_haproxy_dies_when_its_parent_is_killed(tmp_path):
    """`ray stop --force` SIGKILLs Serve's proxy actor: the HAProxy it launched must not outlive it."""
    import os
    import signal
    import socket
    import time

    import psutil

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = tmp_path / "h.cfg"
    cfg.write_text("global\n    maxconn 16\ndefaults\n    mode http\n    timeout client 5s\n"
                   "    timeout connect 5s\n    timeout server 5s\nfrontend f\n"
                   f"    bind 127.0.0.1:{port}\n"
                   "    http-request return status 200\n")
    launcher = Path(sys.executable).with_name("raygate-haproxy")
    # The parent stands in for Serve's proxy actor: it starts the launcher and then is killed.
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time\n"
         f"p = subprocess.Popen([{str(launcher)!r}, '-db', '-f', {str(cfg)!r}], start_new_session=True)\n"
         "print(p.pid, flush=True)\ntime.sleep(120)\n"],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    haproxy = None
    try:
        haproxy = psutil.Process(int(parent.stdout.readline()))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and haproxy.name() != "haproxy":  # exec'd (not raygate-haproxy)
            time.sleep(0.1)
        assert haproxy.name() == "haproxy" and haproxy.is_running()
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and (_running(haproxy) or not _free(port)):
            time.sleep(0.05)
        assert not _running(haproxy), "HAProxy outlived the process that started it"
        assert _free(port), "HAProxy's port is still bound"
    finally:
        parent.kill()
        if haproxy is not None and _running(haproxy):
            haproxy.kill()


def _free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _running(p) -> bool:
    """Alive and not a zombie (an orphan's zombie stays until PID 1 reaps it; it holds no ports)."""
    import psutil

    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
