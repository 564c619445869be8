"""The service's pure-ASGI layers, outermost first: request log, client gate, body limit (order: see ``app``).

Pure ASGI classes in Starlette's idiom (``starlette.types`` Scope/Receive/Send, ``Headers``, a
``Response`` awaited) rather than ``BaseHTTPMiddleware``: they must see the request before the
framework reads its body, and hold the response back until its log line is written. Every refusal
is :func:`secure_ml.serving.errors.error_response`.
"""

import asyncio
import logging
import time
import uuid
from typing import Any, Dict, FrozenSet, Optional

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from secure_ml.serving.auth import API_KEY_HEADER, Authenticator
from secure_ml.serving.blocklist import BlockList
from secure_ml.serving.errors import ServiceError, error_response
from secure_ml.serving.metrics import Metrics
from secure_ml.serving.rate_limit import RateLimiter, StoreUnavailable
from secure_ml.serving.request_log import RequestLog, log_record, request_context

logger = logging.getLogger("secure_ml.serving")
ANONYMOUS = "anonymous"  # the one client when auth is off
UNAUTHENTICATED = "unauthenticated"  # the shared bucket of requests with a missing or wrong key


class RequestLogMiddleware:
    """Exactly one log line per request, written before the response leaves; if it cannot be written, 503 (fail closed).

    Requests the ASGI server answers itself (malformed HTTP, uvicorn's ``limit_concurrency`` 503s) never
    reach the app and are not in the log.
    """

    def __init__(self, app: ASGIApp, log: Optional[RequestLog], metrics: Metrics):
        self.app, self.log, self.metrics = app, log, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = request_context(scope)
        ctx.request_id = uuid.uuid4().hex
        t0 = time.perf_counter()
        held: Dict[str, Any] = {"start": None, "body": [], "done": False}

        async def finish() -> None:
            held["done"] = True
            start = held["start"] or {"type": "http.response.start", "status": 500, "headers": []}
            record = log_record(scope, ctx, int(start["status"]), time.perf_counter() - t0)
            try:
                if self.log is not None:
                    self.log.write(record)
            except OSError as exc:
                logger.error("request log write failed (%s): failing the request closed", type(exc).__name__)
                self.metrics.audit_failure()
                await error_response(
                    503, "audit_unavailable", "audit_unavailable", "the request log cannot be written; no result is returned"
                )(scope, receive, send)
                return
            self.metrics.observe(record)
            await send(start)
            await send({"type": "http.response.body", "body": b"".join(held["body"]), "more_body": False})

        async def capture(message: Message) -> None:
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
        except Exception:  # a bug or a failing model below: still exactly one line, and a JSON 500 without its text
            logger.exception("unhandled error while serving %s", scope.get("path"))
            if not held["done"]:
                ctx.reason = ctx.reason or "internal_error"
                held["start"], held["body"] = None, []
                await error_response(500, "internal_error", "internal_error", "the server failed on this request")(scope, receive, capture)
        if not held["done"]:
            await finish()


class ClientGateMiddleware:
    """API key, blocked client and rate limit, decided from the headers alone: no body byte is read before.

    ``public`` paths pass untouched; ``admin`` paths need an admin key, every other path a client key.
    A refusal closes the connection (the unread body is never waited for). A failure of the shared
    store (Redis) is a 503: limits fail closed.
    """

    def __init__(
        self,
        app: ASGIApp,
        auth: Optional[Authenticator],
        failed_auth: Optional[RateLimiter],
        blocklist: Optional[BlockList],
        limiter: Optional[RateLimiter],
        public: FrozenSet[str],
        admin: FrozenSet[str],
    ):
        self.app, self.auth, self.failed_auth = app, auth, failed_auth
        self.blocklist, self.limiter, self.public, self.admin = blocklist, limiter, public, admin

    async def _identify(self, scope: Scope) -> str:
        if self.auth is None:
            return ANONYMOUS
        presented = Headers(scope=scope).get(API_KEY_HEADER)
        admin = scope["path"] in self.admin
        client = self.auth.admin(presented) if admin else self.auth.client(presented)
        if client is not None:
            return client
        allowed, retry_after = await self.failed_auth.check(UNAUTHENTICATED)
        if not allowed:
            raise ServiceError(
                429,
                "rate_limited",
                "auth_rate_limited",
                "too many requests with a missing or wrong API key",
                {"Retry-After": str(retry_after)},
            )
        challenge = {"WWW-Authenticate": "ApiKey"}
        if presented is None:
            raise ServiceError(401, "unauthorized", "missing_api_key", "send an API key in the X-API-Key header", challenge)
        raise ServiceError(
            401, "unauthorized", "invalid_api_key", "the API key is not valid" + (" for /metrics" if admin else ""), challenge
        )

    async def _admit(self, client: str) -> None:
        try:
            if self.blocklist is not None and await self.blocklist.is_blocked(client):
                raise ServiceError(403, "forbidden", "blocked", "this client is blocked (suspected model extraction)")
            if self.limiter is not None:
                allowed, retry_after = await self.limiter.check(client)
                if not allowed:
                    raise ServiceError(
                        429,
                        "rate_limited",
                        "rate_limited",
                        f"over the rate limit; retry in {retry_after} s",
                        {"Retry-After": str(retry_after)},
                        {"retry_after": retry_after},
                    )
        except StoreUnavailable as exc:
            logger.error("shared rate-limit store unavailable (%s): failing the request closed", exc)
            raise ServiceError(
                503, "unavailable", "limits_unavailable", "the rate-limit store is unavailable; retry later", {"Retry-After": "1"}
            ) from None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.public:
            await self.app(scope, receive, send)
            return
        ctx = request_context(scope)
        try:
            ctx.client = await self._identify(scope)
            await self._admit(ctx.client)
        except ServiceError as exc:
            ctx.reject(exc.reason)
            await exc.response(close=True)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Reads the body itself, chunk by chunk, before the app sees any of it.

    * a ``Content-Length`` above the limit → 413 at once, nothing read;
    * a chunked body → read until the running total passes the limit → 413, the rest never read;
    * a ``Content-Length`` that lies: h11 lets ``Transfer-Encoding: chunked`` win over ``Content-Length``
      (RFC 9112 §6.3), so the count, never the header, decides: past the limit → 413; more bytes than
      declared but under the limit → 400 (a framing mismatch is a request-smuggling signature);
    * a body trickling in slower than ``body_timeout_s`` → 408 (slow-loris).

    At most ``limit`` bytes plus one network chunk are buffered; the app then receives the body as one
    ``http.request`` message, and later ``receive()`` calls go to the server (disconnects).
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int, body_timeout_s: float = 10.0):
        self.app = app
        self.limit = int(max_body_bytes)
        self.timeout = float(body_timeout_s)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, status: int, reason: str, detail: str) -> None:
        request_context(scope).reject(reason)
        await error_response(status, reason, reason, detail, close=True)(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = request_context(scope)
        try:
            declared: Optional[int] = int(Headers(scope=scope).get("content-length", ""))
        except ValueError:
            declared = None
        if declared is not None and declared > self.limit:
            await self._refuse(
                scope, receive, send, 413, "body_too_large", f"Content-Length {declared} exceeds the {self.limit}-byte limit"
            )
            return
        chunks, total, disconnected = [], 0, False
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                await self._refuse(scope, receive, send, 408, "body_timeout", f"the body did not arrive within {self.timeout:g} s")
                return
            if message["type"] == "http.disconnect":
                disconnected = True
                break
            chunk = message.get("body", b"")
            total += len(chunk)
            ctx.bytes_in = total
            if total > self.limit:
                await self._refuse(
                    scope, receive, send, 413, "body_too_large", f"the body exceeds the {self.limit}-byte limit (stopped reading)"
                )
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        if disconnected:  # the client hung up before its body was complete: its outcome (nginx's 499), not a server error
            await self._refuse(
                scope, receive, send, 499, "client_disconnect", "the client closed the connection before its body was complete"
            )
            return
        if declared is not None and total != declared:
            await self._refuse(
                scope, receive, send, 400, "content_length_mismatch", f"Content-Length says {declared} bytes but {total} arrived"
            )
            return
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
