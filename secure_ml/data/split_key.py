"""A keyed tag of the member / non-member split, so checkpoints can be checked without carrying a membership oracle.

An unkeyed hash of the split (member indices and labels) lets anyone holding a checkpoint and every
record but one recompute it for each guess and learn membership, or a member's label, with
certainty. The tag here is HMAC-SHA256 under a 256-bit secret that stays on the training machine,
in a per-user key file created with mode 0600 (never in a checkpoint): without the key the tag is
indistinguishable from random, so it decides nothing about any record. The checkpoint carries the
tag and the key's *id* (a hash of the key, nothing derived from data), so another machine can say
that it lacks the key instead of calling a correct split wrong.

Lightning-free; standard library (``hmac``, ``hashlib``, ``secrets``) only.
"""

import contextlib
import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path
from typing import Iterable, Optional

import torch

from secure_ml.errors import ConfigError

KEY_BYTES = 32
_TAG_DOMAIN = b"secure-ml split tag v1\x00"
_ID_DOMAIN = b"secure-ml split key id v1\x00"


def default_key_path() -> Path:
    """``$SECURE_ML_KEY_DIR/split.key``, else ``$XDG_CONFIG_HOME/secure-ml/split.key``, else ``~/.config/secure-ml/split.key``."""
    if os.environ.get("SECURE_ML_KEY_DIR"):
        return Path(os.environ["SECURE_ML_KEY_DIR"]).expanduser() / "split.key"
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config").expanduser()
    return base / "secure-ml" / "split.key"


def resolve_key_path(path: Optional[str]) -> Path:
    return Path(path).expanduser() if path else default_key_path()


def read_key(path: Path) -> Optional[bytes]:
    """The key in ``path``, or None when the file does not exist; a key others can read, or a malformed one, is refused."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(mode):
        raise ConfigError(f"--data.split_key: {path} is a directory; give the key file's path (it is created when missing)")
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"the split key file {path} is readable by other users; run `chmod 600 {path}` (--data.split_key)")
    try:
        key = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the split key file {path} ({exc.strerror or type(exc).__name__}); check --data.split_key") from None
    if len(key) != KEY_BYTES:
        raise ConfigError(f"the split key file {path} does not hold a {KEY_BYTES}-byte key; delete it or pass another --data.split_key")
    return key


def load_or_create_key(path: Path) -> bytes:
    """Read the key in ``path``, creating it (0600, parents 0700) from the OS CSPRNG when missing; safe against concurrent creators."""
    key = read_key(path)
    if key is not None:
        return key
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(KEY_BYTES))
        with contextlib.suppress(FileExistsError):  # another process created the key first: use theirs
            os.link(tmp, path)  # atomic, unlike a rename, which would replace a key already in use
    finally:
        tmp.unlink(missing_ok=True)
    key = read_key(path)
    assert key is not None
    return key


def key_id(key: bytes) -> str:
    """A public name for ``key`` (16 hex digits of a domain-separated SHA-256): tells keys apart, reveals nothing about the key or the data."""
    return hashlib.sha256(_ID_DOMAIN + key).hexdigest()[:16]


def split_tag(key: bytes, parts: Iterable[torch.Tensor]) -> str:
    """HMAC-SHA256 under ``key`` over the integer tensors ``parts`` (each length-prefixed, as int64), in hex."""
    mac = hmac.new(key, _TAG_DOMAIN, hashlib.sha256)
    for t in parts:
        data = t.detach().to(torch.int64).contiguous().numpy().tobytes()
        mac.update(len(t).to_bytes(8, "little"))
        mac.update(data)
    return mac.hexdigest()


def tags_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a, b)
