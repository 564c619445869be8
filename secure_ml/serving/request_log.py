"""The request log ("audit log" in serve.yaml): one JSON line per HTTP request, and what the layers record for it.

Every request gets a :class:`RequestContext` (in the ASGI scope) that the layers fill in: the client's
key hash, the rejection reason, the SHA-256 of the body, the label, an extraction alert.
``middleware.RequestLogMiddleware`` turns it into one line, written before the response leaves.

A line holds: ``ts``, ``request_id``, ``client`` (first 16 hex of SHA-256 of the API key, never the key),
``method``, ``endpoint``, ``status``, ``decision`` (allowed / rejected / error), ``reason``,
``latency_ms``, ``bytes``, ``input_sha256`` (of the raw body bytes, never the pixels), and when set,
``label`` and ``alert``. Never a statistic of the input policy. The file is opened in append mode per
line (one ``write`` call, so lines from concurrent requests never interleave, and log rotation needs
no signal).
"""

import datetime as dt
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from secure_ml.errors import ConfigError

SCOPE_KEY = "secure_ml.request"
MAX_ENDPOINT_CHARS = 200


@dataclass
class RequestContext:
    request_id: str = ""
    client: Optional[str] = None
    reason: Optional[str] = None
    input_sha256: Optional[str] = None
    bytes_in: int = 0
    label: Optional[int] = None
    alert: Optional[str] = None

    def reject(self, reason: str) -> None:
        self.reason = reason


def request_context(scope: dict) -> RequestContext:
    """The request's context (created on first use, e.g. when the log layer is off under ``guards: false``)."""
    ctx = scope.get(SCOPE_KEY)
    if ctx is None:
        ctx = scope[SCOPE_KEY] = RequestContext()
    return ctx


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})


def logged_method(method: str) -> str:
    """The method as sent when HTTP defines it, else ``other``: a client must not choose the size of a line (h11 takes a 16 KiB token)."""
    return method if method in HTTP_METHODS else "other"


def _default_reason(status: int) -> str:
    return {200: "ok", 404: "not_found", 405: "method_not_allowed", 500: "internal_error"}.get(status, f"http_{status}")


def log_record(scope: dict, ctx: RequestContext, status: int, latency_s: float) -> Dict[str, Any]:
    """The line for one finished request."""
    record: Dict[str, Any] = {
        "ts": now_iso(),
        "request_id": ctx.request_id,
        "client": ctx.client,
        "method": logged_method(scope.get("method", "")),
        "endpoint": scope.get("path", "")[:MAX_ENDPOINT_CHARS],
        "status": status,
        "decision": "allowed" if status < 400 else ("rejected" if status < 500 else "error"),
        "reason": ctx.reason or _default_reason(status),
        "latency_ms": round(latency_s * 1000, 3),
        "bytes": ctx.bytes_in,
        "input_sha256": ctx.input_sha256,
    }
    if ctx.label is not None:
        record["label"] = ctx.label
    if ctx.alert is not None:
        record["alert"] = ctx.alert
    return record


class RequestLog:
    """Appends JSON lines to ``path``; alerts go to ``alert_path``. Every failure raises OSError."""

    def __init__(self, path: str, alert_path: Optional[str] = None, fsync: bool = False):
        self.path = Path(path)
        self.alert_path = Path(alert_path) if alert_path else self.path.with_suffix(".alerts.jsonl")
        self.fsync = fsync
        self._lock = threading.Lock()
        for p, key in ((self.path, "audit.path"), (self.alert_path, "audit.alert_path")):
            try:  # at start-up, not at the first request: a log that cannot be written would answer every request 503
                p.parent.mkdir(parents=True, exist_ok=True)
                os.close(os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))
            except OSError as exc:
                raise ConfigError(f"serve.yaml: {key}: the request log {str(p)!r} cannot be written ({exc.strerror or exc})") from None

    def _append(self, path: Path, record: Dict[str, Any]) -> None:
        line = (json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode()
        with self._lock:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                if os.write(fd, line) != len(line):
                    raise OSError("short write")
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)

    def write(self, record: Dict[str, Any]) -> None:
        self._append(self.path, record)

    def alert(self, record: Dict[str, Any]) -> None:
        self._append(self.alert_path, record)
