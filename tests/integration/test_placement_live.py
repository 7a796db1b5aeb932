"""Tensor- and pipeline-parallel replicas in their placement groups, on a local multi-node cluster.

A head without the accelerator and two worker nodes with 2 units each of a custom resource standing
in for GPUs (tests/integration/placement_scenario.py, a process of its own). For
`tensor_parallel_size: 2` and, separately, `pipeline_parallel_size: 2`:

- vLLM's CPU build is started in the replica with the Ray executor, in the replica's placement group,
  and refuses it ("current platform cpu does not support ray"): the test shows the refusal and that
  the real replica had the derived group;
- with the stand-in engine (tests/integration/placement_standin.py: what vLLM's Ray executor does, an
  EngineCore process that starts one worker actor per accelerator bundle), Ray's state API shows the
  replica's group (bundles, strategy, nodes) and the workers inside its bundles, a request passes
  through every worker, and a killed replica leaves no worker and no engine process behind.

Needs the machine to itself (`own_cluster`: runs last, stops the shared test app first).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.integration.placement_scenario import ACCELERATOR
from tests.integration.shared_app import REPO, stop_shared_app

pytestmark = [pytest.mark.integration, pytest.mark.own_cluster]


@pytest.fixture(scope="module")
def scenario() -> dict:
    stop_shared_app()
    proc = subprocess.run([sys.executable, "-m", "tests.integration.placement_scenario"], cwd=REPO,
                          capture_output=True, text=True, timeout=1800)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and lines, f"the scenario failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    out = json.loads(lines[-1])
    print(json.dumps(out, indent=1))
    return out


def _bundle_nodes(group: dict) -> list[str]:
    return [b["node_id"] for b in group["bundles"]]


def _bundles_held(resources: dict, pg_id: str) -> list[int]:
    pattern = re.compile(rf"^{ACCELERATOR}_group_(\d+)_{pg_id}$")
    return sorted(int(m.group(1)) for key, amount in resources.items()
                  if (m := pattern.match(key)) and amount == 1.0)


def _check_group(group: dict, scenario: dict, strategy: str) -> None:
    assert group["state"] == "CREATED" and group["strategy"] == strategy
    resources = [b["resources"] for b in group["bundles"]]
    assert resources[0] == {"CPU": 0.1}, "bundle 0: the replica actor"
    assert resources[1:] == [{ACCELERATOR: 1.0}] * 2, "one accelerator bundle per worker"
    workers = set(scenario["workers"])
    assert set(_bundle_nodes(group)[1:]) <= workers, "accelerator bundles only on accelerator nodes"
    if strategy == "STRICT_PACK":
        assert len(set(_bundle_nodes(group))) == 1
    else:  # SPREAD: each pipeline stage on a node of its own
        assert len(set(_bundle_nodes(group)[1:])) == 2


@pytest.mark.parametrize("case,strategy", [("tp2", "STRICT_PACK"), ("pp2", "SPREAD")])
def test_stand_in_workers_run_inside_the_replicas_bundles(scenario, case, strategy):
    result = scenario["cases"][case]
    assert "stand_in" in result, result.get("stand_in_error")
    run = result["stand_in"]
    _check_group(run["group"], scenario, strategy)
    assert run["replica_node"] == run["group"]["bundles"][0]["node_id"], "the replica sits in bundle 0"
    workers = [w for w in run["workers"] if w["class"] == "StandInWorker"]
    assert len(workers) == 2 and all(w["state"] == "ALIVE" for w in workers)
    assert sorted(w["node_id"] for w in workers) == sorted(_bundle_nodes(run["group"])[1:])
    # Ray names what an actor holds in a group's bundle i `<resource>_group_<i>_<group id>`: each worker
    # holds the accelerator of one of bundles 1..N, never bundle 0 (the replica's).
    held = [_bundles_held(w["resources"], run["group"]["id"]) for w in workers]
    assert sorted(held) == [[1], [2]], held
    for w, (index,) in zip(workers, held):
        assert w["node_id"] == run["group"]["bundles"][index]["node_id"]
    # A request went through every worker, each on its bundle's node.
    assert sorted(a["rank"] for a in run["answers"]) == [0, 1]
    assert sorted(a["node_id"] for a in run["answers"]) == sorted(w["node_id"] for w in workers)


@pytest.mark.parametrize("case", ["tp2", "pp2"])
def test_a_killed_replica_leaves_no_worker_behind(scenario, case):
    run = scenario["cases"][case]["stand_in"]
    print(f"{case}: workers and engine gone {run['seconds_until_gone']} s after the kill; "
          f"group: {run['group_after_kill']}; deaths: {[w['death_cause'] for w in run['workers_after_kill']]}")
    assert run["engine_pids"] and run["alive_after_kill"] == {"workers": [], "engine": []}
    assert all(w["state"] == "DEAD" for w in run["workers_after_kill"])


@pytest.mark.parametrize("case,strategy", [("tp2", "STRICT_PACK"), ("pp2", "SPREAD")])
def test_vllm_cpu_refuses_the_ray_executor_in_the_same_placement(scenario, case, strategy):
    result = scenario["cases"][case]
    assert "vllm" in result, result.get("vllm_error")
    run = result["vllm"]
    _check_group(run["group"], scenario, strategy)  # the real replica got the derived group
    print(f"{case}: status {run['status']}; refusal: {run['refusal'][:1]}")
    assert run["status"] == "DEPLOY_FAILED" and run["refusal"], run["message"]


def test_no_engine_left_after_the_scenario(scenario):
    assert scenario["left_after_stop"] == []
