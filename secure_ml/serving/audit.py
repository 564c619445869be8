"""Audit log: exactly one structured JSON line per HTTP request, written before the response leaves.

``AuditMiddleware`` is the outermost ASGI layer. It gives every request an ``AuditContext`` (in the
scope, under ``secure_ml.audit``) that inner layers fill in (client key hash, rejection reason, SHA-256
of the body, label, alert), holds the response back until its last body chunk, writes the line, and
only then sends the response. If the line cannot be written the request fails closed: the held
response (a prediction, say) is dropped and a 503 ``audit_unavailable`` goes out instead.

A line holds: ``ts``, ``request_id``, ``client`` (first 16 hex of SHA-256 of the API key, never the key),
``method``, ``endpoint``, ``status``, ``decision`` (allowed / rejected / error), ``reason``,
``latency_ms``, ``bytes``, ``input_sha256`` (of the raw body bytes, never the pixels), and when set,
``label`` and ``alert``. The file is opened in append mode per line (one ``write`` call, so lines from
concurrent requests never interleave, and log rotation needs no signal).

Requests the ASGI server answers itself (malformed HTTP, uvicorn's ``limit_concurrency`` 503s) never
reach the app and are not in the log.
"""

import datetime as dt
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

logger = logging.getLogger("secure_ml.serving")

SCOPE_KEY = "secure_ml.audit"
MAX_ENDPOINT_CHARS = 200


@dataclass
class AuditContext:
    request_id: str = ""
    client: Optional[str] = None
    reason: Optional[str] = None
    input_sha256: Optional[str] = None
    bytes_in: int = 0
    label: Optional[int] = None
    alert: Optional[str] = None

    def reject(self, reason: str) -> None:
        self.reason = reason


def audit_context(scope: dict) -> AuditContext:
    """The request's context; a throwaway one when the audit layer is off (guards: false)."""
    ctx = scope.get(SCOPE_KEY)
    if ctx is None:
        ctx = scope[SCOPE_KEY] = AuditContext()
    return ctx


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class AuditLog:
    """Appends JSON lines to ``path``; alerts go to ``alert_path``. Every failure raises OSError."""

    def __init__(self, path: str, alert_path: Optional[str] = None, fsync: bool = False):
        self.path = Path(path)
        self.alert_path = Path(alert_path) if alert_path else self.path.with_suffix(".alerts.jsonl")
        self.fsync = fsync
        self._lock = threading.Lock()
        for p in (self.path, self.alert_path):
            p.parent.mkdir(parents=True, exist_ok=True)

    def _append(self, path: Path, record: Dict[str, Any]) -> None:
        line = (json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode()
        with self._lock:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                if os.write(fd, line) != len(line):
                    raise OSError(f"short write to {path}")
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)

    def write(self, record: Dict[str, Any]) -> None:
        self._append(self.path, record)

    def alert(self, record: Dict[str, Any]) -> None:
        self._append(self.alert_path, record)


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def _default_reason(status: int) -> str:
    return {200: "ok", 404: "not_found", 405: "method_not_allowed", 500: "internal_error"}.get(status, f"http_{status}")


class AuditMiddleware:
    """Outermost layer: builds the per-request record, writes it (fail closed), feeds the metrics."""

    def __init__(self, app, log: Optional[AuditLog], metrics=None):
        self.app = app
        self.log = log
        self.metrics = metrics

    def _record(self, scope: dict, ctx: AuditContext, status: int, t0: float) -> Dict[str, Any]:
        record: Dict[str, Any] = {
            "ts": now_iso(),
            "request_id": ctx.request_id,
            "client": ctx.client,
            "method": scope.get("method", ""),
            "endpoint": scope.get("path", "")[:MAX_ENDPOINT_CHARS],
            "status": status,
            "decision": "allowed" if status < 400 else ("rejected" if status < 500 else "error"),
            "reason": ctx.reason or _default_reason(status),
            "latency_ms": round((time.perf_counter() - t0) * 1000, 3),
            "bytes": ctx.bytes_in,
            "input_sha256": ctx.input_sha256,
        }
        if ctx.label is not None:
            record["label"] = ctx.label
        if ctx.alert is not None:
            record["alert"] = ctx.alert
        return record

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from secure_ml.serving.body_limit import send_json_error

        ctx = audit_context(scope)
        ctx.request_id = uuid.uuid4().hex
        t0 = time.perf_counter()
        held: Dict[str, Any] = {"start": None, "body": [], "done": False}

        async def finish() -> None:
            held["done"] = True
            start = held["start"] or {"type": "http.response.start", "status": 500, "headers": []}
            record = self._record(scope, ctx, int(start["status"]), t0)
            try:
                if self.log is not None:
                    self.log.write(record)
            except OSError as exc:
                logger.error("audit log write failed (%s): failing the request closed", exc)
                if self.metrics is not None:
                    self.metrics.audit_failure()
                await send_json_error(send, 503, "audit_unavailable", "the audit log cannot be written; no result is returned", close=False)
                return
            if self.metrics is not None:
                self.metrics.observe(record)
            await send(start)
            await send({"type": "http.response.body", "body": b"".join(held["body"]), "more_body": False})

        async def capture(message) -> None:
            if held["done"]:
                return
            if message["type"] == "http.response.start":
                held["start"] = message
            elif message["type"] == "http.response.body":
                held["body"].append(message.get("body", b""))
                if not message.get("more_body", False):
                    await finish()

        try:
            await self.app(scope, receive, capture)
        except Exception:  # a bug below: still exactly one line, and a JSON 500 if nothing went out
            logger.exception("unhandled error while serving %s", scope.get("path"))
            if not held["done"]:
                ctx.reason = ctx.reason or "internal_error"
                held["start"], held["body"] = None, []
                await _internal_error(capture)
        if not held["done"]:
            await finish()


async def _internal_error(capture) -> None:
    body = b'{"error":"internal_error","reason":"internal_error","detail":"the server failed on this request"}'
    await capture(
        {
            "type": "http.response.start",
            "status": 500,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await capture({"type": "http.response.body", "body": body, "more_body": False})
