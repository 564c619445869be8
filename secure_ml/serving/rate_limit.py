"""Per-client token buckets (and the detector's throttle factors) in memory or in Redis shared by every replica.

Why not a ``limits`` strategy: ``limits`` offers fixed-window, moving-window and sliding-window-counter
limiters whose items are "N per k seconds" at whole-second granularity. None is a token bucket: the
seed's intent (sustained 100 QPS, burst 10) would need "10 per 0.1 s", which cannot be expressed, and
"100 per second" lets a client fire 100 requests back to back. So the bucket is ours, a few lines:
``tokens = min(capacity, tokens + elapsed * rate)`` and a ``Retry-After`` of ``ceil((cost - tokens) / rate)``
seconds (at least 1).

``MemoryBucketStorage`` (default) keeps the buckets in this process (an injectable clock makes tests
deterministic). ``RedisBucketStorage`` runs the same arithmetic as one Lua script inside Redis (time
from ``redis.call('TIME')``, so replica clocks don't matter; the client's throttle factor is read in the
same script), so one key's burst is shared by every replica. Any Redis failure or a call slower than
``rate_limit.redis_timeout_s`` raises :class:`StoreUnavailable`, which the gate answers with 503: the
limit fails closed, never open.
"""

import asyncio
import math
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from typing import Awaitable, Callable, Dict, Tuple, TypeVar

T = TypeVar("T")
PREFIX = "secure_ml:"


class StoreUnavailable(Exception):
    """The shared store (Redis) did not answer correctly in time; the request must fail closed."""


def redis_client(uri: str, timeout_s: float):
    """An asyncio Redis client for ``uri`` that never retries (a failure must surface within ``timeout_s``)."""
    from redis.asyncio import from_url
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return from_url(uri, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0))


async def redis_call(call: Awaitable[T], timeout_s: float) -> T:
    """Await one Redis call; any error or overrun becomes :class:`StoreUnavailable`."""
    try:
        return await asyncio.wait_for(call, timeout_s)
    except Exception as exc:  # redis.exceptions.*, OSError, TimeoutError: all mean "no answer to trust"
        raise StoreUnavailable(type(exc).__name__) from exc


def _refill_and_take(tokens: float, elapsed: float, capacity: float, rate: float, cost: float) -> Tuple[float, bool, float]:
    tokens = min(capacity, tokens + max(0.0, elapsed) * rate)
    if tokens >= cost:
        return tokens - cost, True, 0.0
    return tokens, False, (cost - tokens) / rate


def _scaled(capacity: float, rate: float, factor: float) -> Tuple[float, float]:
    return (max(1.0, math.floor(capacity * factor)), rate * factor) if factor < 1.0 else (capacity, rate)


class BucketStorage(ABC):
    @abstractmethod
    async def take(self, key: str, capacity: float, rate: float, cost: float = 1.0) -> Tuple[bool, float]:
        """Refill ``key``'s bucket (scaled by its throttle factor), take ``cost``: ``(allowed, seconds until cost tokens exist)``."""

    @abstractmethod
    async def throttle(self, key: str, factor: float) -> None:
        """From now on ``key``'s capacity and rate are multiplied by ``factor`` (the smallest factor given wins)."""

    @abstractmethod
    async def factor(self, key: str) -> float:
        """``key``'s throttle factor (1.0 when not throttled)."""


class MemoryBucketStorage(BucketStorage):
    """In-process buckets; at most ``max_keys`` (least recently used evicted: an idle bucket is a full one)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000):
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, Tuple[float, float]] = OrderedDict()
        self._factors: Dict[str, float] = {}
        self._lock = threading.Lock()

    def take_now(self, key: str, capacity: float, rate: float, cost: float = 1.0) -> Tuple[bool, float]:
        """:meth:`take` without the event loop (the arithmetic is a few float operations under a lock)."""
        with self._lock:
            capacity, rate = _scaled(capacity, rate, self._factors.get(key, 1.0))
            now = self.clock()
            tokens, last = self._buckets.pop(key, (capacity, now))
            tokens, allowed, wait = _refill_and_take(tokens, now - last, capacity, rate, cost)
            self._buckets[key] = (tokens, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            return allowed, wait

    async def take(self, key: str, capacity: float, rate: float, cost: float = 1.0) -> Tuple[bool, float]:
        return self.take_now(key, capacity, rate, cost)

    async def throttle(self, key: str, factor: float) -> None:
        with self._lock:
            self._factors[key] = min(factor, self._factors.get(key, 1.0))

    async def factor(self, key: str) -> float:
        return self._factors.get(key, 1.0)


TOKEN_BUCKET_LUA = """
local capacity, rate, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local factor = tonumber(redis.call('GET', KEYS[2]))
if factor and factor < 1 then capacity = math.max(1, math.floor(capacity * factor)); rate = rate * factor end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(state[1]) or capacity, tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate)
local allowed, wait = 0, 0
if tokens >= cost then tokens = tokens - cost; allowed = 1 else wait = (cost - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(capacity / rate) + 1)
return {allowed, tostring(wait)}
"""


class RedisBucketStorage(BucketStorage):
    """Buckets shared by every replica: one atomic Lua call per request (see the module docstring)."""

    def __init__(self, client, timeout_s: float, prefix: str = PREFIX):
        self.client, self.timeout_s, self.prefix = client, timeout_s, prefix
        self._script = client.register_script(TOKEN_BUCKET_LUA)

    def _keys(self, key: str) -> list:
        return [f"{self.prefix}bucket:{key}", f"{self.prefix}throttle:{key}"]

    async def take(self, key: str, capacity: float, rate: float, cost: float = 1.0) -> Tuple[bool, float]:
        allowed, wait = await redis_call(self._script(keys=self._keys(key), args=[capacity, rate, cost]), self.timeout_s)
        return bool(int(allowed)), float(wait)

    async def throttle(self, key: str, factor: float) -> None:
        current = await self.factor(key)
        await redis_call(self.client.set(self._keys(key)[1], repr(min(factor, current))), self.timeout_s)

    async def factor(self, key: str) -> float:
        value = await redis_call(self.client.get(self._keys(key)[1]), self.timeout_s)
        return float(value) if value is not None else 1.0


class RateLimiter:
    """Per-client buckets of ``burst`` tokens refilled at ``max_qps``; ``throttle`` shrinks one client's."""

    def __init__(self, storage: BucketStorage, max_qps: float, burst: int):
        self.storage = storage
        self.max_qps = float(max_qps)
        self.burst = int(burst)

    async def throttle(self, client: str, factor: float) -> None:
        await self.storage.throttle(client, factor)

    async def limits_for(self, client: str) -> Tuple[float, float]:
        """``(capacity, rate)`` of ``client``'s bucket, its throttle applied."""
        return _scaled(float(self.burst), self.max_qps, await self.storage.factor(client))

    async def check(self, client: str) -> Tuple[bool, int]:
        """``(allowed, retry_after)``: retry_after is whole seconds, at least 1, when refused."""
        allowed, wait = await self.storage.take(client, self.burst, self.max_qps)
        return allowed, 0 if allowed else max(1, math.ceil(wait))
