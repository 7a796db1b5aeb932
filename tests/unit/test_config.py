"""serve_config.yaml's args validate at build time; typos fail with the field's name."""

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from deployments.config import BUILTIN_SMOLLM2, AppConfig

REPO = Path(__file__).resolve().parents[2]


def test_repo_config_is_valid_and_serves_the_real_model():
    cfg = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    app = cfg["applications"][0]
    assert app["import_path"] == "deployments.app:build_app"
    args = AppConfig.model_validate(app["args"])
    assert args.models[0].model == BUILTIN_SMOLLM2
    assert args.models[0].name == "smollm2-135m-instruct"
    assert args.models[0].engine_args.max_model_len == 4096


def test_builtin_models_are_named_without_the_prefix_and_unknown_ones_fail():
    cfg = AppConfig.model_validate({"models": [{"model": "builtin:tiny-llama"}, {"model": BUILTIN_SMOLLM2}]})
    assert [m.name for m in cfg.models] == ["tiny-llama", "smollm2-135m-instruct"]
    with pytest.raises(ValidationError, match="builtin:tiny-lama"):
        AppConfig.model_validate({"models": [{"model": "builtin:tiny-lama"}]})


def test_defaults_need_no_args():
    cfg = AppConfig.model_validate({})
    assert [m.name for m in cfg.models] == ["tiny-llama"]


def test_unknown_keys_fail_with_their_name():
    with pytest.raises(ValidationError, match="streming"):
        AppConfig.model_validate({"models": [{"streming": {}}]})


def test_engine_args_pass_through_unknown_vllm_arguments():
    cfg = AppConfig.model_validate({"models": [{"engine_args": {"max_num_batched_tokens": 4096, "dtype": "float16"}}]})
    kwargs = cfg.models[0].engine_args.as_kwargs()
    assert kwargs["max_num_batched_tokens"] == 4096 and kwargs["dtype"] == "float16"
    assert "quantization" not in kwargs  # unset optional arguments are left to vLLM's defaults


def test_duplicate_model_names_are_rejected():
    with pytest.raises(ValidationError, match="duplicate"):
        AppConfig.model_validate({"models": [{"model": "a/b"}, {"model": "c", "served_model_name": "a/b"}]})


def test_serve_accepts_the_config_file():
    """Ray Serve's own schema for `serve run`/`serve deploy` files accepts serve_config.yaml."""
    from ray.serve.schema import ServeDeploySchema

    cfg = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(cfg)
    assert schema.applications[0].import_path == "deployments.app:build_app"
    assert schema.http_options.port == 8000
    cfg["applications"][0]["import_path"] = "build_app"  # no module: what the schema must refuse
    with pytest.raises(Exception, match="import_path"):
        ServeDeploySchema.model_validate(cfg)


def test_cache_block_is_validated():
    cfg = yaml.safe_load((REPO / "serve_config.yaml").read_text())["applications"][0]["args"]
    args = AppConfig.model_validate(cfg)
    assert args.cache.enabled and args.cache.redis_url is None and args.cache.ttl_s == 300
    with pytest.raises(ValidationError, match="namespace"):
        AppConfig.model_validate({"cache": {"namespace": "bad name with spaces"}})
    with pytest.raises(ValidationError, match="simlarity_threshold"):
        AppConfig.model_validate({"cache": {"simlarity_threshold": 0.9}})


def test_a_colocated_ingress_reserves_what_the_first_models_replica_would():
    from deployments.app import ingress_options

    models = [{"model": "builtin:tiny-llama", "num_cpus": 1, "num_gpus": 1, "env": {"VLLM_CPU_KVCACHE_SPACE": "1"}},
              {"model": "builtin:tiny-llama", "served_model_name": "other"}]
    plain = ingress_options(AppConfig.model_validate({"models": models, "ingress": {"colocate": False}}))
    assert "num_gpus" not in (plain.get("ray_actor_options") or {})
    colocated = ingress_options(AppConfig.model_validate({"models": models, "ingress": {"colocate": True}}))
    actor = colocated["ray_actor_options"]
    assert actor["num_cpus"] == 1 and actor["num_gpus"] == 1
    assert actor["runtime_env"]["env_vars"]["VLLM_CPU_KVCACHE_SPACE"] == "1"


def test_colocate_auto_is_the_default_and_leaves_a_model_with_a_placement_group_its_own_deployment():
    from deployments.app import ingress_options
    from deployments.config import IngressConfig

    assert IngressConfig().colocate == "auto"
    one = {"model": "builtin:tiny-llama", "served_model_name": "one", "num_gpus": 1}
    tp = {"model": "builtin:tiny-llama", "served_model_name": "tp", "num_gpus": 2,
          "engine_args": {"tensor_parallel_size": 2}}
    config = AppConfig.model_validate({"models": [one, tp]})
    assert config.colocated_model().name == "one"
    assert ingress_options(config)["ray_actor_options"]["num_gpus"] == 1
    config = AppConfig.model_validate({"models": [tp, one]})
    assert config.colocated_model() is None  # auto: the tensor-parallel model keeps its placement group
    assert "num_gpus" not in (ingress_options(config).get("ray_actor_options") or {})
    assert AppConfig.model_validate({"models": [one], "ingress": {"colocate": False}}).colocated_model() is None
    with pytest.raises(ValidationError, match="colocate"):
        AppConfig.model_validate({"ingress": {"colocate": "sometimes"}})


def test_a_colocated_model_with_a_placement_group_is_refused_naming_the_model():
    from deployments.app import ingress_options

    big = {"model": "builtin:tiny-llama", "served_model_name": "big", "num_gpus": 4,
           "engine_args": {"tensor_parallel_size": 4}}
    with pytest.raises(ValueError, match="colocate: model big"):
        ingress_options(AppConfig.model_validate({"models": [big], "ingress": {"colocate": True}}))


def test_a_colocated_ingress_is_sized_as_the_first_model_with_its_queue_length_policy():
    from deployments.app import ingress_options

    auto = {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 16,
            "policy": {"policy_function": "deployments.autoscaling:QueueLengthPolicy",
                       "policy_kwargs": {"queue_weight": 2.0}}}
    model = {"model": "builtin:tiny-llama", "deployment": {"autoscaling_config": auto}}
    ingress = {"deployment": {"num_replicas": 2, "max_ongoing_requests": 1024}, "colocate": False}
    plain = ingress_options(AppConfig.model_validate({"models": [model], "ingress": ingress}))
    assert plain["num_replicas"] == 2 and "autoscaling_config" not in plain
    colocated = ingress_options(AppConfig.model_validate({"models": [model], "ingress": {**ingress, "colocate": True}}))
    assert "num_replicas" not in colocated and colocated["autoscaling_config"] == auto
    assert colocated["max_ongoing_requests"] == 1024  # the ingress's own, not the model's
    fixed = {"model": "builtin:tiny-llama", "deployment": {"num_replicas": 3}}
    colocated = ingress_options(AppConfig.model_validate({"models": [fixed], "ingress": {**ingress, "colocate": True}}))
    assert colocated["num_replicas"] == 3 and "autoscaling_config" not in colocated
    bad = {"model": "builtin:tiny-llama", "deployment": {"autoscaling_config": {
        **auto, "policy": {**auto["policy"], "policy_kwargs": {"queue_weight": 0.5}}}}}
    with pytest.raises(ValueError, match="policy_kwargs"):
        ingress_options(AppConfig.model_validate({"models": [bad], "ingress": {"colocate": True}}))
