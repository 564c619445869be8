"""The secure inference service: FastAPI routes inside pure-ASGI audit and body-limit layers.

Why FastAPI on uvicorn: an OpenAPI schema (``/openapi.json``, ``/docs``) for free; pydantic models
document the request and response; any ASGI middleware composes with it, which is how the body limit
counts bytes before the framework reads them; and uvicorn is a mature ASGI server with keep-alive
handling and an h11 parser that this process serves from one asyncio loop, the model running on a
small thread pool so the loop never blocks. (Flask/WSGI would read bodies through a file-like object
with no clean streaming limit and block a worker per request.)

Request path for ``POST /predict``, each guard refusing with a JSON ``{"error", "reason", "detail"}``:

    AuditMiddleware      one JSON line per request, written before the response leaves (fail closed)
    BodyLimitMiddleware  413 past ``body.max_body_bytes`` while streaming (Content-Length, chunked, lies)
    1. auth              401 ``missing_api_key`` / ``invalid_api_key`` (X-API-Key, constant time)
    2. blocked client    403 ``blocked`` (the extraction detector's ``block`` action)
    3. rate limit        429 ``rate_limited`` with ``Retry-After`` (per-client token bucket)
    4. payload + policy  422 ``json`` / ``schema`` / ``shape`` / ``dtype`` / ``non_finite`` / ``range`` /
                         ``variance`` / ``energy``; 503 ``overloaded``; 504 ``timeout``
    5. prediction        200 ``{"label", "probabilities"}`` (rounded or left out: ``output.*``)
    6. detector          alert line + ``flag`` / ``throttle`` / ``block`` (this request then gets 403)

``guards: false`` (the benchmark's baseline) removes the body limit, auth, rate limit, policy, audit
file and detector, keeping only parsing and the thread-pooled forward.
"""

import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Callable, List, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field
from torch import nn

from secure_ml.serving.audit import AuditLog, AuditMiddleware, audit_context, now_iso, sha256_hex
from secure_ml.serving.auth import API_KEY_HEADER, Authenticator
from secure_ml.serving.body_limit import BodyLimitMiddleware
from secure_ml.serving.config import ServeConfig
from secure_ml.serving.errors import ServiceError
from secure_ml.serving.extraction import ExtractionDetector
from secure_ml.serving.inference import InferenceEngine
from secure_ml.serving.metrics import Metrics
from secure_ml.serving.payload import PayloadError, parse_image
from secure_ml.serving.rate_limit import MemoryBucketStorage, RateLimiter, storage_from_uri

logger = logging.getLogger("secure_ml.serving")
ANONYMOUS = "anonymous"
UNAUTHENTICATED = "unauthenticated"  # the shared bucket of requests with a missing or wrong key


class PredictRequest(BaseModel):
    image: List[List[float]] = Field(..., description="28 rows of 28 pixel values in [0, 1] (JSON numbers; NaN/Infinity refused)")


class PredictResponse(BaseModel):
    label: int
    probabilities: Optional[List[float]] = Field(
        None, description="softmax, rounded to output.precision; absent when output.probabilities is false"
    )


class ErrorResponse(BaseModel):
    error: str
    reason: str
    detail: str = ""


ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 403, 408, 413, 422, 429, 503, 504)}


@dataclass
class Service:
    cfg: ServeConfig
    api: FastAPI
    asgi: Callable
    engine: InferenceEngine
    metrics: Metrics
    auth: Optional[Authenticator]
    limiter: Optional[RateLimiter]
    detector: Optional[ExtractionDetector]
    audit: Optional[AuditLog]


def _error_response(exc: ServiceError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def build_service(cfg: ServeConfig, model: nn.Module, policy=None, clock: Optional[Callable[[], float]] = None) -> Service:
    """Wire the guards around ``model``. ``policy``: an InputPolicy (None: no policy); ``clock``: for tests."""
    clock = clock or time.monotonic
    metrics = Metrics()
    auth = Authenticator(*cfg.auth.resolved_keys()) if cfg.guard_on("auth") else None
    limiter = (
        RateLimiter(
            storage_from_uri(cfg.rate_limit.storage, clock, cfg.rate_limit.max_clients), cfg.rate_limit.max_qps, cfg.rate_limit.burst
        )
        if cfg.guard_on("rate_limit")
        else None
    )
    # One shared bucket for refused keys: key guessing and bad-key floods are slowed (429) without touching
    # any valid client's bucket.
    failed_auth = (
        RateLimiter(MemoryBucketStorage(clock=clock, max_keys=1), cfg.auth.failed_qps, cfg.auth.failed_burst) if auth is not None else None
    )
    num_classes = int(list(model.parameters())[-1].shape[0])
    detector = ExtractionDetector(cfg.extraction, num_classes, clock) if cfg.guard_on("extraction") else None
    audit = AuditLog(cfg.audit.path, cfg.audit.alert_path, cfg.audit.fsync) if cfg.guard_on("audit") else None
    engine = InferenceEngine(
        model,
        policy if cfg.guard_on("policy") else None,
        detector,
        cfg.inference.workers,
        cfg.inference.timeout_s,
        cfg.inference.max_pending,
        cfg.model.torch_threads,
    )
    out = cfg.output

    @asynccontextmanager
    async def lifespan(_app):
        yield
        engine.close()

    api = FastAPI(
        title="secure-ml inference",
        version="0.1.0",
        redoc_url=None,
        lifespan=lifespan,
        description="MNIST triage classifier behind size, auth, rate, input and extraction guards.",
    )

    async def on_service_error(_request: Request, exc: ServiceError) -> JSONResponse:  # async: no thread-pool hop
        return _error_response(exc)

    api.add_exception_handler(ServiceError, on_service_error)

    def authenticate(request: Request, admin: bool = False) -> str:
        ctx = audit_context(request.scope)
        if auth is None:
            return ANONYMOUS
        presented = request.headers.get(API_KEY_HEADER)
        client = None if presented is None else (auth.admin(presented) if admin else auth.client(presented))
        if client is None:
            allowed, retry_after = failed_auth.check(UNAUTHENTICATED)
            if not allowed:
                ctx.reject("auth_rate_limited")
                raise ServiceError(
                    429,
                    "rate_limited",
                    "auth_rate_limited",
                    "too many requests with a missing or wrong API key",
                    headers={"Retry-After": str(retry_after)},
                )
        if presented is None:
            ctx.reject("missing_api_key")
            raise ServiceError(
                401, "unauthorized", "missing_api_key", "send an API key in the X-API-Key header", headers={"WWW-Authenticate": "ApiKey"}
            )
        if client is None:
            ctx.reject("invalid_api_key")
            raise ServiceError(
                401,
                "unauthorized",
                "invalid_api_key",
                "the API key is not valid" + (" for /metrics" if admin else ""),
                headers={"WWW-Authenticate": "ApiKey"},
            )
        ctx.client = client
        return client

    def rate_limit(request: Request, client: str) -> None:
        if limiter is None:
            return
        allowed, retry_after = limiter.check(client)
        if not allowed:
            audit_context(request.scope).reject("rate_limited")
            raise ServiceError(
                429,
                "rate_limited",
                "rate_limited",
                f"over the rate limit; retry in {retry_after} s",
                headers={"Retry-After": str(retry_after)},
                extra={"retry_after": retry_after},
            )

    def react(request: Request, client: str, verdict) -> None:
        ctx = audit_context(request.scope)
        ctx.alert = ",".join(verdict.signals)
        action = cfg.extraction.action
        if verdict.new_signals:
            record = {
                "ts": now_iso(),
                "type": "extraction_alert",
                "client": client,
                "signals": verdict.signals,
                "query_index": verdict.query_index,
                "shapiro_w": verdict.w,
                "action": action,
                "request_id": ctx.request_id,
            }
            logger.warning(
                "extraction alert: client %s signals %s at query %d (W=%s), action %s",
                client,
                verdict.signals,
                verdict.query_index,
                verdict.w,
                action,
            )
            if audit is not None:
                try:
                    audit.alert(record)
                except OSError as exc:
                    logger.error("extraction alert log write failed (%s)", exc)
                    raise ServiceError(503, "audit_unavailable", "audit_unavailable", "the alert log cannot be written") from None
        if action == "throttle" and limiter is not None:
            limiter.throttle(client, cfg.extraction.throttle_factor)
        elif action == "block":
            detector.block(client)
            ctx.reject("extraction_suspected")
            raise ServiceError(403, "forbidden", "extraction_suspected", "this client's queries look like model extraction; it is blocked")

    @api.get("/health", summary="Liveness (no auth)")
    async def health():
        return {"status": "ok"}

    @api.get("/metrics", summary="Prometheus metrics (admin key)", response_class=PlainTextResponse, responses=ERRORS)
    async def metrics_endpoint(request: Request):
        client = authenticate(request, admin=True)
        rate_limit(request, client)
        lines = detector.prometheus_lines() if detector is not None else []
        lines += ["# TYPE secure_ml_inference_pending gauge", f"secure_ml_inference_pending {engine.pending}"]
        return PlainTextResponse(metrics.render(lines), media_type="text/plain; version=0.0.4")

    @api.post(
        "/predict",
        summary="Classify one 28x28 digit",
        response_model=PredictResponse,
        response_model_exclude_none=True,
        responses=ERRORS,
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": PredictRequest.model_json_schema()}}}},
    )
    async def predict(request: Request):
        ctx = audit_context(request.scope)
        body = await request.body()
        ctx.input_sha256, ctx.bytes_in = sha256_hex(body), len(body)
        client = authenticate(request)
        if detector is not None and detector.is_blocked(client):
            ctx.reject("blocked")
            raise ServiceError(403, "forbidden", "blocked", "this client is blocked (suspected model extraction)")
        rate_limit(request, client)
        try:
            x = parse_image(body)
        except PayloadError as exc:
            ctx.reject(exc.reason)
            raise ServiceError(422, "invalid_input", exc.reason, exc.detail) from None
        outcome = await engine.run(x, None if auth is None else client)
        if not outcome.allowed:
            ctx.reject(outcome.reason)
            if outcome.reason == "timeout":
                raise ServiceError(504, "timeout", "timeout", "the prediction was abandoned at its deadline")
            raise ServiceError(422, "invalid_input", outcome.reason, outcome.detail)
        if outcome.verdict is not None and outcome.verdict.alarm:
            react(request, client, outcome.verdict)  # under ``block`` this raises: the label never leaves
        ctx.label = outcome.label
        result = {"label": outcome.label}
        if out.probabilities:
            probs = outcome.probabilities.tolist()
            result["probabilities"] = [round(p, out.precision) for p in probs] if out.precision is not None else probs
        return result

    inner = BodyLimitMiddleware(api, cfg.body.max_body_bytes, cfg.body.body_timeout_s) if cfg.guard_on("body") else api
    asgi = AuditMiddleware(inner, audit, metrics)
    return Service(cfg, api, asgi, engine, metrics, auth, limiter, detector, audit)
