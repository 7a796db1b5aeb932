"""tensor_parallel_size x pipeline_parallel_size -> the replica's placement group, its executor, and
the start-up errors for layouts that cannot work (deployments/placement.py, deployments/config.py)."""

import pytest
from pydantic import ValidationError

from deployments.app import llm_deployment_options
from deployments.config import ModelConfig
from deployments.placement import replica_placement


def cfg(tp: int = 1, pp: int = 1, **fields) -> ModelConfig:
    engine_args = {"tensor_parallel_size": tp, "pipeline_parallel_size": pp, **fields.pop("engine_args", {})}
    return ModelConfig.model_validate({"engine_args": engine_args, **fields})


GPU_WORKER = {"GPU": 1.0, "CPU": 1.0}


def test_one_worker_has_no_placement_group_and_keeps_its_resources():
    p = replica_placement(cfg(num_gpus=1, num_cpus=2, resources={"node-a": 1}))
    assert p.bundles is None and p.strategy is None and p.executor is None
    assert p.actor_resources == {"num_cpus": 2, "num_gpus": 1, "resources": {"node-a": 1}}
    assert "placement_group_bundles" not in llm_deployment_options(cfg(num_gpus=1))


def test_tensor_parallel_is_one_strict_pack_group_with_a_bundle_per_worker():
    p = replica_placement(cfg(tp=4, num_cpus=2))
    assert p.bundles == [{"CPU": 2.0}] + [GPU_WORKER] * 4
    assert p.strategy == "STRICT_PACK" and p.executor == "ray" and p.world_size == 4
    assert p.worker_bundle_indices == [1, 2, 3, 4]
    assert p.actor_resources == {"num_cpus": 2}  # the GPUs are the workers', not the replica actor's


def test_pipeline_stages_span_nodes_with_the_configured_strategy():
    p = replica_placement(cfg(tp=4, pp=2))
    assert p.bundles == [{"CPU": 1.0}] + [GPU_WORKER] * 8 and p.strategy == "PACK"
    spread = replica_placement(cfg(tp=1, pp=2, placement={"multi_node_strategy": "SPREAD"}))
    assert spread.strategy == "SPREAD" and len(spread.bundles) == 3


def test_pipeline_that_fits_one_node_is_strict_pack():
    assert replica_placement(cfg(tp=2, pp=2, placement={"accelerators_per_node": 8})).strategy == "STRICT_PACK"
    assert replica_placement(cfg(tp=4, pp=2, placement={"accelerators_per_node": 4})).strategy == "PACK"
    assert replica_placement(cfg(tp=2, placement={"strategy": "SPREAD"})).strategy == "SPREAD"


def test_a_custom_accelerator_resource_and_worker_cpus():
    p = replica_placement(cfg(tp=2, resources={"head": 0.01}, num_cpus=0.5,
                              placement={"accelerator": "acc", "worker_cpus": 0}))
    assert p.bundles == [{"CPU": 0.5, "head": 0.01}, {"acc": 1.0}, {"acc": 1.0}]
    assert p.actor_resources == {"num_cpus": 0.5, "resources": {"head": 0.01}}


def test_deployment_options_carry_the_group_and_the_actor_fits_bundle_zero():
    opts = llm_deployment_options(cfg(tp=2, pp=2, num_cpus=3, loading={"cache_dir": "/models/hf"}))
    assert opts["placement_group_bundles"][0] == {"CPU": 3.0} and len(opts["placement_group_bundles"]) == 5
    assert opts["placement_group_strategy"] == "PACK"
    actor = opts["ray_actor_options"]
    assert actor["num_cpus"] == 3 and "num_gpus" not in actor
    assert actor["runtime_env"]["env_vars"]["HF_HOME"] == "/models/hf"


def test_mp_executor_reserves_every_accelerator_on_the_replica_actor():
    p = replica_placement(cfg(tp=2, engine_args={"distributed_executor_backend": "mp"}))
    assert p.bundles is None and p.executor == "mp" and p.actor_resources == {"num_cpus": 1.0, "num_gpus": 2}
    sim = replica_placement(cfg(tp=2, engine_args={"distributed_executor_backend": "mp"},
                                placement={"accelerator": "acc"}))
    assert sim.actor_resources == {"num_cpus": 1.0, "resources": {"acc": 2}}


def test_mp_executor_across_nodes_is_refused():
    with pytest.raises(ValidationError, match="distributed_executor_backend 'mp'.*do not fit one node"):
        cfg(tp=1, pp=2, engine_args={"distributed_executor_backend": "mp"})


def test_tensor_parallel_wider_than_a_node_is_refused():
    with pytest.raises(ValidationError, match="tensor_parallel_size 8 > placement.accelerators_per_node 4"):
        cfg(tp=8, placement={"accelerators_per_node": 4})


@pytest.mark.parametrize("tp,pp,num_gpus", [(4, 1, 1), (4, 2, 4), (2, 1, 0)])
def test_num_gpus_that_disagrees_names_both_fields(tp, pp, num_gpus):
    with pytest.raises(ValidationError) as e:
        cfg(tp=tp, pp=pp, num_gpus=num_gpus)
    msg = str(e.value)
    assert f"num_gpus {num_gpus}" in msg and f"tensor_parallel_size {tp}" in msg
    assert f"pipeline_parallel_size {pp}" in msg and f"= {tp * pp}" in msg


def test_num_gpus_that_agrees_or_is_left_out_is_fine():
    assert cfg(tp=4, pp=2, num_gpus=8).num_gpus == 8
    assert replica_placement(cfg(tp=4)).bundles[1] == GPU_WORKER  # left out: derived
    # A non-GPU accelerator uses no GPUs: num_gpus 0 (the CPU demo's value) agrees.
    assert cfg(tp=2, num_gpus=0, placement={"accelerator": "acc"}).num_gpus == 0
    with pytest.raises(ValidationError, match="num_gpus 2 disagrees"):
        cfg(tp=2, num_gpus=2, placement={"accelerator": "acc"})


def test_the_hub_token_never_comes_from_the_config():
    with pytest.raises(ValidationError, match="env.HF_TOKEN"):
        ModelConfig.model_validate({"env": {"HF_TOKEN": "hf_x"}})


def test_an_allowance_beyond_the_controllers_limit_is_warned(monkeypatch, caplog):
    from deployments import app

    monkeypatch.setenv(app.SLOW_STARTUP_ENV, "30")
    with caplog.at_level("WARNING", logger="ray.serve"):
        app._check_startup_allowance(cfg(loading={"startup_allowance_s": 600}))
    assert "startup_allowance_s is 600 s but RAY_SERVE_SLOW_STARTUP_WARNING_S is 30 s" in caplog.text
    caplog.clear()
    monkeypatch.setenv(app.SLOW_STARTUP_ENV, "1800")
    with caplog.at_level("WARNING", logger="ray.serve"):
        app._check_startup_allowance(cfg(loading={"startup_allowance_s": 600}))
    assert caplog.text == ""
