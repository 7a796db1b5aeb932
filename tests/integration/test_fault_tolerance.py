"""A replica killed under steady load: no non-streaming request is lost (one whose replica dies before
its answer is sent again, to the other replica), every interrupted stream ends with an SSE error
event and [DONE] (never a silent truncation), the dead replica's engine dies with it, and Serve
replaces the replica. Runs on the two-replica model, killing once where a non-streaming request is
in flight and once where a stream is."""

import asyncio
import os
import signal
import time

import httpx
import psutil
import pytest

from tests.integration.steady_load import body, under_load

pytestmark = pytest.mark.integration

# A stream that has delivered fewer characters than this is still generating: aimed at. The demo model's
# tokens are words and word pieces of a 30k WordPiece vocabulary (2,000 drawn at random decode to
# ~13,800 characters), so this is the first 15-25% of a 2,000-token stream.
YOUNG_STREAM_CHARS = 2000


def _replicas(base_url, model) -> list[str]:
    listing = httpx.get(base_url + "/admin/models", timeout=60).json()["models"][model]
    return [r["replica"] for r in listing["replicas"] if "replica" in r and "error" not in r]


def _two_replicas(base_url, model, without: str | None = None, timeout_s: float = 300) -> list[str]:
    """Wait until the model has 2 replicas (none of them `without`): Serve replaced a dead one."""
    deadline = time.monotonic() + timeout_s
    while True:
        now = _replicas(base_url, model)
        if len(now) == 2 and without not in now:
            return now
        assert time.monotonic() < deadline, f"the model does not have 2 replicas: {now}"
        time.sleep(3)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _kill_replica_under_load(base_url, model, handle, serving_the_stream: bool):
    """Steady load on the two-replica model; SIGKILL the replica that serves a young stream (from 1 s
    into the load), or, from 8 s in, the other one once its engine runs a (non-streaming) request. Returns the load's result
    after the replica has been replaced."""
    before = _two_replicas(base_url, model)
    infos = {r: handle.process_info.remote(replica=r).result() for r in before}  # ahead: kill at once
    killed = {}

    def engine_busy(replica: str) -> bool | None:
        """Whether the replica's engine holds a request; None when it did not answer within 5 s.
        Bounded: a call pinned to a replica this driver's router does not offer waits for it forever
        (CI hung here for 15 min once); the loop's deadline then fails the test."""
        stats = handle.engine_stats.remote(replica=replica)
        try:
            return stats.result(timeout_s=5)["unfinished"] >= 1
        except TimeoutError:
            stats.cancel()
            return None

    def kill(load):
        deadline = time.monotonic() + 45
        while True:
            assert time.monotonic() < deadline, "no request in flight to aim at"
            in_flight = load.stream_in_flight  # one read: this stream's replica and progress together
            streaming_on, progress = in_flight or (None, None)
            if streaming_on in before and serving_the_stream:
                # A young stream: most of its 2,000 tokens are still to be generated,
                # not only still to be read by the client (a finished generation can sit in socket
                # buffers and end normally). Young by what it delivered, read again after the engine
                # call (which can take seconds on a loaded host), not by its age: CI once saw one
                # stream in 30 s and lost it to a 3 s age limit.
                if progress.chars < YOUNG_STREAM_CHARS and engine_busy(streaming_on) \
                        and progress.chars < YOUNG_STREAM_CHARS and load.stream_in_flight is in_flight:
                    target = streaming_on
                    print(f"killing the replica of a stream {progress.chars} characters in")
                    break
            elif streaming_on in before:
                # The other replica once its engine runs a request while the stream is still on the
                # first: a non-streaming one.
                target = next(r for r in before if r != streaming_on)
                if engine_busy(target) and load.stream_in_flight is in_flight:
                    break
            time.sleep(0.02)
        info = infos[target]
        assert info["replica"] == target
        engines = [p for p in info["engine_pids"] if _alive(p)]
        os.kill(info["pid"], signal.SIGKILL)  # no clean-up code of the replica runs
        killed.update(info, engines=engines, at=time.monotonic())

    # Non-streaming answers of 400 tokens take seconds, so the one seen running is still running
    # when the kill lands (48-token ones could finish between the check and the kill).
    # The stream case aims at the load's first stream while it is young (under 2,000 characters delivered):
    # on a loaded host one 2,000-token stream can outlast the whole load (CI: 30 s with none to aim at
    # when the breaker began 8 s in).
    load = asyncio.run(under_load(base_url, model, seconds=30, break_at_s=1 if serving_the_stream else 8,
                                  breaker=kill, plain_max_tokens=400))
    # The dead replica's engine died with it, and Serve brought the deployment back to 2 replicas.
    assert killed["engines"]
    while any(_alive(p) for p in killed["engines"]) and time.monotonic() < killed["at"] + 20:
        time.sleep(0.2)
    assert not any(_alive(p) for p in killed["engines"]), "engine processes outlived their replica"
    _two_replicas(base_url, model, without=killed["replica"])
    r = httpx.post(base_url + "/v1/chat/completions", json=body(model, -1, False), timeout=60)
    assert r.status_code == 200
    return load


@pytest.fixture
def routed_handle(ray_context, routed_model):
    from ray import serve

    from deployments.config import llm_deployment_name

    return serve.get_deployment_handle(llm_deployment_name(routed_model), app_name="raygate")


def _retries_counted(model: str) -> float:
    from tests.integration.test_metrics import scrape, total

    return total(scrape(), "ray_raygate_retries_total", model=model)


def test_a_request_whose_replica_dies_is_answered_by_another(base_url, routed_model, routed_handle):
    before = _retries_counted(routed_model)
    load = _kill_replica_under_load(base_url, routed_model, routed_handle, serving_the_stream=False)
    retried, _ = load.check()  # every non-streaming request answered 200
    print(f"non-streaming: {len(load.plain)} answered, {retried} retried")
    assert retried >= 1, "the killed replica was serving a non-streaming request: it must have been sent again"
    # And the retry is counted in the live series (the agents export what workers reported: poll).
    deadline = time.monotonic() + 60
    while _retries_counted(routed_model) - before < retried:
        assert time.monotonic() < deadline, "ray_raygate_retries_total did not count the retries within 60 s"
        time.sleep(5)


def test_a_stream_whose_replica_dies_ends_with_an_error_event(base_url, routed_model, routed_handle):
    load = _kill_replica_under_load(base_url, routed_model, routed_handle, serving_the_stream=True)
    retried, interrupted = load.check()  # and still every non-streaming request answered 200
    print(f"streams: {len(load.streams)}, {interrupted} ended by an error event; non-streaming: "
          f"{len(load.plain)} answered, {retried} retried")
    assert interrupted >= 1, "the stream in flight on the killed replica must end with an error event"
