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
