"""How the service refuses: ``ServiceError`` (raised by a guard) and ``error_response`` (the one JSON error body).

Every refusal, from a middleware or a route, is ``{"error", "reason", "detail"}`` (plus ``extra``
fields) built by :func:`error_response`. ``detail`` says what failed in words chosen here, never a
server path, an OS error, a statistic of the model or a limit of the input policy.
"""

from typing import Dict, Optional

from starlette.responses import JSONResponse


def error_response(
    status: int,
    error: str,
    reason: str,
    detail: str = "",
    headers: Optional[Dict[str, str]] = None,
    extra: Optional[Dict] = None,
    close: bool = False,
) -> JSONResponse:
    """The JSON error response; ``close`` adds ``Connection: close`` (the body was not read to its end)."""
    headers = dict(headers or {})
    if close:
        headers["Connection"] = "close"
    return JSONResponse({"error": error, "reason": reason, "detail": detail, **(extra or {})}, status_code=status, headers=headers)


class ServiceError(Exception):
    """A refusal: HTTP ``status`` and the fields of :func:`error_response`."""

    def __init__(
        self, status: int, error: str, reason: str, detail: str = "", headers: Optional[Dict[str, str]] = None, extra: Optional[Dict] = None
    ):
        super().__init__(detail or reason)
        self.status, self.error, self.reason, self.detail = status, error, reason, detail
        self.headers = headers or {}
        self.extra = extra or {}

    def response(self, close: bool = False) -> JSONResponse:
        return error_response(self.status, self.error, self.reason, self.detail, self.headers, self.extra, close)
