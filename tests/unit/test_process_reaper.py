"""A SIGKILLed parent's engine processes are killed by the reaper (real processes, no fakes)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil

PARENT = textwrap.dedent("""
    import subprocess, sys, time
    from common.process_reaper import start_reaper
    child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
    grandchild_holder = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); time.sleep(600)"])
    time.sleep(1.0)
    import psutil
    pids = [child.pid, grandchild_holder.pid] + [p.pid for p in psutil.Process(grandchild_holder.pid).children()]
    start_reaper(pids)
    print(" ".join(map(str, pids)), flush=True)
    time.sleep(600)
""")


def _wait_gone(pids, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return []
        time.sleep(0.2)
    return alive


def test_children_die_when_parent_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    pids = [int(p) for p in parent.stdout.readline().split()]
    assert len(pids) == 3 and all(psutil.pid_exists(p) for p in pids)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    # one child ignores SIGTERM: the reaper must escalate to SIGKILL
    assert _wait_gone(pids, timeout=10) == []


def test_reaper_exits_when_children_exit_on_their_own():
    from common.process_reaper import start_reaper

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1)"])
    reaper = start_reaper([child.pid])
    child.wait()
    assert reaper.wait(timeout=10) == 0
