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
