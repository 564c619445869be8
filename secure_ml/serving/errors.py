"""``ServiceError``: a refusal with its HTTP status and JSON body, raised by any guard and rendered by the app."""

from typing import Dict, Optional


class ServiceError(Exception):
    """``status`` and a JSON body ``{"error": ..., "reason": ..., "detail": ...}`` (plus ``extra`` fields)."""

    def __init__(
        self, status: int, error: str, reason: str, detail: str = "", headers: Optional[Dict[str, str]] = None, extra: Optional[Dict] = None
    ):
        super().__init__(detail or reason)
        self.status = status
        self.error = error
        self.reason = reason
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> Dict:
        return {"error": self.error, "reason": self.reason, "detail": self.detail, **self.extra}
