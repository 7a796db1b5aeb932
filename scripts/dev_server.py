"""Start the integration tests' app once and keep it up, for iterating on integration tests.

    .venv/bin/python scripts/dev_server.py [PORT]          # prints READY <url>; Ctrl-C stops it
    RAYGATE_TEST_SERVER_URL=<url> .venv/bin/python -m pytest tests/integration/test_admission_and_routing.py

Same overrides as tests/integration/conftest.py (two models, two cache replicas). State carries over
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

import yaml  # noqa: E402

from bench.servers import Raygate, free_port  # noqa: E402
from tests.integration.conftest import routed_model_config  # noqa: E402


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 18000
    models = yaml.safe_load((REPO / "serve_config.yaml").read_text())["applications"][0]["args"]["models"]
    overrides = {"cache.embedded.port": free_port(), "cache.deployment.num_replicas": 2,
                 "cache.deployment.autoscaling_config": None, "models": models + [routed_model_config(models[0])]}
    srv = Raygate(REPO / "serve_config.yaml", port, Path(tempfile.mkdtemp(prefix="raygate-dev-")), overrides=overrides)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # run the `finally` on `kill` too
    srv.start(timeout_s=600)
    print("READY", srv.base_url, flush=True)
    try:
        while True:
            time.sleep(5)
    finally:
        srv.stop()


if __name__ == "__main__":
    main()
