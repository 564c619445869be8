"""The release artifact: what ``secure-ml export`` writes and ``secure-ml serve`` serves, and nothing else.

A directory with two files:

* ``weights.safetensors``: the net's parameters (safetensors: raw tensors, no code, no metadata);
* ``manifest.json``: ``format`` / ``version``; ``net`` (``class_path`` and ``init_args`` of a registered
  net of ``secure_ml.models``); ``weights`` (``file`` and its ``sha256``); ``input_policy`` (the limits
  the SpongeCallback calibrated during training, or null); ``privacy`` (the ledger of
  :func:`secure_ml.privacy.ledger.ledger_from_checkpoint`: ε over the selection steps, δ, σ, q, steps, selection steps, accountant).

Nothing computed from the training members without DP travels: no training metrics, no scorecard
history, no optimizer state, no data fingerprint, no member indices, hashes or counts. The manifest's
keys are checked against :data:`MANIFEST_KEYS` both when writing and when loading (an unknown key is
refused), and the weights' SHA-256 is checked on load against the manifest, over the same bytes that
are then parsed. The SHA-256 detects a weights file changed or swapped after export; it does not
authenticate the manifest itself: compare the manifest's SHA-256 that export prints with the one serve
prints, or sign the directory, when the artifact crosses a trust boundary.
"""

import hashlib
import json
import math
from dataclasses import fields
from pathlib import Path
from typing import Any, Dict, Mapping, NamedTuple, Optional

from torch import nn

from secure_ml.defenses.input_policy import InputPolicy
from secure_ml.errors import ConfigError, SecureMLError
from secure_ml.models.registry import net_spec
from secure_ml.release.checkpoint import build_model

FORMAT, VERSION = "secure-ml-release", 1
MANIFEST, WEIGHTS = "manifest.json", "weights.safetensors"
MAX_MANIFEST_BYTES = 1 << 20
LEDGER_KEYS = frozenset({"dp", "accountant", "noise_multiplier", "sample_rate", "steps", "selection_steps", "delta", "epsilon"})
MANIFEST_KEYS = {
    "format": None,
    "version": None,
    "net": frozenset({"class_path", "init_args"}),
    "weights": frozenset({"file", "sha256"}),
    "input_policy": frozenset(f.name for f in fields(InputPolicy)) | {"version"},  # InputPolicy.to_dict() carries its format version
    "privacy": LEDGER_KEYS,
}


class TamperedArtifactError(SecureMLError):
    """The weights do not match the manifest's SHA-256; nothing was loaded."""


class Release(NamedTuple):
    model: nn.Module
    policy: Optional[dict]
    manifest: Dict[str, Any]
    manifest_sha256: str


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a finite number")


def is_release(path: Path) -> bool:
    """A release directory (holding ``manifest.json``) or its ``manifest.json``."""
    return (path.is_dir() and (path / MANIFEST).is_file()) or (path.name == MANIFEST and path.is_file())


def check_manifest(manifest: Any, where: str) -> Dict[str, Any]:
    """``manifest`` if its keys and value types are exactly what a release may hold; one-line ConfigError otherwise."""
    if not isinstance(manifest, dict):
        raise ConfigError(f"{where}: the manifest must be a JSON object")
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ConfigError(f"{where}: not a {FORMAT} version {VERSION} manifest")
    for key in manifest:
        if key not in MANIFEST_KEYS:
            raise ConfigError(f"{where}: the manifest holds '{key}', which a release never carries")
    for key, allowed in MANIFEST_KEYS.items():
        value = manifest.get(key)
        if allowed is None or (value is None and key == "input_policy"):
            continue
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: manifest '{key}' must be an object")
        extra = sorted(set(value) - allowed)
        if extra:
            raise ConfigError(f"{where}: manifest '{key}' holds '{extra[0]}', which a release never carries")
    for key, value in manifest["privacy"].items():
        if not isinstance(value, (bool, int, float, str, type(None))) or (isinstance(value, float) and not math.isfinite(value)):
            raise ConfigError(f"{where}: manifest privacy.{key} must be a finite number, a string or null")
    _check_ledger(manifest["privacy"], where)
    if manifest["weights"].get("file") != WEIGHTS or not isinstance(manifest["weights"].get("sha256"), str):
        raise ConfigError(f"{where}: manifest 'weights' must name {WEIGHTS} and its sha256")
    return manifest


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_ledger(privacy: Dict[str, Any], where: str) -> None:
    """A DP ledger states its ε (null only before any step) and δ as numbers: preflight and the service compare them."""
    if not isinstance(privacy.get("dp"), bool):
        raise ConfigError(f"{where}: manifest privacy.dp must be true or false")
    if not privacy["dp"]:
        return
    if not (_number(privacy.get("delta")) and 0 < privacy["delta"] < 1):
        raise ConfigError(f"{where}: manifest privacy.delta must be a number in (0, 1): a DP release states its δ")
    eps = privacy.get("epsilon")
    if not ((_number(eps) and eps >= 0) or (eps is None and privacy.get("steps") == 0)):
        raise ConfigError(f"{where}: manifest privacy.epsilon must be a number >= 0: a DP release states its ε")


def manifest_for(model: nn.Module, weights_sha256: str, policy: Optional[dict], privacy: Mapping[str, Any]) -> Dict[str, Any]:
    """The manifest of ``model`` (a registered net): see the module docstring."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "net": net_spec(model),
        "weights": {"file": WEIGHTS, "sha256": weights_sha256},
        "input_policy": InputPolicy.from_dict(policy).to_dict() if policy is not None else None,
        "privacy": dict(privacy),
    }


def weights_bytes(model: nn.Module) -> bytes:
    """The net's parameters as the safetensors bytes of ``weights.safetensors`` (raw tensors; the same weights, the same bytes)."""
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 of :func:`weights_bytes`: the manifest's ``weights.sha256`` and a test report's ``weights_sha256``."""
    return sha256_hex(weights_bytes(model))


def write_release(out_dir: Path, model: nn.Module, policy: Optional[dict], privacy: Mapping[str, Any]) -> Release:
    """Write ``weights.safetensors`` then ``manifest.json`` (last: its presence marks a complete artifact) into ``out_dir``."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConfigError(f"--output: '{out_dir}' exists and is not an empty directory; choose a new one")
    data = weights_bytes(model)
    manifest = check_manifest(manifest_for(model, sha256_hex(data), policy, privacy), "--output")
    text = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False) + "\n"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / WEIGHTS).write_bytes(data)
        (out_dir / MANIFEST).write_text(text)
    except OSError as exc:  # a parent that is a file, no permission, a full disk: the manifest (written last) is absent
        raise ConfigError(f"--output: cannot write the release into '{out_dir}' ({exc.strerror or type(exc).__name__})") from None
    return Release(model, manifest["input_policy"], manifest, sha256_hex(text.encode()))


def load_release(path: Path) -> Release:
    """The served net of a release directory, after checking the manifest's keys and the weights' SHA-256."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    folder = path if path.is_dir() else path.parent
    where = f"--ckpt_path: release '{folder}'"
    with open(folder / MANIFEST, "rb") as f:
        raw = f.read(MAX_MANIFEST_BYTES + 1)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ConfigError(f"{where}: the manifest is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        manifest = check_manifest(json.loads(raw, parse_constant=_no_constant), where)
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{where}: the manifest is not valid JSON") from None
    try:
        data = (folder / WEIGHTS).read_bytes()
    except OSError:
        raise ConfigError(f"{where}: {WEIGHTS} is missing or unreadable") from None
    if sha256_hex(data) != manifest["weights"]["sha256"]:
        raise TamperedArtifactError(
            f"refused to load release '{folder}': the SHA-256 of {WEIGHTS} does not match the manifest "
            "(changed after export); nothing was loaded"
        )
    try:
        state = load(data)
    except SafetensorError:
        raise ConfigError(f"{where}: {WEIGHTS} is not a valid safetensors file") from None
    model = build_model(manifest["net"], state, where)
    return Release(model, manifest["input_policy"], manifest, sha256_hex(raw))
