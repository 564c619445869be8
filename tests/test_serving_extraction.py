"""PRADA extraction detection: unit behaviour, actions over HTTP, and the attack simulator vs a benign replay."""

import asyncio
import json

import httpx
import numpy as np
import pytest

from secure_ml.errors import ConfigError
from secure_ml.serving.auth import client_id
from secure_ml.serving.blocklist import MemoryBlockList
from secure_ml.serving.extraction_detector import ExtractionDetector, shapiro_w
from secure_ml.serving.settings import ExtractionConfig
from secure_ml.tools.extract import SimulatorConfig, format_report, run_simulation
from secure_ml.tools.http_client import check_loopback, parse_metrics
from tests.helpers.data import REAL_DATA
from tests.helpers.serving import ADMIN, KEY_A, KEY_B, FakeClock, audit_lines, base_config, running, trained_checkpoint, write_checkpoint

pytestmark = pytest.mark.serving

ZEROS = {"image": [[0.0] * 28 for _ in range(28)]}


def test_replaying_one_image_alarms_after_n():
    det = ExtractionDetector(ExtractionConfig(min_distances=20, window=20))
    x = np.zeros(784, dtype=np.float32)
    verdicts = [det.observe("c", x, 0, 0.9) for _ in range(25)]
    assert not any(v.alarm for v in verdicts[:20])  # the first query has no distance; 19 < N
    assert verdicts[20].signals == ["prada"] and verdicts[20].w == 0.0 and verdicts[20].new_signals == ["prada"]
    assert verdicts[21].alarm and verdicts[21].new_signals == []  # onset reported once
    assert det.snapshot()["c"]["first_alert_query"] == 21


def test_natural_digits_do_not_alarm_but_jacobian_steps_do():
    from secure_ml.data.mnist import load_mnist

    x, _ = load_mnist(str(REAL_DATA), train=False, download=False)
    det = ExtractionDetector(ExtractionConfig())
    rng = np.random.default_rng(0)
    digits = x[1000:1400].numpy().reshape(400, -1)
    fake_labels = rng.integers(0, 10, 400)  # class grouping only; the labels need not be right for this check
    assert not any(det.observe("benign", d, int(c), 0.99).alarm for d, c in zip(digits, fake_labels))
    # fixed-size sign steps around a few seeds: distances pile up at lam*sqrt(d)
    seeds = digits[:20]
    steps = [np.clip(s + 0.1 * np.sign(rng.standard_normal(784)), 0, 1) for s in seeds for _ in range(10)]
    assert any(det.observe("attacker", q, int(i % 10), 0.9).alarm for i, q in enumerate(list(seeds) + steps))


def test_memory_is_bounded():
    cfg = ExtractionConfig(max_queries_per_client=50, max_clients=3, window=100, min_distances=100)
    det = ExtractionDetector(cfg)
    rng = np.random.default_rng(0)
    for i in range(400):
        det.observe(f"c{i % 5}", rng.random(784, dtype=np.float32), i % 10, 0.9)
    snap = det.snapshot()
    assert len(snap) == 3
    assert all(v["stored"] <= 50 for v in snap.values())
    assert all(len(s.distances) <= 100 for s in det._clients.values())


def test_block_expires_and_other_signals():
    clock = FakeClock()
    det = ExtractionDetector(
        ExtractionConfig(rate_max_queries=3, rate_window_s=1.0, novelty_window=4, novelty_max_fraction=0.5, min_distances=100), clock=clock
    )
    blocks = MemoryBlockList(clock)
    asyncio.run(blocks.block("c", 10))
    assert asyncio.run(blocks.is_blocked("c")) and not asyncio.run(blocks.is_blocked("d")) and blocks.issued_active() == 1
    clock.advance(10)
    assert not asyncio.run(blocks.is_blocked("c")) and blocks.issued_active() == 0
    x = np.zeros(784, dtype=np.float32)
    signals = [det.observe("r", x + i / 100, 0, 0.99).signals for i in range(4)]
    assert signals[3] == ["rate"] and signals[2] == []
    clock.advance(5)
    signals = [det.observe("n", x + i / 100, 0, 0.2).signals for i in range(4)]
    assert "novelty" in signals[3] and "novelty" not in signals[2]
    assert shapiro_w([1.0] * 10) == 0.0


@pytest.mark.slow
def test_flag_logs_one_alert_and_keeps_answering(tmp_path):
    cfg = base_config(tmp_path, extraction={"action": "flag", "min_distances": 20, "window": 20})
    with running(cfg) as srv:
        codes = [httpx.post(srv.url + "/predict", json=ZEROS, headers={"X-API-Key": KEY_A}).status_code for _ in range(25)]
        metrics = parse_metrics(httpx.get(srv.url + "/metrics", headers={"X-API-Key": ADMIN}).text)
    assert codes == [200] * 25
    alerts = [json.loads(line) for line in (tmp_path / "audit.alerts.jsonl").read_text().splitlines()]
    assert len(alerts) == 1 and alerts[0]["client"] == client_id(KEY_A) and alerts[0]["query_index"] == 21
    assert [line.get("alert") for line in audit_lines(tmp_path / "audit.jsonl")][19:22] == [None, "prada", "prada"]
    assert metrics[("secure_ml_extraction_first_alert_query", (("client", client_id(KEY_A)),))] == 21


@pytest.mark.slow
def test_throttle_shrinks_only_that_clients_rate(tmp_path):
    cfg = base_config(tmp_path, extraction={"action": "throttle", "min_distances": 20, "window": 20, "throttle_factor": 0.01})
    with running(cfg, clock=FakeClock()) as srv:
        for _ in range(21):
            httpx.post(srv.url + "/predict", json=ZEROS, headers={"X-API-Key": KEY_A})
        limiter = srv.service.limiter
        assert asyncio.run(limiter.limits_for(client_id(KEY_A))) == (10.0, pytest.approx(100.0))
        assert asyncio.run(limiter.limits_for(client_id(KEY_B))) == (1000.0, 10000.0)
        # the throttle bites over HTTP (the clock is frozen: no refill): 10 tokens left for A, B untouched
        a = [httpx.post(srv.url + "/predict", json=ZEROS, headers={"X-API-Key": KEY_A}).status_code for _ in range(11)]
        b = [httpx.post(srv.url + "/predict", json=ZEROS, headers={"X-API-Key": KEY_B}).status_code for _ in range(11)]
    assert a == [200] * 10 + [429] and b == [200] * 11


def test_block_answers_403(tmp_path):
    cfg = base_config(tmp_path, extraction={"action": "block", "min_distances": 20, "window": 20})
    with running(cfg) as srv:
        codes = [httpx.post(srv.url + "/predict", json=ZEROS, headers={"X-API-Key": KEY_A}) for _ in range(23)]
        other = httpx.post(srv.url + "/predict", json=ZEROS, headers={"X-API-Key": KEY_B}).status_code
    assert [r.status_code for r in codes] == [200] * 20 + [403] * 3
    assert [r.json()["reason"] for r in codes[20:]] == ["extraction_suspected", "blocked", "blocked"]
    assert "label" not in codes[20].json() and other == 200


def _simulate(tmp_path, **settings) -> dict:
    """The simulator against a served trained SmallCNN (the shipped detector defaults: N=100, delta=0.9, block)."""
    with running(base_config(tmp_path)) as srv:
        base = dict(url=srv.url, api_key=KEY_A, admin_key=ADMIN, qps=0, data_dir=str(REAL_DATA), time_limit=100)
        return run_simulation(SimulatorConfig(**base, **settings))


@pytest.mark.slow
def test_simulator_detected_benign_replay_quiet(tmp_path):
    """Jacobian extraction over HTTP is blocked within a few hundred queries; 600 held-out digits are not flagged."""
    report = _simulate(
        tmp_path, benign_api_key=KEY_B, queries=400, seeds=30, epochs=3, benign_queries=600, ckpt_path=str(trained_checkpoint())
    )
    print(format_report(report))
    assert report["detected"] and report["detection_seen_via"] == "403"
    assert report["queries_to_detection"] <= 300
    assert report["benign"]["queries"] == 600 and report["benign"]["false_positive_rate"] == 0.0
    assert report["benign"]["first_alert_query"] is None
    assert 0.0 <= report["copy_agreement_at_detection"] <= 1.0 and report["agreement_digits"] == 600
    assert report["truth"] == "the served model" and report["ckpt_agrees_with_service"] >= 0.99


@pytest.mark.slow
def test_simulator_says_when_ckpt_path_is_not_the_served_model(tmp_path):
    """Found by probing: another model's checkpoint was reported as "the served model" and the copy's agreement with it
    as the copy's fidelity. The service's answers to the attack's own queries now tell the two apart."""
    other = write_checkpoint(tmp_path / "untrained.ckpt")  # an untrained SmallCNN, not the trained one served
    report = _simulate(tmp_path, queries=60, seeds=20, epochs=1, benign_queries=50, ckpt_path=str(other))
    assert report["ckpt_agrees_with_service"] < 0.5
    assert report["truth"].startswith("--ckpt_path's model, NOT the served one"), report["truth"]


def test_simulator_refuses_non_loopback():
    with pytest.raises(ConfigError, match="loopback"):
        check_loopback("http://example.com:8000")
    check_loopback("http://127.0.0.1:1")
    check_loopback("http://[::1]:1")


def test_simulator_checks_its_own_inputs_before_the_first_query(tmp_path):
    """A mistyped --ckpt_path used to surface after the whole attack (its queries spent, its report lost)."""
    with running(base_config(tmp_path)) as srv:
        base = dict(url=srv.url, api_key=KEY_A, admin_key=ADMIN, queries=50, seeds=5, epochs=1, benign_queries=0, qps=0)
        for bad, message in (
            ({"ckpt_path": str(tmp_path / "nope.ckpt")}, "does not exist"),
            ({"torch_threads": -1}, "--torch-threads"),
            ({"lam": float("nan")}, "--lam must be a finite number"),  # was httpx's traceback on a NaN image
            ({"time_limit": -1.0}, "--time-limit must be"),  # was an empty run reported as "detected: no"
        ):
            with pytest.raises(ConfigError, match=message):
                run_simulation(SimulatorConfig(**base, data_dir=str(REAL_DATA), **bad))
        metrics = httpx.get(srv.url + "/metrics", headers={"X-API-Key": ADMIN}).text
    assert 'endpoint="/predict"' not in metrics  # not one query was sent


def test_a_refused_key_is_an_error_not_an_undetected_attack(tmp_path):
    """A wrong --api-key got 401s, which read as unlabeled answers: "detected: no", exit 0. A wrong --admin-key hid the
    /metrics page, so under flag/throttle a detected attack read as undetected. Both are one line now."""
    with running(base_config(tmp_path)) as srv:
        base = dict(url=srv.url, queries=20, seeds=5, epochs=1, benign_queries=0, qps=0, data_dir=str(REAL_DATA), time_limit=60)
        with pytest.raises(ConfigError, match=r"^--api-key: the service refused the key on /predict \(HTTP 401"):
            run_simulation(SimulatorConfig(**base, api_key="wrong-key-0123456789abcdef", admin_key=ADMIN))
        with pytest.raises(ConfigError, match=r"^--admin-key: the service refused the key on /metrics"):
            run_simulation(SimulatorConfig(**base, api_key=KEY_A, admin_key=KEY_B))  # a client key, not an admin key
        report = run_simulation(SimulatorConfig(**base, api_key=KEY_A, admin_key=ADMIN))  # control: the right keys run
    assert report["queries_sent"] >= 5


# ---- the attack itself (secure_ml.attacks.extraction), in process ----------------------------------------
def test_steal_copies_the_model_and_stops_at_a_refusal():
    """Against an open oracle the Jacobian attack's copy agrees with the victim far above chance; a refusal ends it."""
    import torch

    from secure_ml.attacks.extraction import Answer, agreement, steal, train_copy
    from secure_ml.serving.startup import load_served_model
    from secure_ml.tools.digits import load_test_digits

    victim = load_served_model(str(trained_checkpoint()), "cpu").model
    x, _ = load_test_digits(str(REAL_DATA))
    seeds, held_out = x[:40], x[1000:1400]
    with torch.no_grad():
        truth = victim(held_out).argmax(1)

    def oracle(q):
        with torch.no_grad():
            return Answer(label=int(victim(q[None]).argmax(1)))

    stolen = steal(oracle, seeds, budget=160, epochs=3)
    assert stolen.sent == 160 and len(stolen.y) == 160 and stolen.refused_at is None  # seeds, then 2 Jacobian rounds
    copied = agreement(train_copy(stolen.x, stolen.y, 5, 0), held_out, truth)
    chance = agreement(train_copy(seeds[:0], stolen.y[:0], 5, 0), held_out, truth)  # an untrained copy: the control
    assert copied > 0.5 and copied > chance + 0.3, (copied, chance)  # measured 0.59 vs 0.145

    calls = []

    def refusing(q):
        calls.append(1)
        return Answer(refused=len(calls) > 25) if len(calls) > 25 else oracle(q)

    blocked = steal(refusing, seeds, budget=160, epochs=1)
    assert blocked.refused_at == 26 and len(blocked.y) == 25 and len(calls) == 26
