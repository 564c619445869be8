"""Request-body size limit as pure ASGI middleware: bytes are counted as they stream in.

Why not a FastAPI dependency or ``await request.body()`` and a length check: by then the whole body is
in memory. This middleware sits between the server and the app and reads the body itself, chunk by
chunk, before the app sees any of it:

* a ``Content-Length`` above the limit → 413 at once, nothing read;
* a chunked body (no ``Content-Length``) → read until the running total passes the limit → 413, the
  rest is never read (the server then closes the connection);
* a ``Content-Length`` that lies: h11 lets ``Transfer-Encoding: chunked`` win over a ``Content-Length``
  header (RFC 9112 §6.3), so a client can claim 10 bytes and stream megabytes. The count, never the
  header, decides: past the limit → 413; more bytes than declared but under the limit → 400 (a framing
  mismatch is a request-smuggling signature, not a body to parse);
* a body trickling in slower than ``body_timeout_s`` → 408 (slow-loris).

At most ``limit`` bytes plus one network chunk are ever buffered. The app then receives the buffered
body as a single ``http.request`` message; later ``receive()`` calls go to the server (disconnects).
"""

import asyncio
import json
import time
from typing import Awaitable, Callable, Optional

from secure_ml.serving.audit import audit_context

Scope = dict
Message = dict
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def send_json_error(send: Send, status: int, error: str, detail: str, close: bool = True) -> None:
    body = json.dumps({"error": error, "reason": error, "detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def declared_length(scope: Scope) -> Optional[int]:
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int, body_timeout_s: float = 10.0):
        self.app = app
        self.limit = int(max_body_bytes)
        self.timeout = float(body_timeout_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = audit_context(scope)
        declared = declared_length(scope)
        if declared is not None and declared > self.limit:
            ctx.reject("body_too_large")
            await send_json_error(send, 413, "body_too_large", f"Content-Length {declared} exceeds the {self.limit}-byte limit")
            return
        chunks, total = [], 0
        deadline = time.monotonic() + self.timeout
        disconnected = False
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                ctx.reject("body_timeout")
                await send_json_error(send, 408, "body_timeout", f"the body did not arrive within {self.timeout:g} s")
                return
            if message["type"] == "http.disconnect":
                disconnected = True
                break
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.limit:
                ctx.reject("body_too_large")
                ctx.bytes_in = total
                await send_json_error(send, 413, "body_too_large", f"the body exceeds the {self.limit}-byte limit (stopped reading)")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        ctx.bytes_in = total
        if declared is not None and total != declared and not disconnected:
            ctx.reject("content_length_mismatch")
            await send_json_error(send, 400, "content_length_mismatch", f"Content-Length says {declared} bytes but {total} arrived")
            return
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if disconnected:
                return {"type": "http.disconnect"}
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
