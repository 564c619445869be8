"""Readiness (``GET /ready``): can this replica serve a request now, as opposed to ``/health`` (is the process alive)?

With ``rate_limit.storage: redis://...`` every guarded request asks Redis first and fails closed (503
``limits_unavailable``) when Redis does not answer; ``/health`` stays 200 through such an outage, because a
restart would not bring Redis back. A load balancer or a Kubernetes readiness probe needs the other
question, so ``/ready`` PINGs the store (within ``rate_limit.redis_timeout_s``) and answers 503 with the
same reason while it is down. The request log is covered by the log layer in front of every route: an
unwritable log makes ``/ready`` (like everything else) 503 ``audit_unavailable``.

``/ready`` needs no key (probes carry none), so a keyless flood must not become a flood of PINGs: a result
is reused for ``ttl_s`` (1 s) and concurrent probes share one PING. Memory storage has nothing to ask.
"""

import asyncio
import time
from typing import Awaitable, Callable, Optional

from secure_ml.serving.rate_limit import StoreUnavailable, redis_call

TTL_S = 1.0


class Readiness:
    """``await check()`` → ``None`` when ready, else the refusal reason (``"limits_unavailable"``).

    Args:
        ping: a zero-argument coroutine function asking the shared store (None: nothing to ask, always ready).
        timeout_s: how long the store may take to answer.
        clock: monotonic seconds (tests pass a fake one).
        ttl_s: how long one answer is reused.
    """

    def __init__(
        self,
        ping: Optional[Callable[[], Awaitable]],
        timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
        ttl_s: float = TTL_S,
    ):
        self.ping, self.timeout_s, self.clock, self.ttl_s = ping, timeout_s, clock, ttl_s
        self.pings = 0  # PINGs sent (tests bound them)
        self._reason: Optional[str] = None
        self._until = -float("inf")
        self._lock: Optional[asyncio.Lock] = None  # made in the server's loop, on first use
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    async def check(self) -> Optional[str]:
        if self.ping is None:
            return None
        loop = asyncio.get_running_loop()
        if self._lock is None or self._loop is not loop:  # a lock belongs to one event loop (a restarted server has another)
            self._lock, self._loop = asyncio.Lock(), loop
        async with self._lock:  # concurrent probes wait for the PING in flight instead of sending their own
            now = self.clock()
            if self._until - self.ttl_s <= now < self._until:  # fresh (a clock that stepped back re-asks)
                return self._reason
            self.pings += 1
            try:
                await redis_call(self.ping(), self.timeout_s)
                self._reason = None
            except StoreUnavailable:
                self._reason = "limits_unavailable"
            self._until = self.clock() + self.ttl_s
            return self._reason
