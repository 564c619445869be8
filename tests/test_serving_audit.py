"""Request log (one line per request, no raw input, fail closed) and /metrics over real HTTP."""

import hashlib
import json
import shutil

import httpx
import pytest

from secure_ml.serving.auth import client_id
from secure_ml.tools.http_client import parse_metrics as parse_prometheus
from tests.helpers.serving import ADMIN, KEY_A, KEY_B, FakeClock, audit_lines, base_config, raw_http, running, status_of

pytestmark = pytest.mark.serving

PIXEL = 0.123456789
IMAGE = {"image": [[PIXEL] * 28 for _ in range(28)]}
BURST = 5  # KEY_A's five requests of the mix fit in it (the gate spends a token before the body is read); KEY_B's sixth is 429


def _send_mix(srv):
    """One request per kind; returns (expected statuses in order, body bytes of the 200)."""
    body = json.dumps(IMAGE).encode()
    h = {"X-API-Key": KEY_A, "Content-Type": "application/json"}
    codes = [
        httpx.post(srv.url + "/predict", content=body, headers=h).status_code,  # 200
        httpx.post(srv.url + "/predict", content=body).status_code,  # 401 missing
        httpx.post(srv.url + "/predict", content=body, headers={**h, "X-API-Key": "x" * 20}).status_code,  # 401 wrong
        httpx.post(srv.url + "/predict", content=b'{"image": [[2.0]]}', headers=h).status_code,  # 422
        httpx.post(srv.url + "/predict", content=b" " * 70000, headers=h).status_code,  # 413
        httpx.get(srv.url + "/health").status_code,  # 200
        httpx.get(srv.url + "/nowhere", headers={"X-API-Key": KEY_A}).status_code,  # 404 (without a key: 401)
    ]
    req = (
        b"POST /predict HTTP/1.1\r\nHost: a\r\nX-API-Key: "
        + KEY_A.encode()
        + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"1000\r\n" + b"z" * 4096 + b"\r\n" for _ in range(40))
        + b"0\r\n\r\n"
    )
    codes.append(status_of(raw_http(srv.port, req)))  # 413 chunked
    codes += [httpx.post(srv.url + "/predict", content=body, headers={**h, "X-API-Key": KEY_B}).status_code for _ in range(BURST + 1)]
    return codes, body


@pytest.mark.slow
def test_one_line_per_request_and_no_raw_input(tmp_path):
    cfg = base_config(tmp_path, rate_limit={"burst": BURST, "max_qps": 0.001})
    with running(cfg, clock=FakeClock()) as srv:
        codes, body = _send_mix(srv)
    assert codes == [200, 401, 401, 422, 413, 200, 404, 413] + [200] * BURST + [429]
    lines = audit_lines(tmp_path / "audit.jsonl")
    assert [line["status"] for line in lines] == codes
    text = (tmp_path / "audit.jsonl").read_text()
    assert str(PIXEL) not in text and "123456789" not in text  # no pixels
    assert KEY_A not in text and KEY_B not in text  # no keys
    first = lines[0]
    assert first["client"] == client_id(KEY_A) and first["decision"] == "allowed" and first["reason"] == "ok"
    assert first["input_sha256"] == hashlib.sha256(body).hexdigest() and first["endpoint"] == "/predict"
    assert isinstance(first["label"], int) and first["latency_ms"] >= 0
    assert [line["reason"] for line in lines[1:5]] == ["missing_api_key", "invalid_api_key", "shape", "body_too_large"]
    assert lines[1]["client"] is None and lines[3]["decision"] == "rejected"
    assert lines[-1]["reason"] == "rate_limited" and lines[-1]["client"] == client_id(KEY_B)
    assert all(
        set(line) >= {"ts", "request_id", "client", "endpoint", "decision", "reason", "status", "latency_ms", "input_sha256"}
        for line in lines
    )
    assert len({line["request_id"] for line in lines}) == len(lines)


def test_a_client_cannot_choose_the_size_of_a_log_line(tmp_path):
    """From a red-team review: the method was logged whole, so a keyless client wrote 16 KB lines to /health at ~650/s."""
    from secure_ml.serving.request_log import logged_method

    assert logged_method("POST") == "POST" and logged_method("A" * 16000) == "other" and logged_method("post") == "other"
    cfg = base_config(tmp_path)
    with running(cfg) as srv:
        for method in (b"GET", b"A" * 12000):  # the control first: a normal request's line
            status_of(raw_http(srv.port, method + b" /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"))
    text = (tmp_path / "audit.jsonl").read_text().splitlines()
    lines = [json.loads(line) for line in text]
    assert [line["method"] for line in lines] == ["GET", "other"] and lines[1]["status"] == 405
    assert len(text[1]) < 2 * len(text[0]) < 1000


def test_audit_failure_fails_closed(tmp_path):
    audit_dir = tmp_path / "logs"
    cfg = base_config(tmp_path, audit={"path": str(audit_dir / "audit.jsonl")})
    with running(cfg) as srv:
        h = {"X-API-Key": KEY_A}
        assert httpx.post(srv.url + "/predict", json=IMAGE, headers=h).status_code == 200
        shutil.rmtree(audit_dir)
        (audit_dir / "audit.jsonl").mkdir(parents=True)  # the log path is now a directory: writes fail
        r = httpx.post(srv.url + "/predict", json=IMAGE, headers=h)
        assert r.status_code == 503 and r.json()["reason"] == "audit_unavailable"
        assert "label" not in r.json() and "probabilities" not in r.json()
        assert httpx.get(srv.url + "/health").status_code == 503  # every request fails closed
        (audit_dir / "audit.jsonl").rmdir()
        assert httpx.post(srv.url + "/predict", json=IMAGE, headers=h).status_code == 200  # recovers
        m = parse_prometheus(httpx.get(srv.url + "/metrics", headers={"X-API-Key": ADMIN}).text)
    assert m[("secure_ml_audit_failures_total", ())] == 2
    assert [line["status"] for line in audit_lines(audit_dir / "audit.jsonl")] == [200, 200]


def test_metrics_counts(tmp_path):
    cfg = base_config(tmp_path, rate_limit={"burst": BURST, "max_qps": 0.001})
    with running(cfg, clock=FakeClock()) as srv:
        _send_mix(srv)
        r = httpx.get(srv.url + "/metrics", headers={"X-API-Key": ADMIN})
    assert r.headers["content-type"].startswith("text/plain")
    m = parse_prometheus(r.text)
    assert m[("secure_ml_requests_total", (("endpoint", "/predict"), ("status", "200")))] == 1 + BURST
    assert m[("secure_ml_requests_total", (("endpoint", "other"), ("status", "404")))] == 1
    assert m[("secure_ml_rejections_total", (("reason", "body_too_large"),))] == 2
    assert m[("secure_ml_rejections_total", (("reason", "missing_api_key"),))] == 1
    assert m[("secure_ml_rate_limited_total", ())] == 1
    assert m[("secure_ml_predict_latency_seconds_count", ())] == 6 + BURST + 1
    for q in ("0.5", "0.9", "0.99"):
        assert m[("secure_ml_predict_latency_seconds", (("quantile", q),))] >= 0


def test_openapi_schema(tmp_path):
    with running(base_config(tmp_path, server={"docs": True})) as srv:
        schema = httpx.get(srv.url + "/openapi.json").json()
    assert {"/predict", "/health", "/metrics"} <= set(schema["paths"])
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "image" in body["properties"]
