"""Admission control at the ingress: a bounded, prioritised wait for a slot at a model's replicas.

Why at the ingress and not in Serve's queue: Serve's handle queue is FIFO and unbounded unless
`max_queued_requests` is set, and a request in it has already been parsed, cached-checked and
forwarded -- it cannot be reordered by priority or dropped at its deadline. Here every request that
needs the model takes a slot (`max_inflight_per_replica` times the replicas the router sees); the
rest wait in one queue per priority level, and the decision to refuse is made when a request
arrives, so a refusal costs microseconds (Triton's dynamic-batcher queue policy, SGLang router's
token bucket):

Sized from the engine (measured, docs/architecture.md "Admission sized from the engine"): by default
a replica gets as many requests at once as its engine batches (`max_num_seqs`), and twice as many may
wait (`QUEUED_PER_SLOT`), so a waiter waits about two requests' service time before it reaches the
engine, and a closed-loop load of up to 2.6 batches at normal priority (its 80% share of the queue)
is never refused. The first defaults (32 in flight + 32 queued per replica against an engine that
batches 128) refused 343 of 400 requests at concurrency 64, a load `vllm serve` served with no
failure; one batch of waiters (the next defaults) refused 285 of 400 at concurrency 128 in front of
the shipped 64-slot engine, which `vllm serve` served with none failed.

- a token bucket (`rate_limit_rps`, `rate_limit_burst`) refuses with 429 and the time to the next token;
- a request may join the queue only while the queue is below its priority's share of
  `max_queued` (`queue_share`: low 50%, normal 80%, high 100%), so under overload lower priorities
  are refused first, at the door, and high-priority requests still find room; otherwise 503 with
  `Retry-After`;
- a full queue sheds its newest lower-priority waiter for an arrival with a full share;
- a waiter is dropped when its deadline passes or it has waited `max_queue_wait_s` (503);
- a freed slot goes to the oldest waiter of the highest priority whose deadline has not passed.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from common.errors import APIError

# Priority levels, most urgent first; the header `x-raygate-priority` names one.
PRIORITIES = ("high", "normal", "low")
DEFAULT_PRIORITY = "normal"


class AdmissionConfig(BaseModel):
    """`admission` of a model in serve_config.yaml. Bounds are per ingress replica."""

    model_config = ConfigDict(extra="forbid")

    # Requests this ingress replica has at one LLM replica at once; times the live replicas.
    # Default (null): the engine's batch, `engine_args.max_num_seqs` (`sized_for`).
    max_inflight_per_replica: Optional[int] = Field(default=None, ge=1)
    # Requests waiting for a slot (all priorities together). Default (null): QUEUED_PER_SLOT per
    # slot of one replica, so a waiter waits about two requests' service time.
    max_queued: Optional[int] = Field(default=None, ge=0)
    # The part of `max_queued` each priority may fill.
    queue_share: dict[str, float] = Field(default_factory=lambda: {"high": 1.0, "normal": 0.8, "low": 0.5})
    # A waiter is dropped after this long even without a deadline of its own.
    max_queue_wait_s: float = Field(default=30.0, gt=0)
    # Token bucket over requests to this model (off when null); 429 beyond it.
    rate_limit_rps: Optional[float] = Field(default=None, gt=0)
    rate_limit_burst: Optional[int] = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _shares(self) -> "AdmissionConfig":
        unknown = set(self.queue_share) - set(PRIORITIES)
        if unknown:
            raise ValueError(f"queue_share: unknown priorities {sorted(unknown)}; known: {list(PRIORITIES)}")
        for level, share in self.queue_share.items():
            if not 0 <= share <= 1:
                raise ValueError(f"queue_share.{level} must be within [0, 1]")
        return self


    def sized_for(self, engine_slots: int) -> "AdmissionConfig":
        """This config with the defaults that follow the engine filled in: `engine_slots` requests at
        once per replica (the engine's `max_num_seqs`), and `QUEUED_PER_SLOT` times as many waiting."""
        inflight = self.max_inflight_per_replica or engine_slots
        queued = self.max_queued if self.max_queued is not None else QUEUED_PER_SLOT * inflight
        return self.model_copy(update={"max_inflight_per_replica": inflight, "max_queued": queued})


# vLLM's default `max_num_seqs` when a model's engine_args leave it unset.
DEFAULT_ENGINE_SLOTS = 256
# Default waiters per slot: normal priority's 80% share of 2 batches is 1.6 batches, so concurrency
# up to 2.6x the engine's batch (c=128 on the shipped 64-slot engine) is never refused; waits stay
# bounded by `max_queue_wait_s` and each request's deadline.
QUEUED_PER_SLOT = 2


class Rejection(APIError):
    """A refusal by admission control; `reason` labels the metric."""

    def __init__(self, status: int, message: str, reason: str, retry_after_s: float):
        super().__init__(status, message, retry_after_s=retry_after_s)
        self.reason = reason


@dataclass(eq=False)
class _Waiter:
    priority: int
    deadline: float  # monotonic: the client's deadline or the longest wait, whichever is first
    future: asyncio.Future
    expiry: str = "queue_timeout"  # or "deadline": which of the two `deadline` is
    enqueued_at: float = field(default_factory=time.monotonic)


class Slot:
    """One admitted request's hold on capacity; `release()` is idempotent."""

    __slots__ = ("_gate", "_released")

    def __init__(self, gate: "AdmissionGate"):
        self._gate = gate
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._gate._release()

    def __del__(self):  # a response abandoned before its body ran still gives its slot back
        if not getattr(self, "_released", True):
            self.release()


class AdmissionGate:
    """One model's admission state in one ingress replica (single event loop, no locks)."""

    def __init__(self, model: str, cfg: AdmissionConfig, replicas: Callable[[], int],
                 clock: Callable[[], float] = time.monotonic,
                 on_reject: Optional[Callable[[str, str], None]] = None):
        self.model = model
        self.cfg = cfg = cfg.sized_for(DEFAULT_ENGINE_SLOTS)
        self._replicas = replicas
        self._clock = clock
        self._on_reject = on_reject or (lambda model, reason: None)
        self.inflight = 0
        self._queues: list[deque[_Waiter]] = [deque() for _ in PRIORITIES]
        self._limits = [math.floor(cfg.max_queued * cfg.queue_share.get(p, 1.0)) for p in PRIORITIES]
        burst = cfg.rate_limit_burst or max(1, math.ceil(cfg.rate_limit_rps or 1))
        self._bucket_size = float(burst)
        self._tokens = float(burst)
        self._refilled_at = clock()

    # ---- state ---------------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return self.cfg.max_inflight_per_replica * max(1, self._replicas())

    def queued(self) -> dict[str, int]:
        return {p: len(q) for p, q in zip(PRIORITIES, self._queues)}

    def _total_queued(self) -> int:
        return sum(len(q) for q in self._queues)

    # ---- admission -----------------------------------------------------------------------------

    async def admit(self, priority: str, deadline: Optional[float]) -> Slot:
        """A slot, now or after a wait; raises `Rejection` (429/503) instead of waiting past limits.
        `deadline` is a `time.monotonic()` instant."""
        level = PRIORITIES.index(priority)
        now = self._clock()
        if deadline is not None and now >= deadline:
            raise self._reject("deadline", 503, "The request's deadline passed before it could be scheduled.")
        self._take_token(now)
        if self.inflight < self.capacity and self._total_queued() == 0:
            self.inflight += 1
            return Slot(self)
        self._make_room(level)
        longest = now + self.cfg.max_queue_wait_s
        waiter = _Waiter(level, min(deadline or math.inf, longest), asyncio.get_running_loop().create_future(),
                         "deadline" if deadline is not None and deadline <= longest else "queue_timeout")
        self._queues[level].append(waiter)
        self._dispatch()  # capacity may have grown (a replica was added) since the last release
        try:
            # A shed or a deadline noticed by `_release` arrives as the future's exception.
            await asyncio.wait_for(waiter.future, timeout=max(0.0, waiter.deadline - now))
        except asyncio.TimeoutError:
            self._discard(waiter)
            raise self._expired(waiter)
        except asyncio.CancelledError:  # the client left while waiting
            self._discard(waiter)
            if waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
                self._release()  # it had just been handed a slot: pass it on
            raise
        return Slot(self)  # the future resolved: `_dispatch` counted this request in

    def _take_token(self, now: float) -> None:
        rate = self.cfg.rate_limit_rps
        if rate is None:
            return
        self._tokens = min(self._bucket_size, self._tokens + (now - self._refilled_at) * rate)
        self._refilled_at = now
        if self._tokens < 1.0:
            raise self._reject("rate", 429, f"Rate limit of {rate:g} requests/s for model `{self.model}` exceeded.",
                               retry_after_s=(1.0 - self._tokens) / rate)
        self._tokens -= 1.0

    def _make_room(self, level: int) -> None:
        """Let the arrival at `level` queue while the queue is below its priority's share; at a full
        queue a full-share priority sheds the newest waiter of the lowest priority below it."""
        total = self._total_queued()
        if total < self._limits[level]:
            return
        if self._limits[level] >= self.cfg.max_queued > 0:
            for lower in range(len(PRIORITIES) - 1, level, -1):
                if self._queues[lower]:
                    victim = self._queues[lower].pop()
                    victim.future.set_exception(self._reject(
                        "shed", 503, f"Model `{self.model}` is overloaded; shed for a higher-priority request."))
                    return
        raise self._reject("capacity", 503, f"Model `{self.model}` is at capacity; retry later.")

    def _discard(self, waiter: _Waiter) -> None:
        try:
            self._queues[waiter.priority].remove(waiter)
        except ValueError:
            pass

    def _release(self) -> None:
        self.inflight -= 1
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand free slots to the best live waiters: highest priority first, oldest first."""
        now = self._clock()
        for queue in self._queues:
            while queue and self.inflight < self.capacity:
                waiter = queue.popleft()
                if waiter.future.done():
                    continue
                if now >= waiter.deadline:  # expired: it must not reach the engine
                    waiter.future.set_exception(self._expired(waiter))
                    continue
                self.inflight += 1
                waiter.future.set_result(None)

    def _expired(self, waiter: _Waiter) -> Rejection:
        if waiter.expiry == "deadline":
            return self._reject("deadline", 503, "The request's deadline passed while it waited for capacity.")
        return self._reject("queue_timeout", 503,
                            f"Model `{self.model}` had no capacity for {self.cfg.max_queue_wait_s:g} s.")

    def _reject(self, reason: str, status: int, message: str, retry_after_s: float = 1.0) -> Rejection:
        self._on_reject(self.model, reason)
        return Rejection(status, message, reason, retry_after_s)
