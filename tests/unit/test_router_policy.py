"""The routing policy and its prefix index, without Ray (fake replica ids and a fake clock)."""

from __future__ import annotations

import random

import pytest

from router.policy import AFFINITY, BALANCE, FALLBACK, PREFIX, PrefixRoutingPolicy, RouterSettings
from router.prefix_index import PrefixIndex, block_names
from router.prompt_text import routing_text


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


SYSTEM_A = "You are a careful assistant for the billing team. " * 20
SYSTEM_B = "You translate legal contracts from German into English. " * 20


def chat(system: str, user: str) -> str:
    return routing_text({"messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]})


def route(policy: PrefixRoutingPolicy, text: str, loads: dict, session=None):
    decision = policy.choose(list(loads), loads, text, session)
    chosen = decision.ranks[0][0]
    policy.routed(decision, chosen)
    return decision, chosen


# ---- prefix index -------------------------------------------------------------------------------

def test_block_names_are_chained_so_equal_blocks_after_different_prefixes_differ():
    a = block_names("x" * 16 + "same" * 4, 16)
    b = block_names("y" * 16 + "same" * 4, 16)
    assert len(a) == len(b) == 2
    assert a[1] != b[1]
    assert block_names("x" * 16 + "same" * 4 + "tail", 16) == a  # a partial block has no name


def test_index_matches_the_longest_shared_prefix_per_replica():
    index = PrefixIndex(block_chars=8)
    index.insert(index.names("abcdefgh" * 4), "r1")
    index.insert(index.names("abcdefgh" * 2 + "zzzzzzzz"), "r2")
    probe = index.names("abcdefgh" * 3 + "qqqqqqqq")
    assert index.match(probe, ["r1", "r2", "r3"]) == {"r1": 3, "r2": 2, "r3": 0}


def test_index_entries_age_out_and_are_bounded_per_replica():
    clock = Clock()
    index = PrefixIndex(block_chars=8, max_blocks=3, ttl_s=60, clock=clock)
    names = index.names("abcdefgh" * 5)
    index.insert(names, "r1")
    assert index.size("r1") == 3  # the oldest two blocks were evicted...
    assert index.match(names, ["r1"]) == {"r1": 0}  # ...so the chain breaks at block 0
    index.insert(names[:2], "r2")
    clock.t += 61
    assert index.match(names, ["r2"]) == {"r2": 0}
    assert index.size("r2") == 0


def test_index_forgets_replicas_that_left():
    index = PrefixIndex(block_chars=8)
    index.insert(index.names("abcdefgh"), "r1")
    index.insert(index.names("abcdefgh"), "r2")
    index.retain(["r2"])
    assert index.match(index.names("abcdefgh"), ["r1", "r2"]) == {"r1": 0, "r2": 1}


# ---- routing text -------------------------------------------------------------------------------

def test_routing_text_keeps_prefix_order_and_message_boundaries():
    t1 = chat(SYSTEM_A, "hello")
    t2 = chat(SYSTEM_A, "goodbye")
    assert t1.startswith("system:" + SYSTEM_A)
    assert t1[: len(SYSTEM_A) + 8] == t2[: len(SYSTEM_A) + 8]
    # Moving text across a message boundary changes the text.
    assert routing_text({"messages": [{"role": "user", "content": "ab"}, {"role": "user", "content": "c"}]}) != \
        routing_text({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "bc"}]})
    parts = routing_text({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]})
    assert "hi" in parts
    assert routing_text({"prompt": "once upon"}) == "once upon"
    assert routing_text({"prompt": [1, 2, 3]}) == "1,2,3"
    assert routing_text({}) == ""


def test_tools_come_before_the_conversation():
    with_tools = routing_text({"tools": [{"type": "function", "function": {"name": "f"}}],
                               "messages": [{"role": "user", "content": "x"}]})
    assert with_tools.index('"name": "f"') < with_tools.index("user:x")


# ---- policy -------------------------------------------------------------------------------------

def policy(**kw) -> PrefixRoutingPolicy:
    return PrefixRoutingPolicy(RouterSettings(**kw), clock=Clock(), rng=random.Random(7))


def test_requests_sharing_a_system_prompt_follow_it_and_new_prompts_spread():
    p = policy()
    loads = {"r1": 0, "r2": 0}
    d, first_a = route(p, chat(SYSTEM_A, "q1"), loads)
    assert d.reason == BALANCE
    loads[first_a] = 1  # the first request is still running there
    d, first_b = route(p, chat(SYSTEM_B, "q1"), loads)
    assert d.reason == BALANCE and first_b != first_a  # the new prefix goes to the idle replica
    loads[first_b] = 1
    for i in range(10):
        d, r = route(p, chat(SYSTEM_A, f"question {i}"), loads)
        assert (d.reason, r) == (PREFIX, first_a)
        d, r = route(p, chat(SYSTEM_B, f"question {i}"), loads)
        assert (d.reason, r) == (PREFIX, first_b)


def test_an_overloaded_prefix_holder_falls_back_to_two_choices():
    p = policy(imbalance_abs=4, imbalance_rel=1.5)
    _, holder = route(p, chat(SYSTEM_A, "q"), {"r1": 0, "r2": 0})
    other = "r2" if holder == "r1" else "r1"
    # Within the thresholds the prefix wins even on the busier replica.
    d = p.choose(["r1", "r2"], {holder: 4, other: 0}, chat(SYSTEM_A, "q2"))
    assert (d.reason, d.ranks[0]) == (PREFIX, [holder])
    # Beyond both thresholds the choice is Serve's two-choice between both replicas.
    d = p.choose(["r1", "r2"], {holder: 9, other: None}, chat(SYSTEM_A, "q3"))
    assert d.reason == FALLBACK and d.ranks == [[other], [holder]]  # the shorter queue first
    # Relative threshold: everyone busy, the hot prefix stays.
    d = p.choose(["r1", "r2"], {holder: 30, other: 24}, chat(SYSTEM_A, "q4"))
    assert (d.reason, d.ranks[0]) == (PREFIX, [holder])


def test_a_weak_match_does_not_count_as_a_prefix():
    p = policy(block_chars=16, min_match_fraction=0.5)
    shared = "s" * 16
    route(p, shared + "a" * 160, {"r1": 0, "r2": 5})
    d = p.choose(["r1", "r2"], {"r1": 0, "r2": 0}, shared + "b" * 160)  # 1 of 11 blocks in common
    assert d.reason == BALANCE


def test_session_affinity_wins_until_its_replica_is_overloaded():
    p = policy(imbalance_abs=2, imbalance_rel=1.5)
    _, pinned = route(p, "short", {"r1": 0, "r2": 0}, session="s-1")
    other = "r2" if pinned == "r1" else "r1"
    d = p.choose(["r1", "r2"], {pinned: 2, other: 0}, chat(SYSTEM_B, "unrelated"), "s-1")
    assert (d.reason, d.ranks[0]) == (AFFINITY, [pinned])
    d = p.choose(["r1", "r2"], {pinned: 6, other: 0}, "short", "s-1")
    assert d.reason != AFFINITY and d.ranks[0] == [other]


def test_sessions_expire_and_are_bounded():
    clock = Clock()
    p = PrefixRoutingPolicy(RouterSettings(session_ttl_s=10, max_sessions=2), clock=clock)
    for s in ("a", "b", "c"):
        route(p, "x", {"r1": 0}, session=s)
    assert p.choose(["r1"], {"r1": 0}, "x", "a").reason != AFFINITY  # evicted (bound 2)
    assert p.choose(["r1"], {"r1": 0}, "x", "c").reason == AFFINITY
    clock.t += 11
    assert p.choose(["r1"], {"r1": 0}, "x", "c").reason != AFFINITY


def test_a_session_whose_replica_left_is_routed_normally():
    p = policy()
    route(p, "x", {"r1": 0}, session="s")
    d = p.choose(["r2"], {"r2": 0}, "x", "s")
    assert d.ranks[0] == ["r2"] and d.reason != AFFINITY


def test_warm_prefixes_are_held_by_every_new_replica():
    warm = chat(SYSTEM_A, "")
    p = policy(warm_prefixes=[warm[: len("system:") + len(SYSTEM_A) + 1]])
    p.replicas_changed(["r1", "r2"], added=["r1", "r2"])
    d = p.choose(["r1", "r2"], {"r1": 3, "r2": 1}, chat(SYSTEM_A, "first real request"))
    assert d.reason == PREFIX and sorted(d.ranks[0]) == ["r1", "r2"]  # both hold it: Serve picks r2
    p.replicas_changed(["r2"], added=[])
    assert p.index.size("r1") == 0


def test_unknown_queue_lengths_count_as_the_shortest():
    p = policy()
    d = p.choose(["r1", "r2"], {"r1": None, "r2": 3}, "no prefix")
    assert d.reason == BALANCE and d.ranks[0] == ["r1"]


def test_settings_refuse_unknown_keys():
    with pytest.raises(ValueError):
        RouterSettings(block_size=3)
