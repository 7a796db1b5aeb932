"""deployments/ingress_router.py and its wiring in deployments/app.py: which requests the prefix router
sees, and when HAProxy is given a router at all."""

import json

from deployments.app import build_app, ingress_options, may_scale_out
from deployments.config import AppConfig, ModelConfig
from deployments.ingress_router import routing_body


def test_the_router_reads_chat_and_completion_bodies_of_its_model_only():
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert routing_body(json.dumps(chat).encode(), "m") == chat
    assert routing_body(json.dumps({"prompt": "hi"}).encode(), "m") == {"prompt": "hi"}  # the default model
    assert routing_body(json.dumps({**chat, "model": "other"}).encode(), "m") is None  # served by a handle
    assert routing_body(b'{"model": "m", "messages": [{"role": "us', "m") is None  # truncated: by load
    assert routing_body(b"[1, 2]", "m") is None and routing_body(b"", "m") is None
    assert routing_body(json.dumps({"model": "m"}).encode(), "m") is None  # nothing to match on
    assert routing_body(b"\xff\xfe", "m") is None


def _model(deployment: dict) -> dict:
    return {"model": "builtin:tiny-llama", "deployment": deployment}


def test_a_model_may_scale_out_by_its_replica_count_or_its_autoscaling_bound():
    assert not may_scale_out(ModelConfig.model_validate(_model({})))
    assert not may_scale_out(ModelConfig.model_validate(_model({"num_replicas": 1})))
    assert may_scale_out(ModelConfig.model_validate(_model({"num_replicas": 2})))
    assert may_scale_out(ModelConfig.model_validate(_model({"num_replicas": "auto"})))
    assert not may_scale_out(ModelConfig.model_validate(_model({"autoscaling_config": {"max_replicas": 1}})))
    assert may_scale_out(ModelConfig.model_validate(_model({"autoscaling_config": {"max_replicas": 4}})))


def test_haproxy_gets_an_ingress_router_only_for_a_colocated_model_that_may_scale_out():
    router = {"request_router_class": "router.request_router:PrefixAwareRequestRouter"}
    two = _model({"num_replicas": 2, "request_router_config": router})
    one = _model({"num_replicas": 1, "request_router_config": router})
    for models, colocate, routed in [([two], True, True), ([one], True, False), ([two], False, False)]:
        config = AppConfig.model_validate({"models": models, "ingress": {"colocate": colocate}})
        app = build_app(config)
        assert (app._ingress_request_router is not None) == routed, (models, colocate)
        options = ingress_options(config)
        assert ("request_router_config" in options) == routed
        if routed:
            assert options["request_router_config"]["request_router_class"] == router["request_router_class"]
            assert options["num_replicas"] == 2
