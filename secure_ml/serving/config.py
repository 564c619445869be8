"""The typed ``serve.yaml``: nested dataclasses, validated on load with errors that name the option.

``load_serve_config(path, overrides)`` reads YAML (``yaml.safe_load``: no Python tags), rejects unknown
keys, checks every value's type and range, and raises ``ConfigError("serve.yaml: <option>: ...")``.
API keys may also come from the environment (``SECURE_ML_API_KEYS`` / ``SECURE_ML_ADMIN_KEYS``,
comma-separated): see ``AuthConfig.resolved_keys``.
"""

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Mapping, Optional, Tuple

from secure_ml.errors import ConfigError
from secure_ml.serving.typed_config import build_dataclass

API_KEYS_ENV = "SECURE_ML_API_KEYS"
ADMIN_KEYS_ENV = "SECURE_ML_ADMIN_KEYS"


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    limit_concurrency: Optional[int] = None  # uvicorn's connection cap (its 503s never reach the app)
    timeout_keep_alive_s: float = 5.0


@dataclass
class ModelConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    torch_threads: Optional[int] = 1  # None leaves torch's default


@dataclass
class BodyLimitConfig:
    enabled: bool = True
    max_body_bytes: int = 65536
    body_timeout_s: float = 10.0  # a body that trickles in slower than this gets 408


@dataclass
class AuthConfig:
    enabled: bool = True
    api_keys: List[str] = field(default_factory=list)
    admin_keys: List[str] = field(default_factory=list)  # may read /metrics
    min_key_length: int = 16
    failed_qps: float = 20.0  # refused-key requests (all clients together) refilled per second, against key guessing
    failed_burst: int = 50  # bucket of refused-key requests; beyond it 429 instead of 401

    def resolved_keys(self) -> Tuple[List[str], List[str]]:
        """Config keys plus the environment's, de-duplicated, order kept."""

        def merge(keys: List[str], env: str) -> List[str]:
            extra = [k.strip() for k in os.environ.get(env, "").split(",") if k.strip()]
            return list(dict.fromkeys([*keys, *extra]))

        return merge(self.api_keys, API_KEYS_ENV), merge(self.admin_keys, ADMIN_KEYS_ENV)


@dataclass
class RateLimitConfig:
    enabled: bool = True
    max_qps: float = 100.0  # sustained refill rate, tokens per second (the seed's max_qps)
    burst: int = 10  # bucket capacity (the seed's burst)
    storage: str = "memory://"  # or redis://host:6379/0 (needs the redis package)
    max_clients: int = 100_000  # memory storage: idle buckets beyond this are evicted (LRU)


@dataclass
class PolicyConfig:
    enabled: bool = True
    file: Optional[str] = None  # JSON written from InputPolicy.to_dict(); overrides everything below
    from_checkpoint: bool = True  # use the policy the training run calibrated, when the checkpoint has one
    min_value: float = 0.0
    max_value: float = 1.0
    max_variance: Optional[float] = 0.22  # per-image pixel variance; None = unchecked
    max_energy: Optional[float] = None  # L2 activation energy (sponge inputs); None = unchecked
    max_density: Optional[float] = None  # share of non-zero activations; None = unchecked
    calibrate: bool = False  # set max_variance/max_energy/max_density from clean training digits at start-up
    calibration_data_dir: Optional[str] = None
    calibration_samples: int = 2000
    false_positive_rate: float = 0.005


@dataclass
class InferenceConfig:
    timeout_s: float = 2.0  # policy check + forward + detector, queue wait included
    workers: int = 1
    max_pending: int = 64  # requests waiting for a worker beyond this get 503


@dataclass
class OutputConfig:
    probabilities: bool = True  # false: only the label (against membership inference / extraction)
    precision: Optional[int] = 2  # decimals kept; None = full float precision


@dataclass
class AuditConfig:
    enabled: bool = True
    path: str = "serve-audit.jsonl"
    alert_path: Optional[str] = None  # extraction alerts; None = "<audit stem>.alerts.jsonl"
    fsync: bool = False


@dataclass
class ExtractionConfig:
    enabled: bool = True
    action: Literal["flag", "throttle", "block"] = "block"
    min_distances: int = 200  # PRADA's N: distances gathered before Shapiro-Wilk is tested
    delta: float = 0.92  # PRADA's threshold on W
    window: int = 1000  # distances kept per client (the tested sample)
    max_queries_per_client: int = 1000  # stored past queries per client (uint8, 784 B each)
    max_clients: int = 256  # clients tracked at once (LRU); memory <= max_clients * max_queries * 784 B
    throttle_factor: float = 0.1  # throttle: the client's QPS and burst are multiplied by this
    block_seconds: float = 3600.0  # block: how long the client gets 403; 0 = until restart
    rate_window_s: float = 60.0
    rate_max_queries: Optional[int] = None  # rate signal: more queries than this per window; None = off
    low_confidence: float = 0.5  # novelty signal: a query whose top probability is below this is "novel"
    novelty_window: int = 200
    novelty_max_fraction: Optional[float] = None  # novelty signal fires above this fraction; None = off


@dataclass
class ServeConfig:
    guards: bool = True  # master switch: false turns off body limit, auth, rate limit, policy, audit, detector
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

    def guard_on(self, section: str) -> bool:
        return self.guards and bool(getattr(self, section).enabled)


# ---- loading and validation ------------------------------------------------------------------
POSITIVE = {
    "server.timeout_keep_alive_s",
    "body.max_body_bytes",
    "body.body_timeout_s",
    "auth.min_key_length",
    "auth.failed_qps",
    "auth.failed_burst",
    "rate_limit.max_qps",
    "rate_limit.burst",
    "rate_limit.max_clients",
    "policy.calibration_samples",
    "inference.timeout_s",
    "inference.workers",
    "inference.max_pending",
    "extraction.min_distances",
    "extraction.window",
    "extraction.max_queries_per_client",
    "extraction.max_clients",
    "extraction.rate_window_s",
    "extraction.novelty_window",
    "server.limit_concurrency",
    "extraction.rate_max_queries",
}
UNIT_INTERVAL = {
    "extraction.delta",
    "extraction.throttle_factor",
    "extraction.low_confidence",
    "extraction.novelty_max_fraction",
    "policy.false_positive_rate",
}


def _walk(obj: Any, prefix: str = ""):
    for f in dataclasses.fields(obj):
        value, name = getattr(obj, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            yield from _walk(value, name + ".")
        else:
            yield name, value


def validate(cfg: ServeConfig) -> ServeConfig:
    for name, value in _walk(cfg):
        if value is None or isinstance(value, (bool, str, list)):
            continue
        if name in POSITIVE and not value > 0:
            raise ConfigError(f"serve.yaml: {name}: must be > 0, got {value}")
        if name in UNIT_INTERVAL and not 0 < value <= 1:
            raise ConfigError(f"serve.yaml: {name}: must be in (0, 1], got {value}")
    if not 0 <= cfg.server.port <= 65535:
        raise ConfigError(f"serve.yaml: server.port: must be in 0..65535, got {cfg.server.port}")
    if cfg.output.precision is not None and not 0 <= cfg.output.precision <= 8:
        raise ConfigError(f"serve.yaml: output.precision: must be in 0..8 or null, got {cfg.output.precision}")
    if cfg.policy.min_value >= cfg.policy.max_value:
        raise ConfigError("serve.yaml: policy.min_value must be below policy.max_value")
    if cfg.extraction.block_seconds < 0:
        raise ConfigError(f"serve.yaml: extraction.block_seconds: must be >= 0, got {cfg.extraction.block_seconds}")
    if cfg.extraction.window < cfg.extraction.min_distances:
        raise ConfigError("serve.yaml: extraction.window must be >= extraction.min_distances")
    if not (cfg.rate_limit.storage.startswith("memory://") or cfg.rate_limit.storage.startswith(("redis", "valkey"))):
        raise ConfigError(f"serve.yaml: rate_limit.storage: {cfg.rate_limit.storage!r} is neither memory:// nor a redis:// URI")
    if cfg.guard_on("auth"):
        api_keys, admin_keys = cfg.auth.resolved_keys()
        if not api_keys:
            raise ConfigError(
                f"serve.yaml: auth.api_keys is empty and ${API_KEYS_ENV} is unset: no client could call "
                "/predict. Set one, or auth.enabled: false for a closed test network"
            )
        short = [k for k in api_keys + admin_keys if len(k) < cfg.auth.min_key_length]
        if short:
            raise ConfigError(f"serve.yaml: auth: an API key is shorter than auth.min_key_length={cfg.auth.min_key_length}")
    return cfg


def config_from_dict(data: Optional[Mapping[str, Any]]) -> ServeConfig:
    return validate(build_dataclass(ServeConfig, data))


def load_serve_config(path: Optional[str] = None, overrides: Optional[Dict[str, Any]] = None) -> ServeConfig:
    """Read ``path`` (YAML) if given, apply dotted ``overrides`` (``{"server.port": 9000}``), validate."""
    import yaml

    data: Dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"--config: '{p}' does not exist or is not a file")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"--config: '{p}' is not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"--config: '{p}' must hold a mapping of options")
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return config_from_dict(data)
