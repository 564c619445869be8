"""What ``secure-ml preflight`` inspects, read the way ``secure-ml serve`` reads it (Lightning-free).

The serve config is validated by the serving package's own typed settings, except that missing or
short API keys are not an error here (``ServeConfig.require_keys`` would stop the load; preflight
reports them as a failed item instead). The model artefact goes through ``serving.startup`` (the
service's start-up path) and ``release.artifact`` (the manifest and its privacy ledger).
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from secure_ml.errors import ConfigError, SecureMLError
from secure_ml.serving.config_loading import config_from_dict, read_yaml_mapping


@dataclass
class Deployment:
    """The inputs of the checks; a field is None when it could not be read, with the reason in ``problems``."""

    serve_path: Path
    model_path: Path
    raw: Dict[str, Any] = field(default_factory=dict)  # serve.yaml as written
    config: Any = None  # secure_ml.serving.settings.ServeConfig
    served: Any = None  # secure_ml.serving.startup.Served
    manifest: Optional[Dict[str, Any]] = None  # release manifest (None for a training checkpoint)
    ledger: Optional[Dict[str, Any]] = None  # privacy ledger of the artefact
    problems: Dict[str, str] = field(default_factory=dict)  # what could not be read: config / model


def load_config(path: Path) -> tuple:
    """``(raw mapping, ServeConfig)`` of serve.yaml, read and validated as ``secure-ml serve`` does; ConfigError in one line."""
    raw = read_yaml_mapping(path, "--serve-config")
    return raw, config_from_dict(raw, require_keys=False)


def load_model(path: Path, device: str = "cpu"):
    """``(served net, manifest or None, privacy ledger or None)`` through serve's start-up path."""
    from secure_ml.release.artifact import is_release, load_release
    from secure_ml.serving.startup import load_served_model

    served = load_served_model(str(path), device)
    if is_release(path):
        manifest = load_release(path).manifest
        return served, manifest, dict(manifest.get("privacy") or {})
    from secure_ml.privacy.ledger import ledger_from_checkpoint
    from secure_ml.release.checkpoint import read_checkpoint

    return served, None, ledger_from_checkpoint(read_checkpoint(path))


def inspect(serve_path: str, model_path: str) -> Deployment:
    """Read everything; what fails to load is recorded, never raised (the checks report it)."""
    dep = Deployment(Path(serve_path), Path(model_path).expanduser())
    try:
        dep.raw, dep.config = load_config(dep.serve_path)
    except SecureMLError as exc:
        dep.problems["config"] = str(exc)
    try:
        dep.served, dep.manifest, dep.ledger = load_model(dep.model_path)
    except SecureMLError as exc:
        dep.problems["model"] = str(exc)
    return dep


def gates_from(path: Optional[Path]) -> List[Any]:
    """The security gates of a delta config (``scorecard.gates``, e.g. configs/gates.yaml); [] when no file."""
    from secure_ml.report.gates import parse_gates

    if path is None:
        return []
    data = read_yaml_mapping(path, "--gates")  # missing, not YAML or not a mapping: one line naming the flag
    section = data.get("scorecard")
    gates = section.get("gates") if isinstance(section, dict) else None
    if not isinstance(section or {}, dict) or not isinstance(gates or {}, dict):
        raise ConfigError(f"--gates: '{path}' must hold scorecard: {{gates: {{metric: condition}}}} (as configs/gates.yaml does)")
    return parse_gates(gates or {}, "--gates")
