"""Clients blocked by the extraction detector (``extraction.action: block``): in memory, or in Redis for every replica.

With ``rate_limit.storage: redis://...`` a block decided on one replica is a Redis key
(``secure_ml:block:<client>``, expiring after ``extraction.block_seconds``) that every replica checks
before reading a request's body, so the blocked key gets 403 wherever it is routed. A Redis failure
raises ``StoreUnavailable`` (the request fails closed with 503). The detection itself stays
per replica (see ``extraction_detector``).
"""

import math
import threading
import time
from abc import ABC, abstractmethod
from typing import Callable, Dict

from secure_ml.serving.rate_limit import PREFIX, redis_call


class BlockList(ABC):
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._issued: Dict[str, float] = {}  # blocks this replica decided: client -> expiry (for the metric)
        self._lock = threading.Lock()

    def _remember(self, client: str, seconds: float) -> None:
        with self._lock:
            self._issued[client] = math.inf if seconds == 0 else self.clock() + seconds

    def issued_active(self) -> int:
        """Blocks decided by this replica that have not expired (``secure_ml_extraction_blocked_clients``)."""
        now = self.clock()
        with self._lock:
            for client in [c for c, until in self._issued.items() if until <= now]:
                del self._issued[client]
            return len(self._issued)

    @abstractmethod
    async def block(self, client: str, seconds: float) -> None:
        """Refuse ``client`` for ``seconds`` (0: no expiry)."""

    @abstractmethod
    async def is_blocked(self, client: str) -> bool: ...


class MemoryBlockList(BlockList):
    async def block(self, client: str, seconds: float) -> None:
        self._remember(client, seconds)

    async def is_blocked(self, client: str) -> bool:
        now = self.clock()
        with self._lock:
            until = self._issued.get(client)
            if until is not None and now >= until:
                del self._issued[client]
                return False
            return until is not None


class RedisBlockList(BlockList):
    def __init__(self, client, timeout_s: float, prefix: str = PREFIX, clock: Callable[[], float] = time.monotonic):
        super().__init__(clock)
        self.client, self.timeout_s, self.prefix = client, timeout_s, prefix

    async def block(self, client: str, seconds: float) -> None:
        ttl_ms = None if seconds == 0 else max(1, int(seconds * 1000))
        await redis_call(self.client.set(f"{self.prefix}block:{client}", "1", px=ttl_ms), self.timeout_s)
        self._remember(client, seconds)

    async def is_blocked(self, client: str) -> bool:
        return bool(await redis_call(self.client.exists(f"{self.prefix}block:{client}"), self.timeout_s))
