"""The service's guards over real HTTP on 127.0.0.1: auth, rate limit, body limit, input checks, timeout, output."""

import asyncio
import json
import time

import httpx
import pytest
import torch

from secure_ml.serving.auth import KeyRing, client_id
from secure_ml.serving.rate_limit import MemoryBucketStorage, RateLimiter
from tests.helpers.data import REAL_DATA
from tests.helpers.serving import ADMIN, KEY_A, KEY_B, FakeClock, base_config, digit_body, post, running

pytestmark = pytest.mark.serving


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with running(base_config(tmp_path_factory.mktemp("guards"))) as s:
        yield s


# ---- auth --------------------------------------------------------------------------------------
def test_health_needs_no_key(srv):
    r = httpx.get(srv.url + "/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


@pytest.mark.parametrize(
    "key,reason",
    [
        (None, "missing_api_key"),
        ("wrong-key-0000000000", "invalid_api_key"),
        (KEY_A[:-1], "invalid_api_key"),
        (ADMIN, "invalid_api_key"),
        ("", "invalid_api_key"),
    ],
)
def test_predict_401(srv, key, reason):
    r = post(srv, key=key)
    assert r.status_code == 401
    assert r.json()["reason"] == reason and r.json()["error"] == "unauthorized"


def test_metrics_needs_admin_key(srv):
    assert httpx.get(srv.url + "/metrics").status_code == 401
    assert httpx.get(srv.url + "/metrics", headers={"X-API-Key": KEY_A}).status_code == 401
    r = httpx.get(srv.url + "/metrics", headers={"X-API-Key": ADMIN})
    assert r.status_code == 200 and "secure_ml_requests_total" in r.text


def test_every_metric_the_docs_name_is_served_under_that_name(srv):
    """docs/deployment.md's alert table once named counters without `_total`: rules written from it select no series."""
    import re
    from pathlib import Path

    from prometheus_client.parser import text_string_to_metric_families

    post(srv)  # a prediction and a refused key, so the labelled counters have samples
    httpx.get(srv.url + "/metrics")
    text = httpx.get(srv.url + "/metrics", headers={"X-API-Key": ADMIN}).text
    served = set()
    for family in text_string_to_metric_families(text):
        served.add(family.name + "_total" if family.type == "counter" else family.name)
        served |= {sample.name for sample in family.samples}
    docs = (Path(__file__).resolve().parents[1] / "docs" / "deployment.md").read_text()
    named = set(re.findall(r"`(secure_ml_[a-z_]+)", docs))
    assert len(named) >= 8 and named <= served, sorted(named - served)


def test_valid_key_predicts(srv):
    r = post(srv)
    assert r.status_code == 200 and set(r.json()) == {"label", "probabilities"}
    assert len(r.json()["probabilities"]) == 10


def test_keys_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SECURE_ML_API_KEYS", " env-key-aaaaaaaaaaaa , env-key-bbbbbbbbbbbb")
    cfg = base_config(tmp_path)
    cfg["auth"] = {"api_keys": []}
    with running(cfg) as s:
        assert post(s, key="env-key-bbbbbbbbbbbb").status_code == 200
        assert post(s, key=KEY_A).status_code == 401


def test_keyring_compares_against_every_key(monkeypatch):
    import hmac

    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    ring = KeyRing(["k1" * 10, "k2" * 10, "k3" * 10])
    assert ring.match("k1" * 10) == client_id("k1" * 10)
    assert len(calls) == 3  # a match on the first key still walks all three
    calls.clear()
    assert ring.match("nope") is None and len(calls) == 3
    assert client_id("k1" * 10) != "k1" * 10 and len(client_id("k1" * 10)) == 16


# ---- rate limit --------------------------------------------------------------------------------
def test_burst_then_429_then_retry_after(tmp_path):
    clock = FakeClock()
    burst, k = 3, 2
    with running(base_config(tmp_path, rate_limit={"burst": burst, "max_qps": 1.0}), clock=clock) as s:
        statuses = [post(s) for _ in range(burst + k)]
        assert [r.status_code for r in statuses] == [200] * burst + [429] * k
        retry = statuses[-1].headers["Retry-After"]
        assert retry.isdigit() and int(retry) >= 1
        assert statuses[-1].json()["reason"] == "rate_limited"
        # another client is unaffected by A's empty bucket
        assert [post(s, key=KEY_B).status_code for _ in range(burst)] == [200] * burst
        assert post(s).status_code == 429
        clock.advance(int(retry))
        assert post(s).status_code == 200


@pytest.mark.slow
def test_rate_limit_real_clock(tmp_path):
    with running(base_config(tmp_path, rate_limit={"burst": 2, "max_qps": 0.5})) as s:  # a token per 2 s: robust on a loaded machine
        t0 = time.monotonic()
        codes = [post(s).status_code for _ in range(3)]
        if time.monotonic() - t0 < 2.0:  # (when three requests take 2 s the third may rightly get a fresh token)
            assert codes[:2] == [200, 200] and codes[2] == 429
        time.sleep(2.05)
        assert post(s).status_code == 200


def test_token_bucket_arithmetic():
    clock = FakeClock()
    limiter = RateLimiter(MemoryBucketStorage(clock=clock, max_keys=2), max_qps=4.0, burst=2)

    def check(client):
        return asyncio.run(limiter.check(client))

    assert [check("a")[0] for _ in range(3)] == [True, True, False]
    assert check("a") == (False, 1)  # 1 token needs 0.25 s -> Retry-After rounds up to 1
    clock.advance(0.25)
    assert check("a")[0] and not check("a")[0]
    clock.advance(100)  # refill caps at burst
    assert [check("a")[0] for _ in range(3)] == [True, True, False]
    check("b"), check("c")
    assert len(limiter.storage._buckets) == 2  # LRU bound
    asyncio.run(limiter.throttle("a", 0.1))
    assert asyncio.run(limiter.limits_for("a")) == (1.0, pytest.approx(0.4))
    clock.advance(100)  # a throttled bucket refills to its shrunk capacity only
    assert [check("a")[0] for _ in range(2)] == [True, False]


# ---- input validation (422) ---------------------------------------------------------------------
def _img(fill=0.0):
    return [[fill] * 28 for _ in range(28)]


def _with(value, row=3, col=4):
    img = _img()
    img[row][col] = value
    return {"image": img}


CHECKER = {"image": [[float((i + j) % 2) for j in range(28)] for i in range(28)]}
BAD = {
    "shape": [
        {"image": _img()[:27]},
        {"image": [row + [0.0] for row in _img()]},
        {"image": 0.5},
        {"image": [[[0.0]] * 28] * 28},
        {"image": [0.0] * 28},
        {"image": []},
    ],
    "dtype": [_with("0.5"), _with(True), _with(None), _with({"v": 1}), {"image": "abc"}, {"image": [["a"] * 28] * 28}],
    "non_finite": [
        b'{"image": NaN}',
        b'{"image": [[NaN]]}',
        json.dumps(_with(0.0)).replace("0.0", "Infinity", 1).encode(),
        json.dumps(_with(0.0)).replace("0.0", "-Infinity", 1).encode(),
        json.dumps(_with(0.0)).replace("0.0", "1e999", 1).encode(),
    ],
    # (a 5,000-digit integer: Python's int parser refuses it, which read as "not valid UTF-8 JSON")
    "range": [_with(1.5), _with(-0.1), _with(10**400), _with(1e300), json.dumps(_with(0.0)).replace("0.0", "9" * 5000, 1).encode()],
    "variance": [CHECKER],
    "json": [b"{", b"not json", b"\xff\xfe\x00", b"[" * 5000 + b"]" * 5000],
    # (a repeated "image": json.loads kept the last one, answered 200)
    "schema": [b"[]", b"3", {"img": _img()}, {"image": _img(), "extra": 1}, b'{"image": 1, ' + json.dumps(_with(0.0))[1:].encode()],
}


@pytest.mark.parametrize("reason,body", [(r, b) for r, bodies in BAD.items() for b in bodies])
def test_422_reasons(srv, reason, body):
    r = post(srv, body)
    assert r.status_code == 422, r.text
    assert r.json()["reason"] == reason and r.json()["error"] == "invalid_input"


def test_422_energy_sponge(tmp_path):
    """A policy calibrated at start-up (energy/density on held-out test digits) refuses a crafted L0 sponge."""
    from secure_ml.attacks.sponge import craft_sponges
    from secure_ml.serving.startup import load_served_model
    from secure_ml.tools.digits import load_test_digits
    from tests.helpers.serving import trained_checkpoint

    cfg = base_config(tmp_path, policy={"calibrate": True, "calibration_data_dir": str(REAL_DATA), "calibration_samples": 1000})
    with running(cfg) as s:
        policy = s.service.engine.policy
        assert policy.max_energy is not None or policy.max_density is not None
        model = load_served_model(str(trained_checkpoint())).model
        x, _ = load_test_digits(str(REAL_DATA))
        sponge = craft_sponges(model, x[:1], steps=30, lr=0.02, objective="l0")  # pixels stay in [0, 1]
        r = post(s, digit_body(sponge[0]))
        assert r.status_code == 422 and r.json()["reason"] == "energy", r.text
        assert post(s, digit_body(x[1500])).status_code == 200  # a held-out digit the calibration did not see


# ---- timeouts and overload ----------------------------------------------------------------------
class Slow(torch.nn.Module):
    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds
        self.fc2 = torch.nn.Linear(1, 10)

    def forward(self, x):
        time.sleep(self.seconds)
        return torch.zeros(len(x), 10)


def test_504_when_inference_exceeds_timeout(tmp_path):
    with running(base_config(tmp_path, inference={"timeout_s": 0.2}), model=Slow(1.0), policy=None) as s:
        t0 = time.monotonic()
        r = post(s)
        assert r.status_code == 504 and r.json()["reason"] == "timeout"
        assert time.monotonic() - t0 < 0.9
        assert httpx.get(s.url + "/health").status_code == 200


def test_503_when_queue_full(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    with running(base_config(tmp_path, inference={"timeout_s": 5, "max_pending": 1}), model=Slow(0.6), policy=None) as s:
        with ThreadPoolExecutor(3) as pool:
            codes = sorted(f.result().status_code for f in [pool.submit(post, s) for _ in range(3)])
        assert 200 in codes and 503 in codes


# ---- output obfuscation -------------------------------------------------------------------------
def test_probabilities_rounded_or_omitted(tmp_path):
    with running(base_config(tmp_path, output={"precision": 1})) as s:
        probs = post(s).json()["probabilities"]
        assert all(round(p, 1) == p for p in probs)
    with running(base_config(tmp_path, output={"probabilities": False})) as s:
        assert set(post(s).json()) == {"label"}


def test_key_guessing_is_rate_limited_without_slowing_valid_clients(tmp_path):
    cfg = base_config(tmp_path)
    cfg["auth"] = {**cfg.get("auth", {}), "failed_qps": 0.01, "failed_burst": 3}
    with running(cfg) as s:
        codes = [post(s, key=f"guess-{i:016d}").status_code for i in range(5)]
        assert codes == [401, 401, 401, 429, 429]
        r = post(s, key=None)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1 and r.json()["reason"] == "auth_rate_limited"
        assert post(s).status_code == 200  # a valid key is never in that bucket
