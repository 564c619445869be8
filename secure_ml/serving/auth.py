"""API-key authentication (header ``X-API-Key``) with a constant-time check against every key.

Keys come from ``auth.api_keys`` / ``auth.admin_keys`` in serve.yaml and from ``$SECURE_ML_API_KEYS`` /
``$SECURE_ML_ADMIN_KEYS`` (comma-separated). Only SHA-256 digests of the keys are kept. The presented
key is hashed too, so every comparison is between two 32-byte digests (the key's length leaks nothing),
and it is compared with ``hmac.compare_digest`` against *every* stored digest, with no early exit, so
the time taken says neither whether nor which key matched.

The client identity used by the rate limiter, the extraction detector and the audit log is
``client_id(key)``: the first 16 hex digits of the key's SHA-256. The key itself is never stored or logged.
"""

import hashlib
import hmac
from typing import Iterable, List, Optional

API_KEY_HEADER = "x-api-key"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def client_id(key: str) -> str:
    """The public name of a client: a hash of its key (what logs and metrics show)."""
    return _digest(key).hex()[:16]


class KeyRing:
    """A set of key digests; ``match`` returns the client id or None in time independent of the keys."""

    def __init__(self, keys: Iterable[str]):
        self._digests: List[bytes] = [_digest(k) for k in keys]

    def match(self, presented: Optional[str]) -> Optional[str]:
        if presented is None:
            return None
        candidate = _digest(presented)
        found = False
        for stored in self._digests:  # no break: always walk every key
            found |= hmac.compare_digest(candidate, stored)
        return candidate.hex()[:16] if found else None


class Authenticator:
    """Client keys may call /predict; admin keys may read /metrics."""

    def __init__(self, api_keys: Iterable[str], admin_keys: Iterable[str] = ()):
        self.clients = KeyRing(api_keys)
        self.admins = KeyRing(admin_keys)

    def client(self, presented: Optional[str]) -> Optional[str]:
        return self.clients.match(presented)

    def admin(self, presented: Optional[str]) -> Optional[str]:
        return self.admins.match(presented)
