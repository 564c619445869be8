"""Clients blocked by the extraction detector (``extraction.action: block``): in memory, or in Redis for every replica.

Under ``memory://`` the blocks die with the process (a restart, a rolling key rotation, a crash lifts every one) unless
``extraction.block_file`` names a file (:class:`FileBlockList`): each block is appended there as one JSON line
(``{"client": <key id>, "until": <Unix time or null>}``, key ids only, never keys) and synced, and a service started on the
same file refuses those clients until their blocks expire.

With ``rate_limit.storage: redis://...`` a block decided on one replica is a Redis key
(``secure_ml:block:<client>``, expiring after ``extraction.block_seconds``) that every replica checks
before reading a request's body, so the blocked key gets 403 wherever it is routed. A Redis failure
raises ``StoreUnavailable`` (the request fails closed with 503). The detection itself stays
per replica (see ``extraction_detector``).
"""

import json
import logging
import math
import os
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, Dict, Optional

from secure_ml.errors import ConfigError
from secure_ml.serving.rate_limit import PREFIX, redis_call

logger = logging.getLogger("secure_ml.serving")


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


class FileBlockList(MemoryBlockList):
    """:class:`MemoryBlockList` kept in ``path`` across restarts; ``wall`` is the Unix clock the file's expiries use.

    Start-up reads the file, keeps the blocks that have not expired and rewrites it with only those (atomically), so it
    grows with the blocks of one run at most; a file that cannot be read, written or parsed is refused in one line before
    the service listens (skipping a line it cannot read could lift a block). A block whose line cannot be written still
    holds in this process; the failure is logged. One file per process: replicas share blocks through Redis.
    """

    def __init__(self, path: str, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time):
        super().__init__(clock)
        self.path, self.wall = Path(path).expanduser(), wall
        active = {client: until for client, until in self._read().items() if until is None or until > wall()}
        try:
            tmp = self.path.with_name(self.path.name + ".tmp")
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as f:
                f.writelines(_line(c, u) for c, u in active.items())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            raise ConfigError(f"serve.yaml: extraction.block_file: cannot write {self.path} ({type(exc).__name__})") from None
        for client, until in active.items():
            self._issued[client] = math.inf if until is None else clock() + (until - wall())

    def _read(self) -> Dict[str, Optional[float]]:
        """client → Unix expiry (None: never) of every line; the latest line of a client wins (a renewed block)."""
        try:
            text = self.path.read_text(encoding="utf-8") if self.path.exists() else ""
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"serve.yaml: extraction.block_file: cannot read {self.path} ({type(exc).__name__})") from None
        out: Dict[str, Optional[float]] = {}
        for number, line in enumerate(text.splitlines(), 1):
            try:
                record = json.loads(line)
                client, until = record["client"], record["until"]
                if not isinstance(client, str) or not (until is None or (isinstance(until, (int, float)) and math.isfinite(until))):
                    raise ValueError
            except (ValueError, KeyError, TypeError):
                raise ConfigError(
                    f"serve.yaml: extraction.block_file: line {number} of {self.path} is not a block record "
                    '({"client": ..., "until": <Unix time or null>}); fix or remove it (no block is lifted unread)'
                ) from None
            out[client] = None if until is None else float(until)
        return out

    async def block(self, client: str, seconds: float) -> None:
        await super().block(client, seconds)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, _line(client, None if seconds == 0 else self.wall() + seconds).encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:  # the block holds in this process; a restart would lift it
            logger.error("extraction.block_file write failed (%s): client %s is blocked until a restart only", type(exc).__name__, client)


def _line(client: str, until: Optional[float]) -> str:
    return json.dumps({"client": client, "until": until}) + "\n"


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
