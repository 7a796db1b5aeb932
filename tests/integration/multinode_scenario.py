"""The multi-node scenario that tests/integration/test_multinode.py checks, run as a process of its own.

    python -m tests.integration.multinode_scenario     # prints one JSON object on its last line

Why a separate process: it starts a Ray cluster inside the process (Ray's `cluster_utils.Cluster`:
a head and two worker nodes on this machine) and kills one of its nodes; a Ray driver whose cluster
loses nodes can be ended by Ray itself, which must not take the test session down with it.

Steps: start the cluster (workers with a custom resource standing in for GPUs, the head without),
`serve run` the repo's serve_config.yaml on it with the LLM replicas asking for that resource,
record where the replicas run, then kill the node of one replica under steady load, record what
the clients saw and whether that replica's engines died, add a new accelerator node and record
where the replacement runs. Everything is reported; the test asserts.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import httpx
import psutil

from bench.servers import REPO, TINY_LLAMA, Raygate, free_port, model_overrides, vllm_processes
from tests.integration.steady_load import under_load

ACCELERATOR = "raygate_test_accelerator"  # stands in for GPUs (on GPU nodes: num_gpus: 1)
HEAD = "raygate_test_head"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _replica_info(model: str) -> dict[str, dict]:
    """process_info of every replica of the model's deployment that this driver's router knows."""
    from ray import serve

    from deployments.config import llm_deployment_name
    from router import registry

    name = llm_deployment_name(model)
    handle = serve.get_deployment_handle(name, app_name="raygate")
    handle.model_card.remote().result()  # the handle's router learns the replicas
    router = registry.find(name)
    return {rid: handle.process_info.remote(replica=rid).result(timeout_s=30) for rid in router.replica_ids()}


def run() -> dict:
    import ray
    from ray.cluster_utils import Cluster

    out: dict = {}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {HEAD: 1}})
    workers = [cluster.add_node(num_cpus=1, resources={ACCELERATOR: 1}) for _ in range(2)]
    out["head"] = cluster.head_node.node_id
    out["workers"] = [w.node_id for w in workers]
    overrides = {
        **model_overrides(TINY_LLAMA["model"]),  # the demo model: the scenario is about placement, not answers
        "cache.enabled": False,
        "models.0.num_cpus": 0.1,
        "models.0.resources": {ACCELERATOR: 1},
        "models.0.deployment.autoscaling_config": None,
        "models.0.deployment.num_replicas": 2,
        # The graph (no colocated engine): the LLM replicas on the worker nodes, the ingress on the head.
        "ingress.colocate": False,
        # The ingress stays on the head, as on KubeRay (worker nodes come and go).
        "ingress.deployment.ray_actor_options": {"num_cpus": 0.1, "resources": {HEAD: 0.01}},
    }
    srv = Raygate(REPO / "serve_config.yaml", free_port(), Path(tempfile.mkdtemp(prefix="raygate-multinode-")),
                  overrides=overrides, settings={"proxy_location": "HeadOnly"},  # one HAProxy per host port
                  env={"RAY_ADDRESS": cluster.address})
    try:
        srv.start(timeout_s=600)
        ray.init(address=cluster.address, log_to_driver=False)
        model = httpx.get(srv.base_url + "/v1/models", timeout=30).json()["data"][0]["id"]
        # /health is ok once one replica serves: wait (bounded) until both replicas run, on whichever
        # nodes Serve chose, so that the node to kill surely holds one (CI once saw only the first).
        deadline = time.monotonic() + 300
        info: dict = {}
        while time.monotonic() < deadline:
            try:
                info = _replica_info(model)
            except Exception as e:  # noqa: BLE001 - a replica that is still starting
                out["last_replica_error"] = repr(e)
            if len(info) >= 2:
                break
            time.sleep(2)
        out["replica_nodes"] = sorted(i["node_id"] for i in info.values())
        if not any(i["node_id"] == workers[0].node_id for i in info.values()):
            return out  # reported as is: the test fails on replica_nodes, with the nodes Serve chose

        node = workers[0]
        victim = next(i for i in info.values() if i["node_id"] == node.node_id)
        engines = [p for p in victim["engine_pids"] if _alive(p)]
        out["victim_engines"] = len(engines)
        load = asyncio.run(under_load(srv.base_url, model, seconds=30, break_at_s=8,
                                      breaker=lambda _load: cluster.remove_node(node, allow_graceful=False)))
        out["load"] = asdict(load)
        deadline = time.monotonic() + 20
        while any(_alive(p) for p in engines) and time.monotonic() < deadline:
            time.sleep(0.2)
        out["engines_alive_after_node_death"] = sum(_alive(p) for p in engines)

        # Capacity comes back the way a cluster autoscaler would bring it: a new accelerator node.
        new = cluster.add_node(num_cpus=1, resources={ACCELERATOR: 1})
        out["new_worker"] = new.node_id
        deadline = time.monotonic() + 300
        expected = {workers[1].node_id, new.node_id}
        nodes: set = set()
        while time.monotonic() < deadline:
            try:
                nodes = {i["node_id"] for i in _replica_info(model).values()}
            except Exception as e:  # noqa: BLE001 - a replica that is still starting
                out["last_replica_error"] = repr(e)
            if nodes == expected:
                break
            time.sleep(3)
        out["replica_nodes_after_replacement"] = sorted(nodes)
        r = httpx.post(srv.base_url + "/v1/chat/completions", timeout=60, json={
            "model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "still there?"}]})
        out["status_after"] = r.status_code
    finally:
        ray.shutdown()
        out["left_after_stop"] = srv.stop()
        cluster.shutdown()
        for p in vllm_processes():
            p.kill()
    return out


if __name__ == "__main__":
    result = run()
    sys.stdout.write("\n" + json.dumps(result) + "\n")
