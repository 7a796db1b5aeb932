"""Admission control and request-control headers, without Ray: one event loop, a fake clock for rates."""

from __future__ import annotations

import asyncio
import time

import pytest

from deployments.admission import AdmissionConfig, AdmissionGate, Rejection
from common.errors import APIError
from deployments.request_controls import parse_controls


def gate(replicas: int = 1, rejections: list | None = None, **cfg) -> AdmissionGate:
    sink = rejections if rejections is not None else []
    return AdmissionGate("m", AdmissionConfig(**cfg), replicas=lambda: replicas,
                         on_reject=lambda model, reason: sink.append(reason))


def run(coro):
    return asyncio.run(coro)


def test_slots_scale_with_replicas_and_are_released_once():
    async def main():
        g = gate(replicas=2, max_inflight_per_replica=2, max_queued=0)
        slots = [await g.admit("normal", None) for _ in range(4)]
        assert g.inflight == 4
        with pytest.raises(Rejection) as e:
            await g.admit("high", None)
        assert (e.value.status, e.value.reason) == (503, "capacity") and e.value.retry_after_s
        slots[0].release()
        slots[0].release()
        assert g.inflight == 3
    run(main())


def test_waiters_are_served_by_priority_then_arrival():
    async def main():
        g = gate(max_inflight_per_replica=1, max_queued=10)
        held = await g.admit("normal", None)
        order = []

        async def waiter(name, priority):
            slot = await g.admit(priority, None)
            order.append(name)
            slot.release()

        tasks = [asyncio.create_task(waiter(n, p)) for n, p in
                 [("low1", "low"), ("normal1", "normal"), ("high1", "high"), ("normal2", "normal"), ("high2", "high")]]
        await asyncio.sleep(0.01)
        assert g.queued() == {"high": 2, "normal": 2, "low": 1}
        held.release()
        await asyncio.gather(*tasks)
        assert order == ["high1", "high2", "normal1", "normal2", "low1"]
        assert g.inflight == 0
    run(main())


def test_lower_priorities_are_refused_first_when_the_queue_fills():
    async def main():
        rejections = []
        g = gate(rejections=rejections, max_inflight_per_replica=1, max_queued=10,
                 queue_share={"high": 1.0, "normal": 0.8, "low": 0.5})
        held = await g.admit("normal", None)  # noqa: F841
        waiting = [asyncio.create_task(g.admit("low", None)) for _ in range(5)]
        await asyncio.sleep(0)
        with pytest.raises(Rejection):  # the queue holds 5 of 10: low's share is used up
            await g.admit("low", None)
        waiting += [asyncio.create_task(g.admit("normal", None)) for _ in range(3)]
        await asyncio.sleep(0)
        with pytest.raises(Rejection):  # the queue holds 8 of 10: normal's share is used up
            await g.admit("normal", None)
        waiting += [asyncio.create_task(g.admit("high", None)) for _ in range(2)]
        await asyncio.sleep(0)
        assert g.queued() == {"high": 2, "normal": 3, "low": 5}
        # Full: a high-priority arrival sheds the newest low-priority waiter.
        waiting.append(asyncio.create_task(g.admit("high", None)))
        await asyncio.sleep(0)
        assert g.queued() == {"high": 3, "normal": 3, "low": 4}
        shed = waiting[4]
        with pytest.raises(Rejection) as e:
            await shed
        assert e.value.reason == "shed"
        assert rejections == ["capacity", "capacity", "shed"]
        for t in waiting:
            t.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        assert sum(g.queued().values()) == 0
    run(main())


def test_rejection_happens_at_arrival_in_well_under_a_millisecond():
    async def main():
        g = gate(max_inflight_per_replica=1, max_queued=0)
        held = await g.admit("normal", None)  # noqa: F841 (a dropped Slot gives its capacity back)
        t0 = time.perf_counter()
        for _ in range(1000):
            with pytest.raises(Rejection):
                await g.admit("normal", None)
        assert (time.perf_counter() - t0) / 1000 < 0.001
    run(main())


def test_a_waiter_is_dropped_at_its_deadline_and_never_gets_a_slot():
    async def main():
        rejections = []
        g = gate(rejections=rejections, max_inflight_per_replica=1, max_queued=4)
        held = await g.admit("normal", None)
        t0 = time.monotonic()
        with pytest.raises(Rejection) as e:
            await g.admit("high", time.monotonic() + 0.05)
        assert 0.04 <= time.monotonic() - t0 < 1.0
        assert (e.value.status, e.value.reason) == (503, "deadline")
        assert sum(g.queued().values()) == 0
        held.release()
        assert g.inflight == 0
        with pytest.raises(Rejection) as e:  # already past on arrival
            await g.admit("high", time.monotonic() - 1)
        assert e.value.reason == "deadline" and rejections == ["deadline", "deadline"]
    run(main())


def test_an_expired_waiter_is_skipped_when_a_slot_frees():
    async def main():
        now = [0.0]
        g = AdmissionGate("m", AdmissionConfig(max_inflight_per_replica=1, max_queued=4), replicas=lambda: 1,
                          clock=lambda: now[0])
        held = await g.admit("normal", None)
        expiring = asyncio.create_task(g.admit("high", 5.0))
        later = asyncio.create_task(g.admit("low", None))
        await asyncio.sleep(0)
        now[0] = 6.0  # past the first waiter's deadline, before its own timer fires
        held.release()
        with pytest.raises(Rejection):
            await expiring
        slot = await later
        assert g.inflight == 1
        slot.release()
    run(main())


def test_queue_wait_is_bounded_without_a_deadline():
    async def main():
        g = gate(max_inflight_per_replica=1, max_queued=4, max_queue_wait_s=0.05)
        held = await g.admit("normal", None)  # noqa: F841
        with pytest.raises(Rejection) as e:
            await g.admit("normal", None)
        assert e.value.reason == "queue_timeout"
    run(main())


def test_a_cancelled_waiter_leaves_the_queue_and_frees_nothing_it_did_not_hold():
    async def main():
        g = gate(max_inflight_per_replica=1, max_queued=4)
        held = await g.admit("normal", None)
        t = asyncio.create_task(g.admit("normal", None))
        await asyncio.sleep(0)
        t.cancel()
        await asyncio.gather(t, return_exceptions=True)
        assert sum(g.queued().values()) == 0 and g.inflight == 1
        held.release()
        assert g.inflight == 0
    run(main())


def test_token_bucket_refuses_with_429_and_the_time_to_the_next_token():
    async def main():
        now = [0.0]
        rejections = []
        g = AdmissionGate("m", AdmissionConfig(rate_limit_rps=2, rate_limit_burst=2), replicas=lambda: 1,
                          clock=lambda: now[0], on_reject=lambda m, r: rejections.append(r))
        (await g.admit("high", None)).release()
        (await g.admit("high", None)).release()
        with pytest.raises(Rejection) as e:
            await g.admit("high", None)
        assert e.value.status == 429 and e.value.retry_after_s == pytest.approx(0.5)
        now[0] = 0.5
        (await g.admit("normal", None)).release()
        assert rejections == ["rate"]
    run(main())


def test_capacity_growth_lets_waiters_in_without_a_release():
    async def main():
        replicas = [1]
        g = AdmissionGate("m", AdmissionConfig(max_inflight_per_replica=1, max_queued=4),
                          replicas=lambda: replicas[0])
        held = await g.admit("normal", None)  # noqa: F841
        waiter = asyncio.create_task(g.admit("normal", None))
        await asyncio.sleep(0)
        assert g.queued()["normal"] == 1
        replicas[0] = 3
        newcomer = asyncio.create_task(g.admit("normal", None))  # its arrival dispatches both
        done, _ = await asyncio.wait([waiter, newcomer], timeout=1)
        assert len(done) == 2 and g.inflight == 3
    run(main())


def test_a_dropped_slot_gives_its_capacity_back():
    async def main():
        g = gate(max_inflight_per_replica=1, max_queued=0)
        await g.admit("normal", None)  # the Slot is dropped at once (a response that never ran)
        assert g.inflight == 0
    run(main())


def test_config_refuses_unknown_priorities_and_bad_shares():
    with pytest.raises(ValueError):
        AdmissionConfig(queue_share={"urgent": 1.0})
    with pytest.raises(ValueError):
        AdmissionConfig(queue_share={"low": 1.5})


# ---- headers ------------------------------------------------------------------------------------

def test_controls_parse_and_default():
    c = parse_controls({}, now=1000.0)
    assert (c.priority, c.deadline, c.session_id) == ("normal", None, None)
    c = parse_controls({"x-raygate-priority": "HIGH", "x-raygate-timeout-ms": "1500",
                        "x-session-id": "user-42:chat/7"}, now=1_800_000_000.0)
    assert c.priority == "high" and c.deadline == pytest.approx(1_800_000_001.5) and c.session_id == "user-42:chat/7"
    c = parse_controls({"x-raygate-timeout-ms": "5000", "x-raygate-deadline": "1800000002"}, now=1_800_000_000.0)
    assert c.deadline == 1_800_000_002  # the earlier of the two


@pytest.mark.parametrize("headers, field", [
    ({"x-raygate-priority": "urgent"}, "x-raygate-priority"),
    ({"x-raygate-timeout-ms": "-5"}, "x-raygate-timeout-ms"),
    ({"x-raygate-timeout-ms": "soon"}, "x-raygate-timeout-ms"),
    ({"x-raygate-timeout-ms": "nan"}, "x-raygate-timeout-ms"),
    ({"x-raygate-deadline": "tomorrow"}, "x-raygate-deadline"),
    ({"x-raygate-deadline": "1800000000000"}, "x-raygate-deadline"),  # milliseconds, not seconds
    ({"x-raygate-deadline": "30"}, "x-raygate-deadline"),  # relative, not a Unix time
    ({"x-session-id": ""}, "x-session-id"),
    ({"x-session-id": "has spaces"}, "x-session-id"),
    ({"x-session-id": "x" * 129}, "x-session-id"),
])
def test_malformed_controls_are_400_naming_the_header(headers, field):
    with pytest.raises(APIError) as e:
        parse_controls(headers, now=1_800_000_000.0)
    assert e.value.status == 400 and e.value.param == field and field in e.value.message


def test_unset_bounds_follow_the_engines_batch():
    """The shipped config leaves the bounds unset: a replica takes what its engine batches
    (max_num_seqs) and twice as many may wait."""
    from deployments.config import ModelConfig

    cfg = ModelConfig(engine_args={"max_num_seqs": 128}).admission
    assert (cfg.max_inflight_per_replica, cfg.max_queued) == (128, 256)
    cfg = ModelConfig(engine_args={"max_num_seqs": 128}, admission={"max_inflight_per_replica": 8}).admission
    assert (cfg.max_inflight_per_replica, cfg.max_queued) == (8, 16)
    cfg = ModelConfig(admission={"max_inflight_per_replica": 8, "max_queued": 0}).admission
    assert (cfg.max_inflight_per_replica, cfg.max_queued) == (8, 0)
    assert ModelConfig().admission.max_inflight_per_replica == 256  # vLLM's own default batch


async def test_twice_the_engines_batch_at_normal_priority_is_never_refused():
    """bench.compare at concurrency 128 in front of the shipped 64-slot engine: with one batch of
    waiters (normal's share 51) the gate refused 285 of 400 requests that `vllm serve` served."""
    from deployments.config import ModelConfig

    gate = AdmissionGate("m", ModelConfig(engine_args={"max_num_seqs": 64}).admission, replicas=lambda: 1)
    slots = [await asyncio.wait_for(gate.admit("normal", None), 0.1) for _ in range(64)]
    waiters = [asyncio.ensure_future(gate.admit("normal", None)) for _ in range(64)]
    await asyncio.sleep(0)
    assert gate.inflight == 64 and gate.queued()["normal"] == 64
    assert not any(w.done() for w in waiters)  # waiting, none refused
    for s in slots:
        s.release()
    await asyncio.wait_for(asyncio.gather(*waiters), 1.0)
    assert gate.inflight == 64 and gate.queued()["normal"] == 0


async def test_a_gate_sized_from_the_engine_admits_its_whole_batch_without_waiting():
    from deployments.config import ModelConfig

    gate = AdmissionGate("m", ModelConfig(engine_args={"max_num_seqs": 128}).admission, replicas=lambda: 1)
    slots = [await asyncio.wait_for(gate.admit("normal", None), 0.1) for _ in range(128)]
    assert gate.inflight == 128
    waiting = asyncio.ensure_future(gate.admit("normal", None))
    await asyncio.sleep(0)
    assert gate.queued()["normal"] == 1
    slots[0].release()
    await asyncio.wait_for(waiting, 0.1)
