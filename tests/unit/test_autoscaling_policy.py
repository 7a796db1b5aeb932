"""The queue-length autoscaling policy on hand-made contexts, and through Serve's own config types."""

import types

import pytest
from ray.serve.config import AutoscalingConfig

from deployments.autoscaling import ENGINE_RUNNING, ENGINE_WAITING, QueueLengthPolicy


def point(value):
    return types.SimpleNamespace(timestamp=0.0, value=value)


def ctx(queued=0.0, running=0.0, engines=None, target=4, current=1):
    raw = {}
    if engines is not None:
        raw = {ENGINE_RUNNING: {f"r{i}": [point(99), point(r)] for i, (r, _) in enumerate(engines)},
               ENGINE_WAITING: {f"r{i}": [point(99), point(w)] for i, (_, w) in enumerate(engines)}}
    return types.SimpleNamespace(
        total_queued_requests=queued, total_running_requests=running, raw_metrics=raw,
        config=AutoscalingConfig(min_replicas=0, max_replicas=8, target_ongoing_requests=target),
        target_num_replicas=current, current_num_replicas=current)


def test_without_engine_stats_it_is_serves_ongoing_count():
    policy = QueueLengthPolicy(queue_weight=1.0, floor=0)
    assert policy(ctx(queued=0, running=8))[0] == 2
    assert policy(ctx(queued=4, running=8))[0] == 3


def test_waiting_requests_weigh_more_than_running_ones():
    policy = QueueLengthPolicy(queue_weight=2.0)
    # 4 running, none waiting: one replica is enough at target 4.
    assert policy(ctx(running=4, engines=[(4, 0)]))[0] == 1
    # The same ongoing count with 2 of them waiting in the engine: 2 running + 2*2 queued = 6 -> 2.
    assert policy(ctx(running=4, engines=[(2, 2)]))[0] == 2
    # Requests queued at the handles count as waiting too: 4 + 2*4 = 12 -> 3.
    assert policy(ctx(queued=4, running=4, engines=[(4, 0)]))[0] == 3


def test_engine_stats_use_each_replicas_latest_value_summed():
    policy = QueueLengthPolicy(queue_weight=1.0)
    assert policy(ctx(running=16, engines=[(8, 0), (8, 0)]))[0] == 4


def test_floor_holds_while_there_is_load_and_zero_when_idle():
    policy = QueueLengthPolicy(floor=2)
    assert policy(ctx(running=1, engines=[(1, 0)]))[0] == 2
    assert policy(ctx(running=0, engines=[(0, 0)]))[0] == 0


def test_a_broken_context_keeps_the_current_target():
    bad = types.SimpleNamespace(total_queued_requests="x", total_running_requests=None, raw_metrics=None,
                                config=None, target_num_replicas=3)
    assert QueueLengthPolicy()(bad) == (3, {})


def test_bad_kwargs_are_refused():
    with pytest.raises(ValueError):
        QueueLengthPolicy(queue_weight=0.5)


def test_serve_accepts_the_policy_in_an_autoscaling_config():
    cfg = AutoscalingConfig(min_replicas=1, max_replicas=2, target_ongoing_requests=4,
                            policy={"policy_function": "deployments.autoscaling:QueueLengthPolicy",
                                    "policy_kwargs": {"queue_weight": 2.0, "floor": 1}})
    assert cfg.policy.policy_kwargs == {"queue_weight": 2.0, "floor": 1}


@pytest.mark.parametrize("kwargs, needle", [({"queue_weight": 2.0, "bogus": 3}, "bogus"),
                                             ({"queue_weight": 0.1}, "queue_weight")])
def test_wrong_policy_kwargs_fail_the_build_naming_the_model_and_the_field(kwargs, needle):
    from deployments.app import build_llm_deployment
    from deployments.config import ModelConfig

    policy = {"policy_function": "deployments.autoscaling:QueueLengthPolicy", "policy_kwargs": kwargs}
    cfg = ModelConfig(served_model_name="m", deployment={"autoscaling_config": {"min_replicas": 1, "max_replicas": 2,
                                                                                 "policy": policy}})
    with pytest.raises(ValueError, match=needle) as e:
        build_llm_deployment(cfg)
    assert "models[m].deployment.autoscaling_config.policy.policy_kwargs" in str(e.value)
