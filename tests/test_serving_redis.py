"""Two replicas against a real redis-server: one key's burst is shared, a Redis outage fails closed, block/throttle reach both.

Needs ``$SECURE_ML_TEST_REDIS_URL`` (``.ci/run`` starts a redis-server on loopback and sets it); the outage
test starts its own redis-server so that it can stop it. Without Redis these tests skip, in CI they fail.
"""

import time

import pytest

from tests.helpers.serving import KEY_B, ZEROS, base_config, free_port, post, private_redis, redis_url, running

pytestmark = [pytest.mark.serving, pytest.mark.redis]


@pytest.fixture
def redis_uri():
    import redis

    url = redis_url()
    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        pytest.fail(f"${'SECURE_ML_TEST_REDIS_URL'} points at a Redis that does not answer ({type(exc).__name__})")

    def clean():
        for key in client.scan_iter("secure_ml:*"):
            client.delete(key)

    clean()
    yield url
    clean()
    client.close()


def replicas(tmp_path, storage, **sections):
    cfg = base_config(tmp_path, **sections)
    cfg["rate_limit"] = {**cfg.get("rate_limit", {}), "storage": storage}
    return running(cfg), running(cfg)


@pytest.mark.slow
def test_one_keys_burst_is_shared_by_both_replicas(tmp_path, redis_uri):
    """Attack: spread one key's requests over two replicas. Control: with per-replica (memory) buckets it gets twice the burst."""
    burst, rate, n = 5, 0.5, 16
    allowed = {}
    for storage in (redis_uri, "memory://"):
        a_ctx, b_ctx = replicas(tmp_path, storage, rate_limit={"burst": burst, "max_qps": rate}, extraction={"enabled": False})
        with a_ctx as a, b_ctx as b:
            t0 = time.monotonic()
            codes = [post((a, b)[i % 2]).status_code for i in range(n)]
            elapsed = time.monotonic() - t0
        assert set(codes) <= {200, 429}, codes
        allowed[storage] = (codes.count(200), burst + rate * elapsed)
    shared, bound = allowed[redis_uri]
    assert burst <= shared <= bound, allowed
    unshared, bound_memory = allowed["memory://"]
    assert unshared >= 2 * burst and unshared > bound_memory, allowed  # the bound above would catch unshared buckets


def test_redis_outage_fails_closed(tmp_path, redis_uri):
    """Attack: the shared store goes away mid-service. Every request is refused with a clear 503 (never allowed
    unchecked), the body names no host or port, and service resumes when Redis is back (the control)."""
    port = free_port()
    cfg = base_config(
        tmp_path, rate_limit={"storage": f"redis://127.0.0.1:{port}/0", "redis_timeout_s": 0.3}, extraction={"action": "block"}
    )
    with private_redis(port) as server, running(cfg) as srv:
        assert post(srv).status_code == 200
        server.terminate()
        server.wait(10)
        t0 = time.monotonic()
        refused = [post(srv, timeout=5) for _ in range(5)]
        assert time.monotonic() - t0 < 5.0
        assert [r.status_code for r in refused] == [503] * 5
        assert {r.json()["reason"] for r in refused} == {"limits_unavailable"} and refused[0].headers["Retry-After"] == "1"
        assert all(str(port) not in r.text and "127.0.0.1" not in r.text for r in refused)
        with private_redis(port):
            deadline = time.monotonic() + 10
            while post(srv).status_code != 200:  # reconnects on its own
                assert time.monotonic() < deadline, "the service did not recover after Redis came back"
                time.sleep(0.2)


@pytest.mark.slow
def test_block_reaches_every_replica(tmp_path, redis_uri):
    """Replica A blocks an extracting key; replica B then refuses it too. Control: with memory storage B still answers it."""
    detector = {"action": "block", "min_distances": 20, "window": 20}
    for storage, expected_on_b in ((redis_uri, 403), ("memory://", 200)):
        a_ctx, b_ctx = replicas(tmp_path, storage, extraction=detector)
        with a_ctx as a, b_ctx as b:
            on_a = [post(a, ZEROS).status_code for _ in range(21)]  # one image replayed: PRADA's W = 0 at query 21
            on_b = post(b, ZEROS)
            other = post(b, ZEROS, key=KEY_B).status_code
        assert on_a == [200] * 20 + [403] and other == 200
        assert on_b.status_code == expected_on_b and (expected_on_b == 200 or on_b.json()["reason"] == "blocked"), storage


@pytest.mark.slow
def test_throttle_reaches_every_replica(tmp_path, redis_uri):
    """Replica A throttles an extracting key (capacity x 0.01 = 1); its bucket on B shrinks too. Control: memory storage."""
    detector = {"action": "throttle", "min_distances": 20, "window": 20, "throttle_factor": 0.01}
    for storage, expected_on_b in ((redis_uri, [200, 429]), ("memory://", [200, 200])):
        a_ctx, b_ctx = replicas(tmp_path, storage, extraction=detector, rate_limit={"burst": 100, "max_qps": 0.01})
        with a_ctx as a, b_ctx as b:
            assert [post(a, ZEROS).status_code for _ in range(21)] == [200] * 21
            on_b = [post(b, ZEROS).status_code for _ in range(2)]
            other = [post(b, ZEROS, key=KEY_B).status_code for _ in range(2)]
        assert on_b == expected_on_b and other == [200, 200], (storage, on_b, other)
