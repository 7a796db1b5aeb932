"""The app unchanged on a multi-node Ray cluster: a head without the accelerator and worker nodes with
it (a custom resource standing in for GPUs, all on this machine). LLM replicas run only on the
accelerator nodes; a worker node killed under steady load loses no non-streaming request, ends
every interrupted stream with an error event, takes its engines with it, and once a new
accelerator node joins, Serve puts the replacement replica there.

This needs its own cluster, so it runs last (conftest orders `own_cluster` tests to the end) and
first stops the shared test app: two clusters of engines do not fit a 2-core host.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from bench.servers import REPO, Raygate, free_port, vllm_processes
from tests.integration.shared_app import stop_shared_app
from tests.integration.steady_load import body, under_load

pytestmark = [pytest.mark.integration, pytest.mark.own_cluster]

ACCELERATOR = "raygate_test_accelerator"  # stands in for GPUs (on GPU nodes: num_gpus: 1)
HEAD = "raygate_test_head"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="module")
def multinode():
    import ray
    from ray.cluster_utils import Cluster

    stop_shared_app()  # two clusters of engines do not fit a 2-core host
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {HEAD: 1}})
    workers = [cluster.add_node(num_cpus=1, resources={ACCELERATOR: 1}) for _ in range(2)]
    overrides = {
        "cache.enabled": False,
        "models.0.num_cpus": 0.1,
        "models.0.resources": {ACCELERATOR: 1},
        "models.0.deployment.autoscaling_config": None,
        "models.0.deployment.num_replicas": 2,
        # The ingress stays on the head, as on KubeRay (worker nodes come and go).
        "ingress.deployment.ray_actor_options": {"num_cpus": 0.1, "resources": {HEAD: 0.01}},
    }
    srv = Raygate(REPO / "serve_config.yaml", free_port(), Path(tempfile.mkdtemp(prefix="raygate-multinode-")),
                  overrides=overrides, settings={"proxy_location": "HeadOnly"},  # one HAProxy per host port
                  env={"RAY_ADDRESS": cluster.address})
    try:
        srv.start(timeout_s=600)
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster, workers, srv
    finally:
        ray.shutdown()
        srv.stop()
        cluster.shutdown()
        for p in vllm_processes():
            p.kill()


def _replica_info(model: str) -> dict[str, dict]:
    """process_info of every running replica of the model's deployment, by replica id."""
    from ray import serve

    from deployments.config import llm_deployment_name
    from router import registry

    name = llm_deployment_name(model)
    handle = serve.get_deployment_handle(name, app_name="raygate")
    handle.model_card.remote().result()  # the handle's router learns the replicas
    router = registry.find(name)
    return {rid: handle.process_info.remote(replica=rid).result() for rid in router.replica_ids()}


def _model(srv) -> str:
    import httpx

    return httpx.get(srv.base_url + "/v1/models", timeout=30).json()["data"][0]["id"]


def test_llm_replicas_run_only_on_accelerator_nodes(multinode):
    cluster, workers, srv = multinode
    info = _replica_info(_model(srv))
    nodes = {i["node_id"] for i in info.values()}
    assert len(info) == 2
    assert nodes == {w.node_id for w in workers}, "one replica on each accelerator node, none on the head"
    assert cluster.head_node.node_id not in nodes


def test_a_killed_worker_node_is_survived(multinode):
    cluster, workers, srv = multinode
    model = _model(srv)
    info = _replica_info(model)
    node = workers[0]
    victim = next(i for i in info.values() if i["node_id"] == node.node_id)
    engines = [p for p in victim["engine_pids"] if _alive(p)]
    assert engines

    load = asyncio.run(under_load(srv.base_url, model, seconds=30, break_at_s=8,
                                  breaker=lambda _load: cluster.remove_node(node, allow_graceful=False)))
    retried, interrupted = load.check()
    assert retried + interrupted >= 1, "the node's death hit no request in flight: the test showed nothing"
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in engines) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in engines), "engine processes outlived their node"

    # Capacity comes back the way a cluster autoscaler would bring it: a new accelerator node.
    new = cluster.add_node(num_cpus=1, resources={ACCELERATOR: 1})
    deadline = time.monotonic() + 300
    while True:
        nodes = {i["node_id"] for i in _replica_info(model).values()}
        if nodes == {workers[1].node_id, new.node_id}:
            break
        assert time.monotonic() < deadline, f"the replica was not replaced on the new node: {nodes}"
        time.sleep(3)
    print(f"non-streaming: {len(load.plain)} answered, {retried} retried; streams: {len(load.streams)}, "
          f"{interrupted} interrupted with an error event")
    import httpx

    r = httpx.post(srv.base_url + "/v1/chat/completions", json=body(model, -1, False), timeout=60)
    assert r.status_code == 200
