"""PrefixAwareRequestRouter inside Serve's routing loop, with stand-in replicas (no Ray cluster).

What the policy's own tests cannot show: the queue lengths the policy reads are Serve's cache, and
requests routed in the same event-loop turn must each see the ones assigned before them.
"""

from __future__ import annotations

import asyncio
import uuid

from ray.serve._private.common import DeploymentHandleSource, DeploymentID, ReplicaID, RequestMetadata
from ray.serve._private.request_router.common import PendingRequest

from router.request_router import PrefixAwareRequestRouter

SYSTEM = "You are a glaciologist. " * 20


class StandInReplica:
    """What Serve's routing loop reads from a replica; its queue length is only ever probed here."""

    def __init__(self, name: str, queue_len: int = 0):
        self.replica_id = ReplicaID(unique_id=name, deployment_id=DeploymentID(name="llm", app_name="raygate"))
        self.actor_id = None
        self.node_id = ""
        self.availability_zone = None
        self.multiplexed_model_ids: set[str] = set()
        self.routing_stats: dict = {}
        self.replica_metadata: dict = {}
        self.max_ongoing_requests = 64
        self.is_cross_language = False
        self.queue_len = queue_len

    async def get_queue_len(self, *, deadline_s: float) -> int:
        return self.queue_len


def _router(**kwargs) -> PrefixAwareRequestRouter:
    router = PrefixAwareRequestRouter(deployment_id=DeploymentID(name="llm", app_name="raygate"),
                                      handle_source=DeploymentHandleSource.UNKNOWN,
                                      use_replica_queue_len_cache=True)
    router.initialize_state(**kwargs)
    return router


def _request(text: str, session_id: str = "", system: str = SYSTEM) -> PendingRequest:
    """A pending LLM call as the ingress makes it: the kind, the validated request, raygate's request id;
    the session id (if any) in Serve's request metadata."""
    from common.request_kind import RequestKind
    from deployments.request_parsing import validate_request

    request = validate_request(RequestKind.CHAT, {"model": "m", "messages": [
        {"role": "system", "content": system}, {"role": "user", "content": text}]})
    metadata = RequestMetadata(request_id=uuid.uuid4().hex, internal_request_id=uuid.uuid4().hex,
                               session_id=session_id)
    return PendingRequest(args=[RequestKind.CHAT, request, uuid.uuid4().hex], kwargs={}, metadata=metadata)


async def _route(router: PrefixAwareRequestRouter, *requests: PendingRequest) -> list:
    """Serve's routing loop assigns each request a replica (concurrently, as pending requests)."""
    return await asyncio.gather(*(router._choose_replica_for_request(pr) for pr in requests))


def _queue_len(router: PrefixAwareRequestRouter, replica: StandInReplica) -> int:
    return router._replica_queue_len_cache.get(replica.replica_id)


def test_requests_routed_in_one_turn_each_see_those_assigned_before():
    """Two requests with a prefix that replica `holder` holds wait for a replica at once. The first
    is counted against `holder` as it is assigned, so (imbalance_abs 0) the second finds `holder`
    overloaded and goes to the other replica, though neither request has been sent yet."""

    async def main():
        router = _router(imbalance_abs=0, imbalance_rel=1.5)
        replicas = [StandInReplica("a"), StandInReplica("b")]
        router.update_replicas(replicas)
        await asyncio.sleep(0.05)  # Serve probes new replicas' queue lengths: all 0

        warm = _request("warm")
        [holder] = await _route(router, warm)
        router.on_request_routed(warm, holder.replica_id, None)  # `holder` now holds the prefix
        assert _queue_len(router, holder) == 1
        router.on_send_request(holder.replica_id)  # the send of a counted request counts nothing more
        assert _queue_len(router, holder) == 1
        router.decrement_queue_len_cache(holder.replica_id)  # ... and its completion frees the slot
        assert _queue_len(router, holder) == 0

        first, second = await _route(router, _request("long answer 0"), _request("long answer 1"))
        return holder, first, second, replicas

    holder, first, second, replicas = asyncio.run(main())
    assert first is holder
    assert {first.replica_id, second.replica_id} == {r.replica_id for r in replicas}


def test_a_replica_whose_cached_queue_length_expired_counts_what_its_engine_reported():
    """One long stream on the prefix holder outlives Serve's cached queue length (10 s with no send,
    completion or probe). The holder's routing stats still report it, so (imbalance_abs 0) the next
    request with that prefix goes to the other replica; read as empty it would stay on the holder."""
    from router.request_router import INFLIGHT_STAT

    async def main():
        router = _router(imbalance_abs=0, imbalance_rel=1.5)
        replicas = [StandInReplica("a"), StandInReplica("b")]
        router.update_replicas(replicas)
        await asyncio.sleep(0.05)

        warm = _request("warm")
        [holder] = await _route(router, warm)
        router.on_request_routed(warm, holder.replica_id, None)
        router.decrement_queue_len_cache(holder.replica_id)
        stream = _request("long answer 0")
        [first] = await _route(router, stream)
        router.on_request_routed(stream, first.replica_id, None)
        for replica in replicas:  # 10 s later: every cached length expired; the engines' reports remain
            router._replica_queue_len_cache.invalidate_key(replica.replica_id)
            replica.routing_stats = {INFLIGHT_STAT: 1 if replica is holder else 0}
        holder.queue_len = 1  # what a probe of the holder would answer
        counted = router.queue_lens()
        [second] = await _route(router, _request("long answer 1"))
        router._assigned.clear()  # a later send to the holder, not counted at assignment (Serve's own count)
        router.on_send_request(holder.replica_id)  # counts up from the engine's report, not from 0
        return holder, first, second, counted, router._replica_queue_len_cache.get(holder.replica_id)

    holder, first, second, counted, after_send = asyncio.run(main())
    assert first is holder
    assert counted[holder.replica_id.unique_id] == 1
    assert second is not holder
    assert after_send == 2


def test_an_assignment_never_sent_stops_counting_after_a_while(monkeypatch):
    """A request cancelled between assignment and send: the next send to that replica, once the
    assignment is stale, counts as usual."""
    import router.request_router as module

    async def main():
        router = _router()
        replica = StandInReplica("a")
        router.update_replicas([replica])
        await asyncio.sleep(0.05)
        await _route(router, _request("cancelled before it was sent"))
        assert _queue_len(router, replica) == 1
        monkeypatch.setattr(module, "_ASSIGNED_TTL_S", 0.0)
        await asyncio.sleep(0.01)
        router.on_send_request(replica.replica_id)  # another request, sent without an assignment here
        return _queue_len(router, replica)

    assert asyncio.run(main()) == 2


def test_a_session_id_in_the_request_metadata_keeps_a_conversation_on_its_replica():
    """The ingress sets the session id as Serve's request metadata (`handle.options(session_id=...)`);
    the router reads it there. Nothing shared but the session, and each request left counted against
    its replica (so load alone would alternate): one replica."""

    async def main():
        router = _router()
        replicas = [StandInReplica("a"), StandInReplica("b")]
        router.update_replicas(replicas)
        await asyncio.sleep(0.05)
        chosen = []
        for i in range(6):
            pending = _request(f"turn {i}", session_id="conv-7", system=f"{i} " * 200)
            [replica] = await _route(router, pending)
            router.on_request_routed(pending, replica.replica_id, None)
            chosen.append(replica.replica_id)
        return chosen

    chosen = asyncio.run(main())
    assert len(set(chosen)) == 1, chosen


def test_a_replica_that_refused_for_a_lost_engine_is_skipped_at_once_and_not_forever():
    """The ingress marks a replica whose engine is gone (EngineUnavailable) before its routing stats
    can say so; requests, the refused one's retries among them, go elsewhere, even with the prefix
    and the session pointing at it, until the mark expires. Its own stats skip it the same way. With
    every replica skipped, requests still go somewhere (Serve replaces the replicas)."""

    async def main():
        router = _router()
        replicas = [StandInReplica("a"), StandInReplica("b")]
        router.update_replicas(replicas)
        await asyncio.sleep(0.05)
        first = await _route(router, _request("q", session_id="s1"))
        pinned = first[0].replica_id.unique_id
        other = "b" if pinned == "a" else "a"
        router.mark_unavailable(pinned, for_s=0.3)
        routed = await _route(router, *(_request("q", session_id="s1") for _ in range(6)))
        assert {r.replica_id.unique_id for r in routed} == {other}
        await asyncio.sleep(0.35)
        again = await _route(router, _request("q", session_id="s1"))
        assert again[0].replica_id.unique_id == pinned  # the mark expired; the session's replica again
        next(r for r in replicas if r.replica_id.unique_id == other).routing_stats = {"unhealthy": "stalled"}
        routed = await _route(router, *(_request(f"new {i}") for i in range(4)))
        assert {r.replica_id.unique_id for r in routed} == {pinned}
        router.mark_unavailable(pinned)
        routed = await _route(router, _request("all skipped"))
        assert routed[0].replica_id.unique_id in {"a", "b"}

    asyncio.run(main())


async def _route_only(router: PrefixAwareRequestRouter, body: dict, session_id: str = "") -> str:
    """A choice as deployments/ingress_router.py asks for it: the raw body, final, never sent by Serve."""
    from router.request_router import ROUTE_ONLY_KWARG

    pending = PendingRequest(args=[body], kwargs={ROUTE_ONLY_KWARG: True}, metadata=RequestMetadata(
        request_id=uuid.uuid4().hex, internal_request_id=uuid.uuid4().hex, session_id=session_id))
    [rank] = await router.choose_replicas(list(router._replicas.values()), pending)
    assert len(rank) == 1, "a route-only choice names one replica"
    return rank[0].replica_id.unique_id


def _chat_body(system: str, text: str) -> dict:
    return {"model": "m", "messages": [{"role": "system", "content": system}, {"role": "user", "content": text}]}


def test_route_only_choices_are_recorded_so_a_prefix_and_a_session_stay_on_one_replica():
    """Serve never calls on_request_routed for a choice it does not send: the router records it itself,
    or every turn of a conversation would be a fresh (load-balanced) choice."""

    async def main():
        router = _router()
        router.update_replicas([StandInReplica("a"), StandInReplica("b")])
        turns = {await _route_only(router, _chat_body(SYSTEM, f"question {i}")) for i in range(6)}
        session = {await _route_only(router, _chat_body(f"{i} " * 200, f"turn {i}"), session_id="conv-9")
                   for i in range(6)}
        return turns, session

    turns, session = asyncio.run(main())
    assert len(turns) == 1, turns
    assert len(session) == 1, session


def test_route_only_choices_spread_by_reported_engine_load_and_by_choices_since_the_last_report():
    from router.request_router import INFLIGHT_STAT

    async def main():
        router = _router(imbalance_abs=2, imbalance_rel=1.5)
        busy, idle = StandInReplica("busy"), StandInReplica("idle")
        busy.routing_stats, idle.routing_stats = {INFLIGHT_STAT: 30}, {INFLIGHT_STAT: 0}
        router.update_replicas([busy, idle])
        # Distinct prompts, no session: the engine that reports less load gets them.
        first = [await _route_only(router, _chat_body(f"{i} " * 100, "x")) for i in range(5)]
        # Both report 0 now, but the 5 choices just made (within one report period) weigh against `idle`.
        busy.routing_stats = idle.routing_stats = {INFLIGHT_STAT: 0}
        spread = [await _route_only(router, _chat_body(f"new {i} " * 100, "y")) for i in range(4)]
        return first, spread

    first, spread = asyncio.run(main())
    assert first == ["idle"] * 5, first
    assert spread == ["busy"] * 4, spread
