"""Where an LLM replica's engine workers run: Ray resources, placement group and vLLM executor per model.

Why a placement group: an engine with `tensor_parallel_size` x `pipeline_parallel_size` = N > 1 runs
N workers, each holding one accelerator. Reserving `num_gpus: N` on the replica actor alone only
works while all N fit the replica's node and vLLM starts them as the replica's own processes; a
pipeline across nodes, or workers started through Ray, need Ray to reserve every worker's
accelerator, on the right nodes, before the replica starts (otherwise a TP=4 replica lands where
its workers cannot follow). Serve creates one placement group per replica from the deployment's
`placement_group_bundles` / `placement_group_strategy` and removes it with the replica; vLLM's Ray
executor, given that group, puts worker i in the i-th bundle holding the accelerator. This is what
Ray Serve LLM does (`placement_group_config`); raygate derives the bundles from the parallel sizes
instead of asking for them.

Layout for N > 1 with the Ray executor (the default):

    bundle 0      {"CPU": num_cpus, **resources}              the replica actor (and vLLM's EngineCore)
    bundle 1..N   {<accelerator>: 1, "CPU": worker_cpus}      one per engine worker

    strategy      STRICT_PACK  when the N workers fit one node (pipeline_parallel_size 1, or
                               N <= placement.accelerators_per_node)
                  placement.multi_node_strategy (PACK, default, or SPREAD) otherwise
                  placement.strategy, when set, wins over both

With `distributed_executor_backend: mp` (set by hand; vLLM's CPU build accepts only this one) the
workers are the replica's child processes: no placement group, the replica actor itself reserves
N accelerators, and the workers must fit its node. N = 1 is unchanged: the replica reserves
`num_gpus` / `resources` as configured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

RAY_EXECUTOR = "ray"
MP_EXECUTOR = "mp"
GPU = "GPU"


@dataclass(frozen=True)
class ReplicaPlacement:
    """What one replica of a model reserves from Ray.

    `bundles`/`strategy` are Serve's `placement_group_bundles`/`placement_group_strategy` (None: no
    placement group). `actor_resources` are the replica actor's own `num_cpus`, `num_gpus` and
    `resources` (they must fit bundle 0 when there is a group). `executor` is vLLM's
    `distributed_executor_backend` to set (None: leave vLLM's default).
    """

    world_size: int
    actor_resources: dict
    bundles: Optional[list[dict[str, float]]] = None
    strategy: Optional[str] = None
    executor: Optional[str] = None
    worker_bundle_indices: list[int] = field(default_factory=list)


def _nonzero(bundle: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in bundle.items() if v}


def replica_placement(cfg) -> ReplicaPlacement:
    """The placement of one replica of `cfg` (a validated `deployments.config.ModelConfig`).

    Raises ValueError for layouts that cannot work (named by field); `ModelConfig` runs this at
    validation, so `serve run` fails at start-up instead of a replica failing later."""
    ea, pl = cfg.engine_args, cfg.placement
    tp, pp = ea.tensor_parallel_size, ea.pipeline_parallel_size
    world = tp * pp
    per_node = pl.accelerators_per_node
    if world == 1:
        actor = {"num_cpus": cfg.num_cpus}
        if cfg.num_gpus:
            actor["num_gpus"] = cfg.num_gpus
        if cfg.resources:
            actor["resources"] = dict(cfg.resources)
        return ReplicaPlacement(world_size=1, actor_resources=actor, executor=ea.distributed_executor_backend)

    executor = ea.distributed_executor_backend or RAY_EXECUTOR
    if per_node is not None and tp > per_node:
        raise ValueError(
            f"engine_args.tensor_parallel_size {tp} > placement.accelerators_per_node {per_node}: "
            "tensor-parallel workers exchange activations every layer and must share a node"
        )
    fits_one_node = pp == 1 if per_node is None else world <= per_node
    if executor != RAY_EXECUTOR:
        # Workers are the replica's own processes: they can only be where the replica is.
        if not fits_one_node:
            raise ValueError(
                f"engine_args.distributed_executor_backend {executor!r} starts every worker on the replica's "
                f"node, but tensor_parallel_size {tp} x pipeline_parallel_size {pp} = {world} workers do not fit "
                f"one node (placement.accelerators_per_node {per_node}); use 'ray'"
            )
        actor = {"num_cpus": cfg.num_cpus}
        resources = dict(cfg.resources)
        if pl.accelerator == GPU:
            actor["num_gpus"] = world
        else:
            resources[pl.accelerator] = resources.get(pl.accelerator, 0) + world
        if resources:
            actor["resources"] = resources
        return ReplicaPlacement(world_size=world, actor_resources=actor, executor=executor)

    replica_bundle = _nonzero({"CPU": cfg.num_cpus, **cfg.resources})
    if not replica_bundle:
        raise ValueError("num_cpus must be > 0 (or resources set) for the replica's bundle of a placement group")
    worker = {pl.accelerator: 1.0}
    worker["CPU"] = worker.get("CPU", 0.0) + pl.worker_cpus
    strategy = pl.strategy or ("STRICT_PACK" if fits_one_node else pl.multi_node_strategy)
    actor = {"num_cpus": cfg.num_cpus}
    if cfg.resources:
        actor["resources"] = dict(cfg.resources)
    return ReplicaPlacement(
        world_size=world,
        actor_resources=actor,
        bundles=[replica_bundle] + [_nonzero(worker) for _ in range(world)],
        strategy=strategy,
        executor=executor,
        worker_bundle_indices=list(range(1, world + 1)),
    )


def expected_num_gpus(cfg) -> Optional[float]:
    """The GPUs one replica of `cfg` uses in total (None: any value is fine, world size 1)."""
    ea = cfg.engine_args
    world = ea.tensor_parallel_size * ea.pipeline_parallel_size
    if world == 1:
        return None
    return float(world) if cfg.placement.accelerator == GPU else 0.0
