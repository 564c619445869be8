"""The secure inference service: FastAPI routes inside three pure-ASGI layers, and the one statement of the guard order.

Why FastAPI on uvicorn: pydantic models document the request and response (``/docs`` when
``server.docs`` is on); any ASGI middleware composes with it, which is how the gate and the body limit
act before the framework reads a byte of the body; and uvicorn is a mature ASGI server that serves
from one asyncio loop, the model running on a small thread pool so the loop never blocks.

Guard order for every request except the public ``/health`` and ``/ready`` (and ``/docs``, ``/openapi.json`` when on);
each refusal is ``errors.error_response``'s JSON ``{"error", "reason", "detail"}`` (see :data:`GUARD_ORDER`):

1. request log: one JSON line per request, written before the response leaves; 503 ``audit_unavailable`` if not
2. API key (headers only, before any body byte): 401 ``missing_api_key`` / ``invalid_api_key``; 429 ``auth_rate_limited``
3. blocked client: 403 ``blocked`` (the detector's ``block``; every replica sees it through Redis)
4. rate limit: 429 ``rate_limited`` + ``Retry-After``; 503 ``limits_unavailable`` when Redis fails (fail closed)
5. body limit: 413 ``body_too_large`` / 408 ``body_timeout`` / 400 ``content_length_mismatch`` while streaming
6. payload: 422 ``json`` / ``schema`` / ``shape`` / ``dtype`` / ``non_finite`` / ``range``
7. input policy: 422 ``range`` / ``variance`` / ``energy`` / ``reconstruction`` (the check's name, never a statistic or a limit); 503 / 504
8. prediction: 200 ``{"label", "probabilities"}`` (rounded or left out: ``output.*``)
9. extraction detector: alert line, then ``flag`` / ``throttle`` / ``block`` (403 ``extraction_suspected``)

``guards: false`` (the benchmark's baseline) keeps only the request parsing and the thread-pooled forward.
"""

import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Callable, Optional

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp
from torch import nn

from secure_ml.errors import ConfigError
from secure_ml.serving.auth import Authenticator
from secure_ml.serving.blocklist import BlockList, FileBlockList, MemoryBlockList, RedisBlockList
from secure_ml.serving.errors import ServiceError, error_response
from secure_ml.serving.extraction_detector import ExtractionDetector
from secure_ml.serving.inference import InferenceEngine
from secure_ml.serving.metrics import CONTENT_TYPE, Metrics, detector_source, gauge
from secure_ml.serving.middleware import BodyLimitMiddleware, ClientGateMiddleware, RequestLogMiddleware
from secure_ml.serving.payload import PayloadError, parse_image
from secure_ml.serving.rate_limit import MemoryBucketStorage, RateLimiter, RedisBucketStorage, StoreUnavailable, redis_client
from secure_ml.serving.readiness import Readiness
from secure_ml.serving.request_log import RequestLog, now_iso, request_context, sha256_hex
from secure_ml.serving.schemas import ERRORS, POLICY_DETAIL, ErrorResponse, PredictRequest, PredictResponse
from secure_ml.serving.settings import ServeConfig

logger = logging.getLogger("secure_ml.serving")

GUARD_ORDER = (
    "request log",
    "API key",
    "blocked client",
    "rate limit",
    "body limit",
    "payload",
    "input policy",
    "prediction",
    "extraction detector",
)
DOCS_PATHS = ("/docs", "/docs/oauth2-redirect", "/openapi.json")


@dataclass
class Service:
    cfg: ServeConfig
    api: FastAPI
    asgi: ASGIApp
    engine: InferenceEngine
    metrics: Metrics
    auth: Optional[Authenticator]
    limiter: Optional[RateLimiter]
    blocklist: Optional[BlockList]
    detector: Optional[ExtractionDetector]
    log: Optional[RequestLog]


def _stores(cfg: ServeConfig, clock: Callable[[], float]):
    """``(bucket storage, block list, redis client or None)`` for ``rate_limit.storage``."""
    rl = cfg.rate_limit
    if rl.storage.startswith("memory://"):
        path = cfg.extraction.block_file
        blocks = FileBlockList(path, clock) if path is not None and cfg.extraction.action == "block" else MemoryBlockList(clock)
        return MemoryBucketStorage(clock=clock, max_keys=rl.max_clients), blocks, None
    try:
        client = redis_client(rl.storage, rl.redis_timeout_s)
    except (ImportError, ValueError) as exc:
        raise ConfigError(f"serve.yaml: rate_limit.storage: cannot use {rl.storage!r} ({type(exc).__name__})") from None
    return RedisBucketStorage(client, rl.redis_timeout_s), RedisBlockList(client, rl.redis_timeout_s, clock=clock), client


def build_service(
    cfg: ServeConfig, model: nn.Module, policy=None, clock: Optional[Callable[[], float]] = None, num_classes: int = 10
) -> Service:
    """Wire the guards around ``model``. ``policy``: an InputPolicy (None: no policy); ``clock``: for tests."""
    clock = clock or time.monotonic
    storage, blocks, redis = _stores(cfg, clock)
    auth = Authenticator(*cfg.auth.resolved_keys()) if cfg.guard_on("auth") else None
    limiter = RateLimiter(storage, cfg.rate_limit.max_qps, cfg.rate_limit.burst) if cfg.guard_on("rate_limit") else None
    # One bucket (per replica) for refused keys: key guessing is slowed (429) without touching any valid client's bucket.
    failed_auth = RateLimiter(MemoryBucketStorage(clock=clock, max_keys=1), cfg.auth.failed_qps, cfg.auth.failed_burst) if auth else None
    detector = ExtractionDetector(cfg.extraction, num_classes, clock) if cfg.guard_on("extraction") else None
    blocklist = blocks if detector is not None and cfg.extraction.action == "block" else None
    uses_redis = redis is not None and (limiter is not None or blocklist is not None)
    readiness = Readiness(redis.ping if uses_redis else None, cfg.rate_limit.redis_timeout_s, clock)
    log = RequestLog(cfg.audit.path, cfg.audit.alert_path, cfg.audit.fsync) if cfg.guard_on("audit") else None
    engine = InferenceEngine(
        model,
        policy if cfg.guard_on("policy") else None,
        detector,
        cfg.inference.workers,
        cfg.inference.timeout_s,
        cfg.inference.max_pending,
        cfg.model.torch_threads,
    )
    metrics = Metrics()
    metrics.add_source(gauge("secure_ml_inference_pending", "Jobs queued or running on the inference threads.", lambda: engine.pending))
    if detector is not None:
        metrics.add_source(detector_source(detector.snapshot))
        metrics.add_source(
            gauge("secure_ml_extraction_blocked_clients", "Clients this replica blocked (still blocked).", blocks.issued_active)
        )
    out, ext = cfg.output, cfg.extraction

    @asynccontextmanager
    async def lifespan(_app):
        yield
        engine.close()
        if redis is not None:
            await redis.aclose()

    docs = cfg.server.docs
    api = FastAPI(
        title="secure-ml inference",
        version="0.1.0",
        docs_url="/docs" if docs else None,
        openapi_url="/openapi.json" if docs else None,
        redoc_url=None,
        lifespan=lifespan,
        description="Digit classifier behind key, rate, size, input and extraction guards.",
    )

    async def on_service_error(_request: Request, exc: ServiceError) -> Response:  # async: no thread-pool hop
        return exc.response()

    async def on_http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        reason = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, f"http_{exc.status_code}")
        return error_response(exc.status_code, reason, reason, headers=getattr(exc, "headers", None))

    async def on_unhandled(_request: Request, _exc: Exception) -> Response:  # a bug or a failing model: no text of it leaves
        return error_response(500, "internal_error", "internal_error", "the server failed on this request")

    api.add_exception_handler(ServiceError, on_service_error)
    api.add_exception_handler(StarletteHTTPException, on_http_error)
    api.add_exception_handler(Exception, on_unhandled)

    async def react(request: Request, client: str, verdict) -> None:
        """The detector's alarm: alert line (on onset), then the configured action."""
        ctx = request_context(request.scope)
        ctx.alert = ",".join(verdict.signals)
        if verdict.new_signals:
            record = {
                "ts": now_iso(),
                "type": "extraction_alert",
                "client": client,
                "signals": verdict.signals,
                "query_index": verdict.query_index,
                "shapiro_w": verdict.w,
                "action": ext.action,
                "request_id": ctx.request_id,
            }
            logger.warning(
                "extraction alert: client %s signals %s at query %d, action %s", client, verdict.signals, verdict.query_index, ext.action
            )
            if log is not None:
                try:
                    log.alert(record)
                except OSError as exc:
                    logger.error("extraction alert log write failed (%s)", type(exc).__name__)
                    raise ServiceError(503, "audit_unavailable", "audit_unavailable", "the alert log cannot be written") from None
        try:
            if ext.action == "throttle":
                await limiter.throttle(client, ext.throttle_factor)
            elif ext.action == "block":
                await blocklist.block(client, ext.block_seconds)
        except StoreUnavailable:
            raise ServiceError(503, "unavailable", "limits_unavailable", "the rate-limit store is unavailable; retry later") from None
        if ext.action == "block":
            raise ServiceError(403, "forbidden", "extraction_suspected", "this client's queries look like model extraction; it is blocked")

    @api.api_route("/health", methods=["GET", "HEAD"], summary="Liveness (no key)")
    async def health():
        return {"status": "ok"}

    probe = {"methods": ["GET", "HEAD"], "responses": {503: {"model": ErrorResponse}}}  # HEAD: some load balancers probe so

    @api.api_route("/ready", summary="Readiness (no key): 503 while the rate-limit store is down", **probe)
    async def ready():
        reason = await readiness.check()
        if reason is not None:
            raise ServiceError(503, "unavailable", reason, "the rate-limit store is unavailable; retry later", {"Retry-After": "1"})
        return {"status": "ready"}

    @api.get("/metrics", summary="Prometheus metrics (admin key)", responses=ERRORS)
    async def metrics_endpoint():
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @api.post(
        "/predict",
        summary="Classify one 28x28 digit",
        response_model=PredictResponse,
        response_model_exclude_none=True,
        responses=ERRORS,
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": PredictRequest.model_json_schema()}}}},
    )
    async def predict(request: Request):
        ctx = request_context(request.scope)
        body = await request.body()
        ctx.input_sha256, ctx.bytes_in = sha256_hex(body), len(body)
        try:
            x = parse_image(body)
        except PayloadError as exc:
            ctx.reject(exc.reason)
            raise ServiceError(422, "invalid_input", exc.reason, exc.detail) from None
        outcome = await engine.run(x, ctx.client if detector is not None else None)
        if not outcome.allowed:
            ctx.reject(outcome.reason)
            if outcome.reason == "timeout":
                raise ServiceError(504, "timeout", "timeout", "the prediction was abandoned at its deadline")
            raise ServiceError(
                422, "invalid_input", outcome.reason, POLICY_DETAIL.get(outcome.reason, "the input policy refused the image")
            )
        if outcome.verdict is not None and outcome.verdict.alarm:
            await react(request, ctx.client, outcome.verdict)  # under ``block`` this raises: the label never leaves
        ctx.label = outcome.label
        result = {"label": outcome.label}
        if out.probabilities:
            probs = outcome.probabilities.tolist()
            result["probabilities"] = [round(p, out.precision) for p in probs] if out.precision is not None else probs
        return result

    asgi: ASGIApp = BodyLimitMiddleware(api, cfg.body.max_body_bytes, cfg.body.body_timeout_s) if cfg.guard_on("body") else api
    if auth is not None or limiter is not None or blocklist is not None:
        public = frozenset(("/health", "/ready", *(DOCS_PATHS if docs else ())))
        asgi = ClientGateMiddleware(asgi, auth, failed_auth, blocklist, limiter, public, frozenset({"/metrics"}))
    asgi = RequestLogMiddleware(asgi, log, metrics)
    return Service(cfg, api, asgi, engine, metrics, auth, limiter, blocklist, detector, log)
