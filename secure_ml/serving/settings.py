"""The typed ``serve.yaml``: one dataclass per section, each validating itself in ``__post_init__``.

Types are checked by pydantic (already loaded by FastAPI): the ``Strict*`` annotations refuse ``"10"``
or ``true`` where a number belongs, and unknown keys are refused. Ranges, and the combinations that
would leave a guard switched on but doing nothing (item 10 of issue 9), are checked in each section's
``__post_init__``. Every failure is one line that names the option: ``serve.yaml: rate_limit.burst: must be > 0, got -1``
(pydantic's errors: :mod:`secure_ml.serving.config_loading`). Keys may also come from ``$SECURE_ML_API_KEYS`` / ``..._ADMIN_KEYS``.
"""

import os
from dataclasses import field
from typing import Any, Callable, List, Literal, Optional, Sequence, Tuple

from pydantic import ConfigDict, StrictBool, StrictFloat, StrictInt, StrictStr
from pydantic.dataclasses import dataclass

from secure_ml.errors import ConfigError

API_KEYS_ENV = "SECURE_ML_API_KEYS"
ADMIN_KEYS_ENV = "SECURE_ML_ADMIN_KEYS"
# allow_inf_nan=False: an infinite limit (``.inf`` in YAML) would leave its guard on but doing nothing (no timeout, no rate
# limit), and NaN compares false with everything; both are refused as "input should be a finite number".
SECTION = ConfigDict(extra="forbid", allow_inf_nan=False)


def _check(section: str, obj: Any, names: Sequence[str], ok: Callable[[Any], bool], rule: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and not ok(value):
            raise ConfigError(f"serve.yaml: {section}.{name}: must be {rule}, got {value!r}")


def _positive(section: str, obj: Any, *names: str) -> None:
    _check(section, obj, names, lambda v: v > 0, "> 0")


def _unit(section: str, obj: Any, *names: str) -> None:
    _check(section, obj, names, lambda v: 0 < v <= 1, "in (0, 1]")


@dataclass(config=SECTION)
class ServerConfig:
    host: StrictStr = "127.0.0.1"  # listen address; --host overrides
    port: StrictInt = 8000  # 0 = any free port; --port overrides
    limit_concurrency: StrictInt = 128  # open connections + tasks beyond this get uvicorn's 503 (never unbounded)
    timeout_keep_alive_s: StrictFloat = 5.0  # idle keep-alive connections are closed after this
    docs: StrictBool = False  # serve /docs and /openapi.json (without a key: they describe the API, not the model)

    def __post_init__(self) -> None:
        _positive("server", self, "limit_concurrency", "timeout_keep_alive_s")
        _check("server", self, ("port",), lambda v: 0 <= v <= 65535, "in 0..65535")


@dataclass(config=SECTION)
class ModelConfig:
    device: StrictStr = "auto"  # auto | cpu | cuda | cuda:N | mps
    torch_threads: Optional[StrictInt] = 1  # intra-op threads; None leaves torch's default

    def __post_init__(self) -> None:
        _positive("model", self, "torch_threads")


@dataclass(config=SECTION)
class BodyLimitConfig:
    enabled: StrictBool = True
    max_body_bytes: StrictInt = 65536  # counted while streaming; beyond it 413
    body_timeout_s: StrictFloat = 10.0  # a body that trickles in slower than this gets 408

    def __post_init__(self) -> None:
        _positive("body", self, "max_body_bytes", "body_timeout_s")


@dataclass(config=SECTION)
class AuthConfig:
    enabled: StrictBool = True
    api_keys: List[StrictStr] = field(default_factory=list)  # may call /predict (plus $SECURE_ML_API_KEYS)
    admin_keys: List[StrictStr] = field(default_factory=list)  # may read /metrics (plus $SECURE_ML_ADMIN_KEYS)
    min_key_length: StrictInt = 16
    failed_qps: StrictFloat = 20.0  # refused-key requests (all clients together, per replica) refilled per second
    failed_burst: StrictInt = 50  # bucket of refused-key requests; beyond it 429 instead of 401

    def __post_init__(self) -> None:
        _positive("auth", self, "min_key_length", "failed_qps", "failed_burst")

    def resolved_keys(self) -> Tuple[List[str], List[str]]:
        """Config keys plus the environment's, de-duplicated, order kept."""
        return _with_env(self.api_keys, API_KEYS_ENV), _with_env(self.admin_keys, ADMIN_KEYS_ENV)


def _with_env(keys: List[str], env: str) -> List[str]:
    return list(dict.fromkeys([*keys, *(k.strip() for k in os.environ.get(env, "").split(",") if k.strip())]))


@dataclass(config=SECTION)
class RateLimitConfig:
    enabled: StrictBool = True
    max_qps: StrictFloat = 100.0  # sustained refill rate per client, tokens per second (the seed's max_qps)
    burst: StrictInt = 10  # bucket capacity per client (the seed's burst)
    storage: StrictStr = "memory://"  # or redis://host:6379/0: buckets, throttles and blocks shared by every replica
    max_clients: StrictInt = 100_000  # memory storage: idle buckets beyond this are evicted (LRU)
    redis_timeout_s: StrictFloat = 0.5  # a Redis call slower than this fails the request closed (503)

    def __post_init__(self) -> None:
        _positive("rate_limit", self, "max_qps", "burst", "max_clients", "redis_timeout_s")
        if not self.storage.startswith(("memory://", "redis://", "rediss://", "unix://")):
            raise ConfigError(f"serve.yaml: rate_limit.storage: {self.storage!r} is neither memory:// nor a redis:// URI")

    @property
    def shared(self) -> bool:
        """Buckets, throttles and blocks kept in Redis (shared by replicas, outliving a restart), not in the process."""
        return not self.storage.startswith("memory://")


@dataclass(config=SECTION)
class PolicyConfig:
    enabled: StrictBool = True
    file: Optional[StrictStr] = None  # JSON from InputPolicy.to_dict(); when set, everything below is ignored
    from_checkpoint: StrictBool = True  # use the policy stored in the release artifact / checkpoint, when there is one
    min_value: StrictFloat = 0.0
    max_value: StrictFloat = 1.0
    max_variance: Optional[StrictFloat] = 0.22  # per-image pixel variance; None = unchecked
    max_energy: Optional[StrictFloat] = None  # L2 activation energy (sponge inputs); None = unchecked
    max_density: Optional[StrictFloat] = None  # share of non-zero activations; None = unchecked
    calibrate: StrictBool = (
        False  # set the activation limits at start-up from the TEST split of calibration_data_dir (pixel limits as written)
    )
    calibration_data_dir: Optional[StrictStr] = None  # MNIST folder; only its held-out test split (t10k) is read
    calibration_samples: StrictInt = 2000
    false_positive_rate: StrictFloat = 0.005  # share of clean digits the calibrated limits may reject

    def __post_init__(self) -> None:
        _positive("policy", self, "max_variance", "max_energy", "max_density", "calibration_samples")
        _check("policy", self, ("false_positive_rate",), lambda v: 0 < v < 1, "in (0, 1)")
        if self.min_value >= self.max_value:
            raise ConfigError("serve.yaml: policy.min_value must be below policy.max_value")
        if self.calibrate and self.file is not None:
            raise ConfigError("serve.yaml: policy.calibrate is true but policy.file is set and would win; keep one of them")
        if self.calibrate and self.calibration_data_dir is None:
            raise ConfigError("serve.yaml: policy.calibrate is true but policy.calibration_data_dir is not set")


@dataclass(config=SECTION)
class InferenceConfig:
    timeout_s: StrictFloat = 2.0  # policy check + forward + detector, queue wait included; beyond it 504
    workers: StrictInt = 1  # inference threads
    max_pending: StrictInt = 64  # jobs queued or running beyond this get 503

    def __post_init__(self) -> None:
        _positive("inference", self, "timeout_s", "workers", "max_pending")


@dataclass(config=SECTION)
class OutputConfig:
    probabilities: StrictBool = True  # false: only the label (against membership inference / extraction)
    precision: Optional[StrictInt] = 2  # decimals kept; None = full float precision

    def __post_init__(self) -> None:
        _check("output", self, ("precision",), lambda v: 0 <= v <= 8, "in 0..8 or null")


@dataclass(config=SECTION)
class AuditConfig:
    enabled: StrictBool = True
    path: StrictStr = "serve-audit.jsonl"  # the request log: one JSON line per request; a failed write fails it (503)
    alert_path: Optional[StrictStr] = None  # extraction alerts; None = "<path stem>.alerts.jsonl"
    fsync: StrictBool = False


@dataclass(config=SECTION)
class ExtractionConfig:
    enabled: StrictBool = True
    action: Literal["flag", "throttle", "block"] = "block"
    min_distances: StrictInt = 200  # PRADA's N: distances gathered before Shapiro-Wilk is tested
    delta: StrictFloat = 0.92  # PRADA's threshold on W
    window: StrictInt = 1000  # distances kept per client (the tested sample)
    max_queries_per_client: StrictInt = 1000  # stored past queries per client (uint8, 784 B each)
    max_clients: StrictInt = 256  # clients tracked at once (LRU); memory <= max_clients * max_queries * 784 B
    throttle_factor: StrictFloat = 0.1  # throttle: the client's QPS and burst are multiplied by this
    block_seconds: StrictFloat = 3600.0  # block: how long the client gets 403; 0 = no expiry
    block_file: Optional[StrictStr] = None  # memory:// storage: blocks kept in this file across restarts (redis:// keeps them)
    rate_window_s: StrictFloat = 60.0
    rate_max_queries: Optional[StrictInt] = None  # rate signal: more queries than this per window; None = off
    low_confidence: StrictFloat = 0.5  # novelty signal: a query whose top probability is below this is "novel"
    novelty_window: StrictInt = 200
    novelty_max_fraction: Optional[StrictFloat] = None  # novelty signal fires above this fraction; None = off

    def __post_init__(self) -> None:
        _positive("extraction", self, "min_distances", "window", "max_queries_per_client", "max_clients")
        _positive("extraction", self, "rate_window_s", "rate_max_queries", "novelty_window")
        _unit("extraction", self, "delta", "throttle_factor", "low_confidence", "novelty_max_fraction")
        _check("extraction", self, ("block_seconds",), lambda v: v >= 0, ">= 0")
        if self.window < self.min_distances:
            raise ConfigError("serve.yaml: extraction.window must be >= extraction.min_distances")


@dataclass(config=SECTION)
class ServeConfig:
    guards: StrictBool = True  # master switch: false turns off body limit, auth, rate limit, policy, audit, detector
    server: ServerConfig = field(default_factory=ServerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    body: BodyLimitConfig = field(default_factory=BodyLimitConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    extraction: ExtractionConfig = field(default_factory=ExtractionConfig)

    def __post_init__(self) -> None:
        """Refuse guards that are on but could never act (issue 9, item 10)."""
        if self.guard_on("extraction") and not self.guard_on("auth"):
            raise ConfigError(
                "serve.yaml: extraction.enabled: the detector tells clients apart by API key, but auth is off, so it would "
                "see no client; turn auth on or set extraction.enabled: false"
            )
        if self.extraction.block_file is not None and (self.rate_limit.shared or self.extraction.action != "block"):
            raise ConfigError("serve.yaml: extraction.block_file keeps blocks of action block under memory:// storage only; remove it")
        if self.guard_on("extraction") and self.extraction.action == "throttle" and not self.guard_on("rate_limit"):
            raise ConfigError(
                "serve.yaml: extraction.action: throttle shrinks the client's rate limit, but rate_limit is off; "
                "turn it on or choose flag or block"
            )

    def guard_on(self, section: str) -> bool:
        return self.guards and bool(getattr(self, section).enabled)

    def require_keys(self) -> "ServeConfig":
        """With auth on, at least one client key (config or environment), and every key long enough."""
        if not self.guard_on("auth"):
            return self
        api_keys, admin_keys = self.auth.resolved_keys()
        if not api_keys:
            raise ConfigError(
                f"serve.yaml: auth.api_keys is empty and ${API_KEYS_ENV} is unset: no client could call "
                "/predict. Set one, or auth.enabled: false for a closed test network"
            )
        if any(len(k) < self.auth.min_key_length for k in api_keys + admin_keys):
            raise ConfigError(f"serve.yaml: auth: an API key is shorter than auth.min_key_length={self.auth.min_key_length}")
        if any(not _sendable(k) for k in api_keys + admin_keys):  # accepted here, it could never match a request
            raise ConfigError(
                "serve.yaml: auth: an API key holds characters other than printable ASCII, or surrounding blanks: "
                "HTTP servers strip the blanks and read non-ASCII header bytes as latin-1, so no client could present it"
            )
        return self


def _sendable(key: str) -> bool:
    """A key a client can send in an X-API-Key header as written: printable ASCII without surrounding blanks."""
    return key == key.strip() and all(" " <= c <= "~" for c in key)
