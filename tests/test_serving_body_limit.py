"""Body-size limit: 413 for oversize, chunked and lying-Content-Length bodies, over raw sockets and at the ASGI level."""

import asyncio
import json
import socket
import time

import httpx
import pytest

from secure_ml.serving.middleware import BodyLimitMiddleware
from tests.helpers.serving import ADMIN, KEY_A, ZEROS, audit_lines, base_config, post, raw_http, running, status_of

pytestmark = pytest.mark.serving


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with running(base_config(tmp_path_factory.mktemp("body"))) as s:
        yield s


# ---- body limit --------------------------------------------------------------------------------
def _request(headers: bytes, body: bytes) -> bytes:
    return (
        b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: "
        + KEY_A.encode()
        + b"\r\nContent-Type: application/json\r\n"
        + headers
        + b"\r\n"
        + body
    )


def _chunked(total: int, size: int = 8192) -> bytes:
    chunks = [b"%x\r\n" % size + b" " * size + b"\r\n" for _ in range(total // size)]
    return b"".join(chunks) + b"0\r\n\r\n"


def test_413_content_length(srv):
    r = post(srv, b" " * 70000)
    assert r.status_code == 413 and r.json()["reason"] == "body_too_large"
    raw = raw_http(srv.port, _request(b"Content-Length: 300000\r\n", b"x" * 300000))
    assert status_of(raw) == 413


def test_413_chunked_without_content_length(srv):
    raw = raw_http(srv.port, _request(b"Transfer-Encoding: chunked\r\n", _chunked(200_000)))
    assert status_of(raw) == 413 and b"body_too_large" in raw


def test_413_lying_content_length(srv):
    # claims 10 bytes, streams 200 KB: h11 frames by Transfer-Encoding, the middleware counts the bytes
    raw = raw_http(srv.port, _request(b"Content-Length: 10\r\nTransfer-Encoding: chunked\r\n", _chunked(200_000)))
    assert status_of(raw) == 413


def test_lying_content_length_plain_reaches_app_truncated(srv):
    # without Transfer-Encoding the parser delivers exactly 10 bytes; the surplus is a malformed next request
    raw = raw_http(srv.port, _request(b"Content-Length: 10\r\n", b"y" * 200_000))
    assert status_of(raw) == 422 and b"HTTP/1.1 400" in raw
    assert httpx.get(srv.url + "/health").status_code == 200


def test_chunked_body_under_limit_is_served(srv):
    body = json.dumps(ZEROS).encode()

    def gen():
        for i in range(0, len(body), 1000):
            yield body[i : i + 1000]

    r = httpx.post(srv.url + "/predict", content=gen(), headers={"X-API-Key": KEY_A})
    assert r.status_code == 200


def test_body_limit_middleware_stops_reading():
    """ASGI level: a stream longer than its Content-Length is cut at the limit, the rest never pulled."""
    pulled, sent = [], []

    async def receive():
        pulled.append(1)
        return {"type": "http.request", "body": b"x" * 1000, "more_body": True}  # an endless body

    async def send(message):
        sent.append(message)

    async def app(scope, receive, send):  # pragma: no cover - must not be reached
        raise AssertionError("the app saw an oversize body")

    mw = BodyLimitMiddleware(app, max_body_bytes=5000)
    scope = {"type": "http", "headers": [(b"content-length", b"10")]}
    asyncio.run(mw(scope, receive, send))
    assert sent[0]["status"] == 413 and len(pulled) == 6


def test_body_limit_middleware_mismatch_under_limit():
    messages = iter([{"type": "http.request", "body": b"x" * 100, "more_body": False}])
    sent = []

    async def receive():
        return next(messages)

    async def send(message):
        sent.append(message)

    mw = BodyLimitMiddleware(lambda *a: None, max_body_bytes=5000)
    asyncio.run(mw({"type": "http", "headers": [(b"content-length", b"10")]}, receive, send))
    assert sent[0]["status"] == 400


def test_a_client_hanging_up_mid_body_is_its_outcome_not_a_server_error(tmp_path):
    """A key holder who sends half a body and closes must not be able to fake 500s (alerts, tracebacks) on demand."""
    cfg = base_config(tmp_path)
    body = json.dumps(ZEROS).encode()
    head = b"Content-Length: %d\r\n" % len(body)
    with running(cfg) as s:
        port = int(s.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(_request(head, body[:100]))
            time.sleep(0.3)
        deadline = time.monotonic() + 5
        while len(audit_lines(cfg["audit"]["path"])) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        complete = post(s, body)  # the control: the same request with its whole body is served
        metrics = httpx.get(s.url + "/metrics", headers={"X-API-Key": ADMIN}).text
    first = audit_lines(cfg["audit"]["path"])[0]
    assert (first["status"], first["decision"], first["reason"]) == (499, "rejected", "client_disconnect"), first
    assert complete.status_code == 200
    assert 'status="500"' not in metrics and 'reason="internal_error"' not in metrics
