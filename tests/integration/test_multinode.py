"""The app unchanged on a multi-node Ray cluster: a head without the accelerator and worker nodes with
it (a custom resource standing in for GPUs, all on this machine). LLM replicas run only on the
accelerator nodes; a worker node killed under steady load loses no non-streaming request, ends
every interrupted stream with an error event, takes its engines with it, and once a new
accelerator node joins, Serve puts the replacement replica there.

The scenario runs in a process of its own (tests/integration/multinode_scenario.py says why) and
needs the machine to itself, so it runs last (conftest orders `own_cluster` tests to the end) and
first stops the shared test app: two clusters of engines do not fit a 2-core host.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.integration.shared_app import REPO, stop_shared_app
from tests.integration.steady_load import LoadResult

pytestmark = [pytest.mark.integration, pytest.mark.own_cluster]


@pytest.fixture(scope="module")
def scenario() -> dict:
    stop_shared_app()
    proc = subprocess.run([sys.executable, "-m", "tests.integration.multinode_scenario"], cwd=REPO,
                          capture_output=True, text=True, timeout=1200)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and lines, f"the scenario failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return json.loads(lines[-1])


def test_llm_replicas_run_only_on_accelerator_nodes(scenario):
    assert scenario["replica_nodes"] == sorted(scenario["workers"]), "one replica on each accelerator node"
    assert scenario["head"] not in scenario["replica_nodes"]


def test_a_killed_worker_node_is_survived(scenario):
    assert "load" in scenario, f"no replica on the node to kill: replicas on {scenario['replica_nodes']}"
    load = LoadResult(plain=[tuple(p) for p in scenario["load"]["plain"]],
                      streams=[tuple(s) for s in scenario["load"]["streams"]])
    retried, interrupted = load.check()  # every non-streaming request 200; every stream ends with [DONE]
    print(f"non-streaming: {len(load.plain)} answered, {retried} retried; streams: {len(load.streams)}, "
          f"{interrupted} interrupted with an error event")
    assert retried + interrupted >= 1, "the node's death hit no request in flight: the test showed nothing"
    assert scenario["victim_engines"] >= 1 and scenario["engines_alive_after_node_death"] == 0
    assert scenario["replica_nodes_after_replacement"] == sorted(
        [w for w in scenario["workers"][1:]] + [scenario["new_worker"]]), scenario.get("last_replica_error")
    assert scenario["status_after"] == 200
    assert not scenario["left_after_stop"], scenario["left_after_stop"]
