"""The Ray Serve `RequestRouter` of every LLM deployment: `PrefixRoutingPolicy` behind Serve's API.

Serve calls `choose_replicas` with the replicas that may take the request and sends the request to
the least-loaded replica of the first rank that accepts it; `on_request_routed` tells us where it
went. Everything the choice needs is in this process -- the prefix index, the session table, and
the queue lengths that Serve's router already tracks (incremented on send, decremented on
completion, corrected by replica probes) -- so routing adds no remote call to a request's path,
unlike Ray Serve LLM's PrefixCacheAffinityRouter, which asks a detached actor per request.

A request counts against its replica from the moment it is assigned, not only once its coroutine
has sent it (Serve's own increment): requests routed in the same event-loop turn -- a burst, or
two whose cache lookups finished together -- must each see the ones before, or they all pile onto
the replica that looked least loaded.

Serve makes one router per deployment per process (every handle to the deployment in that process
shares it); router/registry.py lists them, for the ingress's admin views, admission bounds and the
model call's replica checks.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, defaultdict, deque
from typing import Any, List, Optional

from ray.serve._private.common import ReplicaID, RequestMetadata
from ray.serve._private.replica_result import ReplicaResult
from ray.serve._private.request_router.common import PendingRequest
from ray.serve._private.request_router.replica_wrapper import RunningReplica
from ray.serve._private.request_router.request_router import LocalityMixin, MultiplexMixin, RequestRouter

from router import metrics, registry
from router.policy import Decision, PrefixRoutingPolicy, RouterSettings
from router.prompt_text import routing_text

logger = logging.getLogger("ray.serve")

UNHEALTHY_STAT = "unhealthy"  # a replica's routing stats key: true once it must not get requests
# A replica's routing stats key: requests its engine holds (running + waiting). The load of choices
# that are not sent through Serve (ROUTE_ONLY_KWARG), whose queue lengths Serve never counts, and of a
# replica whose cached queue length expired (see `_load`).
INFLIGHT_STAT = "inflight"
# A keyword argument of `DeploymentHandle.choose_replica(..., _reserve=False)`: the choice is final
# here, and the request goes by another way (HAProxy, deployments/ingress_router.py), so Serve will
# neither report it routed nor count it in a queue length.
ROUTE_ONLY_KWARG = "route_only"
# How often Serve pushes each replica's routing stats to its routers (deployments/app.py sets
# request_routing_stats_period_s to this unless the config gives its own).
ROUTING_STATS_PERIOD_S = 2.0
# A keyword argument of an LLM call that the router reads: a replica's unique id, for admin calls
# that must reach one given replica. The session id is not an argument: the ingress sets it as Serve's
# request metadata (`handle.options(session_id=...)`), where Serve's own session routing reads it.
PIN_KWARG = "replica"  # a replica's unique id: admin calls that must reach one given replica
_MAX_UNROUTED = 10_000
# An assignment whose send has not followed within this long was cancelled in between: forget it.
_ASSIGNED_TTL_S = 2.0
# How long a replica that answered "engine unavailable" is skipped by this router: until its own
# routing stats say so (every request_routing_stats_period_s) or Serve replaces it, whichever first.
UNAVAILABLE_SKIP_S = 60.0


def _request(pending: PendingRequest) -> Optional[Any]:
    """The request the call carries: the validated request object the ingress sends (anything with
    `messages` or `prompt`), or a body dict."""
    for arg in pending.args:
        if isinstance(arg, dict) or hasattr(arg, "messages") or hasattr(arg, "prompt"):
            return arg
    return None


class PrefixAwareRequestRouter(LocalityMixin, MultiplexMixin, RequestRouter):
    """Prefix-cache, session and load aware replica choice (see router/policy.py)."""

    def initialize_state(self, **kwargs: Any) -> None:
        self.policy = PrefixRoutingPolicy(RouterSettings.model_validate(kwargs))
        self._decisions: OrderedDict[str, Decision] = OrderedDict()
        self._deployment = self._deployment_id.name if self._deployment_id else ""
        self._assigned: defaultdict[ReplicaID, deque[float]] = defaultdict(deque)  # assigned, not yet sent
        self._unavailable: dict[str, float] = {}  # replica unique id -> skipped until (monotonic)
        self._route_only_recent: defaultdict[ReplicaID, deque[float]] = defaultdict(deque)  # ROUTE_ONLY_KWARG
        self._stats_period_s = ROUTING_STATS_PERIOD_S
        registry.register(self)

    def mark_unavailable(self, replica_unique_id: str, for_s: float = UNAVAILABLE_SKIP_S) -> None:
        """A replica refused a request because its engine is gone (the ingress saw EngineUnavailable):
        route nothing more to it while another replica can take the request, starting now. Its routing
        stats say the same, but reach this router only every request_routing_stats_period_s: without
        this, the retries of the very request that found it could be sent back to it."""
        self._unavailable[replica_unique_id] = time.monotonic() + for_s

    def _skipped(self, replica: RunningReplica, now: float) -> bool:
        if (replica.routing_stats or {}).get(UNHEALTHY_STAT):
            return True
        until = self._unavailable.get(replica.replica_id.unique_id)
        if until is not None and now >= until:
            del self._unavailable[replica.replica_id.unique_id]
            return False
        return until is not None

    @property
    def deployment_name(self) -> str:
        return self._deployment

    def replica_ids(self) -> list[str]:
        return [rid.unique_id for rid in self._replicas]

    def queue_lens(self) -> dict[str, Optional[int]]:
        """Each replica's load as this router counts it (`_load`; None: not known)."""
        return {rid.unique_id: self._load(replica) for rid, replica in self._replicas.items()}

    def _load(self, replica: RunningReplica) -> Optional[int]:
        """Requests in flight on `replica`: Serve's cached queue length (incremented on send,
        decremented on completion, set by probes), else -- once that expired, after
        RAY_SERVE_QUEUE_LENGTH_CACHE_TIMEOUT_S (10 s) with no send, completion or probe, as while one
        long stream runs -- what its engine held at its last routing stats (every
        request_routing_stats_period_s). Without the fallback a replica busy with a stream longer
        than 10 s counted as empty and kept its prefix's next requests (CI: the overloaded-holder test
        read None). The engine's figure then seeds Serve's cache, so that the next send counts up
        from it (Serve's `on_send_request` counts from 0 when the entry is missing). None: neither is
        known (a new replica; Serve probes it if chosen)."""
        queued = self._replica_queue_len_cache.get(replica.replica_id)
        if queued is None:
            queued = (replica.routing_stats or {}).get(INFLIGHT_STAT)
            if queued is not None:
                self._replica_queue_len_cache.update(replica.replica_id, queued)
        return queued

    async def choose_replicas(self, candidate_replicas: List[RunningReplica],
                              pending_request: Optional[PendingRequest] = None) -> List[List[RunningReplica]]:
        if not candidate_replicas:
            return []
        if pending_request is None:
            return [candidate_replicas]
        pinned = pending_request.kwargs.get(PIN_KWARG)
        if pinned is not None:
            return [[r for r in candidate_replicas if r.replica_id.unique_id == pinned]]
        # A replica that reports itself unhealthy (its engine stalled: deployments/engine_watchdog.py),
        # or that just refused a request for that reason, gets nothing while another can take the
        # request; Serve replaces it after its health checks.
        now = time.monotonic()
        healthy = [r for r in candidate_replicas if not self._skipped(r, now)]
        candidate_replicas = healthy or candidate_replicas
        request = _request(pending_request)
        text = routing_text(request) if request is not None else ""
        by_id = {r.replica_id: r for r in candidate_replicas}
        session = pending_request.metadata.session_id or None
        if pending_request.kwargs.get(ROUTE_ONLY_KWARG):
            return [[by_id[self._route_only(by_id, text, session, now)]]]
        loads = {rid: self._load(replica) for rid, replica in by_id.items()}
        decision = self.policy.choose(list(by_id), loads, text, session)
        key = pending_request.metadata.internal_request_id
        self._decisions[key] = decision
        while len(self._decisions) > _MAX_UNROUTED:  # requests cancelled before they were routed
            self._decisions.popitem(last=False)
        return [[by_id[rid] for rid in rank] for rank in decision.ranks]

    def _route_only(self, by_id: dict[ReplicaID, RunningReplica], text: str, session: Optional[str],
                    now: float) -> ReplicaID:
        """A final choice for a request that Serve will not send: the least loaded of the policy's first
        rank, recorded as routed at once. Loads: what each replica's engine held at its last routing
        stats (every request_routing_stats_period_s) plus the choices made here since, so that a burst
        between two reports is spread."""
        recent = self._route_only_recent
        loads = {}
        for rid, replica in by_id.items():
            sent = recent[rid]
            while sent and now - sent[0] > self._stats_period_s:
                sent.popleft()
            loads[rid] = int((replica.routing_stats or {}).get(INFLIGHT_STAT) or 0) + len(sent)
        decision = self.policy.choose(list(by_id), loads, text, session)
        first = next(rank for rank in decision.ranks if rank)
        chosen = min(first, key=lambda rid: loads[rid])
        recent[chosen].append(now)
        self.policy.routed(decision, chosen)
        metrics.DECISIONS.inc(tags={"deployment": self._deployment, "decision": decision.reason})
        return chosen

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID,
                          result: ReplicaResult) -> None:
        decision = self._decisions.pop(pending_request.metadata.internal_request_id, None)
        if decision is None:
            return
        self.policy.routed(decision, replica_id)
        metrics.DECISIONS.inc(tags={"deployment": self._deployment, "decision": decision.reason})

    def _fulfill_next_pending_request(self, replica: RunningReplica,
                                      request_metadata: Optional[RequestMetadata] = None) -> None:
        super()._fulfill_next_pending_request(replica, request_metadata)
        super().on_send_request(replica.replica_id)  # counted now; the send below must not count it again
        self._assigned[replica.replica_id].append(time.monotonic())

    def on_send_request(self, replica_id: ReplicaID) -> None:
        pending = self._assigned.get(replica_id)
        now = time.monotonic()
        while pending and now - pending[0] > _ASSIGNED_TTL_S:
            pending.popleft()
        if pending:
            pending.popleft()  # this send's request was counted when it was assigned
            return
        super().on_send_request(replica_id)

    # Set once the controller has told this router the deployment's replicas (it starts empty): an
    # empty set after that means no replica runs.
    replicas_known = False

    def update_replicas(self, replicas: List[RunningReplica]) -> None:
        self.replicas_known = True
        added = [r.replica_id for r in replicas if r.replica_id not in self._replica_id_set]
        super().update_replicas(replicas)
        self.policy.replicas_changed([r.replica_id for r in replicas], added)
        for gone in set(self._route_only_recent) - {r.replica_id for r in replicas}:
            del self._route_only_recent[gone]

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._assigned.pop(replica_id, None)
        self._unavailable.pop(replica_id.unique_id, None)
        self.policy.forget(replica_id)
