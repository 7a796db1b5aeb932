"""A stand-in for vLLM's engine with the Ray executor, private to tests/integration/test_placement_live.py.

Why: vLLM 0.32's CPU build refuses `distributed_executor_backend: ray` ("current platform cpu does
not support ray": its CPU platform names no Ray device), so on this machine no real engine puts
workers into a replica's placement group. The stand-in does what vLLM's Ray executor does, and only
that: the replica starts an "EngineCore" child process, which joins Ray as a driver of its own and
starts one worker actor per accelerator bundle of the replica's placement group (bundles 1..N, the
accelerator resource, num_cpus 0), and requests pass through every worker. Like vLLM's EngineCore
it does not watch its parent, so only raygate's reaper and Ray's fate-sharing can end it.
Kept minimal on purpose: the engine protocol with a stand-in engine that the lead is adding to
deployments/ will replace it.

    python -m tests.integration.placement_standin GCS_ADDRESS PG_ID_HEX ACCELERATOR INDEX,INDEX,...
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import ray

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "raygate-standin"


@ray.remote
class StandInWorker:
    def __init__(self, rank: int):
        self.rank = rank

    def forward(self, text: str) -> dict:
        return {"rank": self.rank, "pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id(),
                "len": len(text)}


def worker_name(pg_hex: str, rank: int) -> str:
    return f"standin-{pg_hex}-{rank}"


class StandInLLMServer:
    """A Serve replica with the stand-in engine; deployed with raygate's own deployment options."""

    def __init__(self, cfg):
        from ray.util import get_current_placement_group

        from common.process_reaper import start_reaper
        from deployments.placement import replica_placement

        placement = replica_placement(cfg)
        group = get_current_placement_group()
        assert group is not None, "the replica has no placement group"
        self.pg_hex = group.id.hex()
        self.world = placement.world_size
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        self.core = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.placement_standin", ray.get_runtime_context().gcs_address,
             self.pg_hex, cfg.placement.accelerator, ",".join(map(str, placement.worker_bundle_indices))],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
            # A session of its own: when a worker dies, the raylet signals its process group, which
            # takes a child engine along (vLLM's EngineCore too) -- but only while the raylet lives.
            # Out of that group, only raygate's reaper can end it, which is what the test checks.
            start_new_session=True)
        line = self.core.stdout.readline()
        assert line.startswith("ready"), f"the stand-in engine core did not start: {line!r}"
        self.workers = [ray.get_actor(worker_name(self.pg_hex, r), namespace=NAMESPACE) for r in range(self.world)]
        self.reaper = start_reaper([self.core.pid])

    def process_info(self) -> dict:
        return {"pid": os.getpid(), "engine_pids": [self.core.pid], "pg": self.pg_hex,
                "node_id": ray.get_runtime_context().get_node_id()}

    async def generate(self, text: str) -> list[dict]:
        return list(await __import__("asyncio").gather(*(w.forward.remote(text) for w in self.workers)))


def _engine_core(gcs: str, pg_hex: str, accelerator: str, indices: str) -> None:
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    ray.init(address=gcs, namespace=NAMESPACE, log_to_driver=False)
    group = PlacementGroup(PlacementGroupID(bytes.fromhex(pg_hex)))
    workers = [
        StandInWorker.options(
            name=worker_name(pg_hex, rank), num_cpus=0, resources={accelerator: 1},
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=group, placement_group_bundle_index=int(index),
                placement_group_capture_child_tasks=True),
        ).remote(rank)
        for rank, index in enumerate(indices.split(","))
    ]
    ray.get([w.forward.remote("") for w in workers], timeout=120)
    sys.stdout.write("ready " + json.dumps({"workers": len(workers)}) + "\n")
    sys.stdout.flush()
    while True:  # like vLLM's EngineCore: runs until killed, whatever happens to its parent
        time.sleep(3600)


if __name__ == "__main__":
    _engine_core(*sys.argv[1:5])
