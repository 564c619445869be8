"""Per-client token-bucket rate limiting behind a swappable storage interface.

Why not a ``limits`` strategy: ``limits`` 5.8 offers fixed-window, moving-window and sliding-window-
counter limiters, and a ``RateLimitItem`` is "N per k seconds" with whole-second granularity. None is a
token bucket: the seed's intent (sustained 100 QPS, burst 10) would need "10 per 0.1 s", which cannot be
expressed, and "100 per second" lets a client fire 100 requests back to back. So the bucket is ours,
about thirty lines, with ``tokens = min(capacity, tokens + elapsed * rate)`` and a ``Retry-After`` of
``ceil((cost - tokens) / rate)`` seconds (at least 1).

Storage interface (``BucketStorage.take``): one atomic "refill, then take ``cost`` tokens if there are
enough" per call. ``MemoryBucketStorage`` is the default (one process; an injectable clock makes tests
deterministic). ``RedisBucketStorage`` is how replicas share limits: the same arithmetic as a Lua script
run atomically inside Redis (time from ``redis.call('TIME')``, so replica clocks don't matter), with the
connection built by ``limits``'s own ``RedisStorage`` from the URI (``redis://``, ``rediss://``,
``redis+unix://``, ``valkey://``). Select it with ``rate_limit.storage: redis://host:6379/0``; it needs
the ``redis`` package, which is not a dependency and is not exercised by the tests.
"""

import math
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from typing import Callable, Dict, Tuple

from secure_ml.errors import ConfigError


class BucketStorage(ABC):
    @abstractmethod
    def take(self, key: str, capacity: float, rate: float, cost: float = 1.0) -> Tuple[bool, float]:
        """Refill ``key``'s bucket, take ``cost`` if available: ``(allowed, seconds until cost tokens exist)``."""


def _refill_and_take(tokens: float, elapsed: float, capacity: float, rate: float, cost: float) -> Tuple[float, bool, float]:
    tokens = min(capacity, tokens + max(0.0, elapsed) * rate)
    if tokens >= cost:
        return tokens - cost, True, 0.0
    return tokens, False, (cost - tokens) / rate


class MemoryBucketStorage(BucketStorage):
    """In-process buckets; at most ``max_keys`` (least recently used evicted: an idle bucket is a full one)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000):
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, Tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str, capacity: float, rate: float, cost: float = 1.0) -> Tuple[bool, float]:
        with self._lock:
            now = self.clock()
            tokens, last = self._buckets.pop(key, (capacity, now))
            tokens, allowed, wait = _refill_and_take(tokens, now - last, capacity, rate, cost)
            self._buckets[key] = (tokens, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            return allowed, wait


TOKEN_BUCKET_LUA = """
local key, capacity, rate, cost = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local state = redis.call('HMGET', key, 'tokens', 'ts')
local tokens, ts = tonumber(state[1]) or capacity, tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate)
local allowed, wait = 0, 0
if tokens >= cost then tokens = tokens - cost; allowed = 1 else wait = (cost - tokens) / rate end
redis.call('HSET', key, 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', key, math.ceil(capacity / rate) + 1)
return {allowed, tostring(wait)}
"""


class RedisBucketStorage(BucketStorage):
    """Shared buckets in Redis (one Lua call per request); see the module docstring."""

    def __init__(self, uri: str, prefix: str = "secure_ml:bucket:"):
        try:
            from limits.storage import storage_from_string

            self._conn = storage_from_string(uri).get_connection()
        except Exception as exc:  # limits raises ConfigurationError when redis-py is missing
            raise ConfigError(f"serve.yaml: rate_limit.storage: cannot use {uri!r} ({exc})") from None
        self._script = self._conn.register_script(TOKEN_BUCKET_LUA)
        self.prefix = prefix

    def take(self, key: str, capacity: float, rate: float, cost: float = 1.0) -> Tuple[bool, float]:
        allowed, wait = self._script(keys=[self.prefix + key], args=[capacity, rate, cost])
        return bool(int(allowed)), float(wait)


def storage_from_uri(uri: str, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000) -> BucketStorage:
    if uri.startswith("memory://"):
        return MemoryBucketStorage(clock=clock, max_keys=max_keys)
    return RedisBucketStorage(uri)


class RateLimiter:
    """Per-client buckets of ``burst`` tokens refilled at ``max_qps``; ``throttle`` shrinks one client's."""

    def __init__(self, storage: BucketStorage, max_qps: float, burst: int):
        self.storage = storage
        self.max_qps = float(max_qps)
        self.burst = int(burst)
        self._factors: Dict[str, float] = {}

    def throttle(self, client: str, factor: float) -> None:
        self._factors[client] = min(factor, self._factors.get(client, 1.0))

    def limits_for(self, client: str) -> Tuple[float, float]:
        f = self._factors.get(client, 1.0)
        return max(1.0, math.floor(self.burst * f)), self.max_qps * f

    def check(self, client: str) -> Tuple[bool, int]:
        """``(allowed, retry_after)``: retry_after is whole seconds, at least 1, when refused."""
        capacity, rate = self.limits_for(client)
        allowed, wait = self.storage.take(client, capacity, rate)
        return allowed, 0 if allowed else max(1, math.ceil(wait))
