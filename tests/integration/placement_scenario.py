"""The placement scenario that tests/integration/test_placement_live.py checks, run as a process of its own.

    python -m tests.integration.placement_scenario     # prints one JSON object on its last line

A local Ray cluster (Ray's `cluster_utils.Cluster`: a head without the accelerator and two worker
nodes with 2 units each of a custom resource standing in for GPUs, all on this machine; a process of
its own for the reason tests/integration/multinode_scenario.py gives). Two models, deployed with
raygate's own deployment options (`deployments.app.llm_deployment_options`):

- `tensor_parallel_size: 2` (placement derived: STRICT_PACK) and
- `pipeline_parallel_size: 2` with `placement.multi_node_strategy: SPREAD`.

For each, first the real engine (raygate's LLMServer, vLLM's CPU build, `distributed_executor_backend:
ray`): its replica's placement group as Ray's state shows it, and the engine's refusal, read from the
replica's log. Then the same deployment options with the stand-in engine
(tests/integration/placement_standin.py): the placement group (bundles, strategy, nodes), the
engine's worker actors inside its bundles, a request through every worker, then the replica killed
(SIGKILL to its process, as the OOM killer does) and what is left of its workers and engine process, with Ray's
own clean-up of a dead worker's child processes turned off (see `run`).
Everything is reported; the test asserts.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import sys
import time

import psutil

ACCELERATOR = "raygate_test_accelerator"
HEAD = "raygate_test_head"
REFUSAL = "does not support ray"

BASE = {
    "model": "builtin:tiny-llama",
    "num_cpus": 0.1,
    "num_gpus": 0,
    "env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
    "engine_args": {"dtype": "bfloat16", "max_model_len": 512, "enforce_eager": True},
    "placement": {"accelerator": ACCELERATOR, "worker_cpus": 0},
    "warmup_requests": 0,
    "deployment": {"num_replicas": 1, "max_constructor_retry_count": 1},
}
CASES = {
    "tp2": {"engine_args": {"tensor_parallel_size": 2}},
    "pp2": {"engine_args": {"pipeline_parallel_size": 2}, "placement": {"multi_node_strategy": "SPREAD"}},
}


def _config(case: str):
    from deployments.config import ModelConfig

    extra = CASES[case]
    data = dict(BASE, served_model_name=f"placement-{case}")
    data["engine_args"] = {**BASE["engine_args"], **extra.get("engine_args", {})}
    data["placement"] = {**BASE["placement"], **extra.get("placement", {})}
    return ModelConfig.model_validate(data)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _replica_actor(app: str) -> dict | None:
    from ray.util.state import list_actors

    actors = list_actors(filters=[("state", "=", "ALIVE")], detail=True, limit=10000)
    return next((a.__dict__ for a in actors if a.class_name.startswith(f"ServeReplica:{app}:")), None)


def _group(pg_id: str) -> dict:
    """The placement group as Ray's state API and the GCS table show it."""
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, placement_group_table
    from ray.util.state import get_placement_group

    state = get_placement_group(pg_id)
    table = placement_group_table(PlacementGroup(PlacementGroupID(bytes.fromhex(pg_id))))
    return {
        "id": pg_id,
        "name": state.name,
        "state": state.state,
        "strategy": table["strategy"],
        "bundles": [{"index": b["bundle_id"], "resources": b["unit_resources"], "node_id": b.get("node_id")}
                    for b in state.bundles],
    }


def _workers(pg_id: str) -> list[dict]:
    from ray.util.state import list_actors

    actors = list_actors(filters=[("placement_group_id", "=", pg_id)], detail=True, limit=10000)
    return [{"class": a.class_name, "state": a.state, "node_id": a.node_id, "pid": a.pid,
             "resources": a.required_resources, "death_cause": (a.death_cause or {}).get("actor_died_error_context",
                                                                                          {}).get("error_message")}
            for a in actors if not a.class_name.startswith("ServeReplica")]


def _wait_status(app: str, want: set[str], timeout_s: float) -> str:
    from ray import serve

    deadline, status = time.monotonic() + timeout_s, ""
    while time.monotonic() < deadline:
        apps = serve.status().applications
        status = apps[app].status if app in apps else "NOT_STARTED"
        if status in want:
            return status
        time.sleep(1)
    return status


def _log_lines(session_dir: str, needle: str) -> list[str]:
    lines = []
    for path in glob.glob(os.path.join(session_dir, "logs", "**", "*"), recursive=True):
        if os.path.isfile(path) and (path.endswith(".log") or path.endswith(".err") or path.endswith(".out")):
            with open(path, errors="replace") as f:
                lines += [line.strip() for line in f if needle in line]
    return lines


def real_engine(case: str, session_dir: str) -> dict:
    """raygate's LLMServer with vLLM's CPU build in the derived placement: the group, then the refusal."""
    from ray import serve

    from deployments.app import build_llm_deployment

    app = f"vllm-{case}"
    out: dict = {}
    seen = set(_log_lines(session_dir, REFUSAL))  # earlier cases' refusals are in the same logs
    serve._run(build_llm_deployment(_config(case)), name=app, route_prefix=None, _blocking=False)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "group" not in out:
        actor = _replica_actor(app)
        if actor and actor.get("placement_group_id"):
            out["group"] = _group(actor["placement_group_id"])
            out["replica_node"] = actor["node_id"]
        time.sleep(1)
    out["status"] = _wait_status(app, {"DEPLOY_FAILED", "RUNNING", "UNHEALTHY"}, 600)
    deployments = serve.status().applications[app].deployments
    out["message"] = next(iter(deployments.values())).message[-1500:] if deployments else ""
    out["refusal"] = [line for line in _log_lines(session_dir, REFUSAL) if line not in seen][:3]
    serve.delete(app)
    return out


def stand_in(case: str) -> dict:
    """The same deployment options with the stand-in engine: placement, a request, then a killed replica."""
    import ray
    from ray import serve

    from deployments.app import llm_deployment_options
    from tests.integration.placement_standin import StandInLLMServer

    app = f"standin-{case}"
    cfg = _config(case)
    options = llm_deployment_options(cfg)
    options.pop("request_router_config", None)  # raygate's router needs raygate's replica methods
    serve.run(serve.deployment(StandInLLMServer).options(name="StandIn", **options).bind(cfg),
              name=app, route_prefix=None)
    out: dict = {"options": {k: options.get(k) for k in ("placement_group_bundles", "placement_group_strategy",
                                                          "ray_actor_options")}}
    actor = _replica_actor(app)
    pg_id = actor["placement_group_id"]
    out["replica_node"] = actor["node_id"]
    out["group"] = _group(pg_id)
    out["workers"] = _workers(pg_id)
    handle = serve.get_deployment_handle("StandIn", app_name=app)
    out["answers"] = handle.generate.remote("hello").result(timeout_s=60)
    info = handle.process_info.remote().result(timeout_s=60)
    out["engine_pids"] = info["engine_pids"]

    # SIGKILL to the replica's process alone, as the OOM killer does: `ray.kill` would also signal
    # the replica's process group, which takes a child engine process with it.
    os.kill(info["pid"], signal.SIGKILL)
    killed_at = time.monotonic()
    worker_pids = [w["pid"] for w in out["workers"]]
    deadline = killed_at + 60
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in worker_pids + info["engine_pids"]):
            break
        time.sleep(0.2)
    out["seconds_until_gone"] = round(time.monotonic() - killed_at, 1)
    out["alive_after_kill"] = {"workers": [p for p in worker_pids if _alive(p)],
                               "engine": [p for p in info["engine_pids"] if _alive(p)]}
    time.sleep(2)
    out["workers_after_kill"] = _workers(pg_id)
    try:
        out["group_after_kill"] = _group(pg_id)["state"]
    except Exception as e:  # noqa: BLE001 - a removed group may be gone from the state API
        out["group_after_kill"] = repr(e)
    serve.delete(app)
    return out


def run(cases: list[str], with_vllm: bool) -> dict:
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    out: dict = {"cases": {}}
    # Ray's raylet kills a dead worker's child processes itself (on by default); not when the raylet
    # itself dies (`ray stop --force`, a node lost). Off here, so that the test sees raygate's reaper
    # end the engine process and Ray end the workers that process owned.
    os.environ["RAY_kill_child_processes_on_worker_exit"] = "0"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {HEAD: 1}})
    workers = [cluster.add_node(num_cpus=2, resources={ACCELERATOR: 2}) for _ in range(2)]
    out["head"] = cluster.head_node.node_id
    out["workers"] = [w.node_id for w in workers]
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        session_dir = ray._private.worker._global_node.get_session_dir_path()
        serve.start(proxy_location="Disabled")
        for case in cases:
            result: dict = {}
            out["cases"][case] = result
            try:
                result["stand_in"] = stand_in(case)
            except Exception as e:  # noqa: BLE001 - reported, the test asserts
                result["stand_in_error"] = repr(e)
            if with_vllm:
                try:
                    result["vllm"] = real_engine(case, session_dir)
                except Exception as e:  # noqa: BLE001
                    result["vllm_error"] = repr(e)
        serve.shutdown()
    finally:
        ray.shutdown()
        cluster.shutdown()
    from bench.servers import vllm_processes

    time.sleep(3)  # the reaper polls every 0.5 s
    left = vllm_processes() + [p for p in psutil.process_iter(["cmdline"])
                               if "tests.integration.placement_standin" in " ".join(p.info["cmdline"] or [])]
    out["left_after_stop"] = [p.pid for p in left]
    for p in left:
        p.kill()
    return out


if __name__ == "__main__":
    args = sys.argv[1:]
    result = run([a for a in args if not a.startswith("-")] or list(CASES), with_vllm="--no-vllm" not in args)
    sys.stdout.write("\n" + json.dumps(result) + "\n")
