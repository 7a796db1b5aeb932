"""Start the integration tests' app once and keep it up, for iterating on integration tests.

    .venv/bin/python scripts/dev_server.py [PORT]          # prints READY <url>; Ctrl-C stops it
    RAYGATE_TEST_SERVER_URL=<url> .venv/bin/python -m pytest tests/integration/test_admission_and_routing.py

The same app as tests/integration/conftest.py builds (three models, two cache replicas, the secure app
at /secure). State carries over
between runs against it (engines' counters, caches, router indexes), which fresh CI runs do not have.
"""

from __future__ import annotations

import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.shared_app import start_test_app, build_test_app  # noqa: E402


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 18000
    srv = build_test_app(port, Path(tempfile.mkdtemp(prefix="raygate-dev-")))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # run the `finally` on `kill` too
    start_test_app(srv)
    print("READY", srv.base_url, flush=True)
    try:
        while True:
            time.sleep(5)
    finally:
        srv.stop()


if __name__ == "__main__":
    main()
