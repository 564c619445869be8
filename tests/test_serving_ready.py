"""``GET /ready``: 503 while the rate-limit store is down (``/health`` cannot tell), keyless but never a PING flood."""

import asyncio
import shutil
import time

import httpx
import pytest

from secure_ml.serving.readiness import Readiness
from tests.helpers.serving import KEY_A, FakeClock, base_config, free_port, post, private_redis, running

pytestmark = pytest.mark.serving


class CountingPing:
    """A store whose PING succeeds, fails or hangs, counting the calls."""

    def __init__(self, outcome: str = "ok"):
        self.outcome, self.calls = outcome, 0

    async def __call__(self):
        self.calls += 1
        if self.outcome == "fail":
            raise ConnectionError("refused")
        if self.outcome == "hang":
            await asyncio.sleep(60)
        return True


def test_memory_storage_is_ready_without_a_key(tmp_path):
    with running(base_config(tmp_path)) as srv:
        r = httpx.get(srv.url + "/ready")
        assert r.status_code == 200 and r.json() == {"status": "ready"}
        assert post(srv, key=None).status_code == 401  # only /ready (and /health) are public
        # HEAD, as some load balancers probe (it was 405): the status without a body
        for path in ("/health", "/ready"):
            head = httpx.head(srv.url + path)
            assert head.status_code == 200 and head.content == b"", (path, head.status_code)
        assert httpx.head(srv.url + "/predict", headers={"X-API-Key": KEY_A}).status_code == 405  # only the probes


def test_a_store_that_fails_or_hangs_is_not_ready_within_its_timeout():
    async def run():
        out = {}
        for outcome in ("ok", "fail", "hang"):
            ready = Readiness(CountingPing(outcome), timeout_s=0.2)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            out[outcome] = (await ready.check(), loop.time() - t0)
        return out

    out = asyncio.run(run())
    assert out["ok"][0] is None
    assert out["fail"][0] == "limits_unavailable" and out["hang"][0] == "limits_unavailable"
    assert out["hang"][1] < 1.0  # the probe answers, it does not hang with the store


def test_a_keyless_flood_of_probes_sends_one_ping_per_second():
    """Attack: 200 concurrent keyless probes, then 200 more over 3 s of (fake) time. Control: with no reuse (ttl 0) each probe PINGs."""

    async def flood(ttl_s: float):
        clock, ping = FakeClock(), CountingPing()
        ready = Readiness(ping, timeout_s=0.5, clock=clock, ttl_s=ttl_s)
        await asyncio.gather(*(ready.check() for _ in range(200)))
        for _ in range(200):
            clock.advance(0.015)
            await ready.check()
        return ping.calls

    assert asyncio.run(flood(1.0)) <= 1 + 4  # the first, then at most one per elapsed second (3 s)
    assert asyncio.run(flood(0.0)) == 400


def test_an_unwritable_request_log_makes_it_not_ready(tmp_path):
    audit_dir = tmp_path / "logs"
    with running(base_config(tmp_path, audit={"path": str(audit_dir / "audit.jsonl")})) as srv:
        assert httpx.get(srv.url + "/ready").status_code == 200
        shutil.rmtree(audit_dir)
        (audit_dir / "audit.jsonl").mkdir(parents=True)  # writes now fail
        r = httpx.get(srv.url + "/ready")
        assert r.status_code == 503 and r.json()["reason"] == "audit_unavailable"


@pytest.mark.redis
def test_ready_follows_a_redis_outage_that_health_does_not_see(tmp_path):
    """Attack: the shared store goes away. /ready says 503 limits_unavailable (as /predict does) and recovers with Redis;
    control: /health stays 200 throughout, so a probe on it would keep routing traffic that is refused."""
    port = free_port()
    cfg = base_config(tmp_path, rate_limit={"storage": f"redis://127.0.0.1:{port}/0", "redis_timeout_s": 0.3})
    with private_redis(port) as server, running(cfg) as srv:
        assert httpx.get(srv.url + "/ready").status_code == 200
        server.terminate()
        server.wait(10)
        assert post(srv, timeout=5).status_code == 503
        deadline = time.monotonic() + 5
        while (r := httpx.get(srv.url + "/ready", timeout=5)).status_code == 200:  # the last answer is reused for 1 s
            assert time.monotonic() < deadline, "/ready stayed 200 with Redis down"
        assert r.status_code == 503 and r.json()["reason"] == "limits_unavailable" and r.headers["Retry-After"] == "1"
        assert str(port) not in r.text
        assert httpx.get(srv.url + "/health").status_code == 200
        with private_redis(port):
            deadline = time.monotonic() + 10
            while httpx.get(srv.url + "/ready", timeout=5).status_code != 200:
                assert time.monotonic() < deadline, "/ready did not recover after Redis came back"


def test_one_readiness_serves_a_second_event_loop_and_a_clock_that_steps_back():
    """From a review: the lock was bound to the first loop (a second loop's contended probe raised RuntimeError, a 500),
    and a clock stepping back kept a stale 'limits_unavailable' after the store recovered."""
    clock, ping = FakeClock(), CountingPing("fail")
    ready = Readiness(ping, timeout_s=0.2, clock=clock)

    async def two():
        return await asyncio.gather(ready.check(), ready.check())

    assert asyncio.run(two()) == ["limits_unavailable"] * 2
    ping.outcome = "ok"
    clock.advance(-50.0)
    assert asyncio.run(two()) == [None, None]
