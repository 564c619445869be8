"""The guess behind the start-up prefetch (:mod:`secure_ml.prefetch`): the ``data`` settings a command line gives.

Read before torch or Lightning is imported, so not a parse: jsonargparse needs the classes. The ``--config`` files
(regular files only), then the ``--data.*`` flags, over MNISTDataModule's defaults. Anything it cannot read gives no
guess (None), never an error: LightningCLI words those. A wrong guess only loses the prefetch (its digest check).
"""

import os
import stat
from typing import List, Optional, Sequence

# MNISTDataModule's defaults for the keys the child reads (tests/test_prefetch.py checks them against its signature).
DATA_DEFAULTS = {"data_dir": "./data", "train_size": 8000, "val_size": 800, "seed": 42}
SANITIZER_DEFAULT = "none"  # SanitizerConfig.method's default (checked there too)
DATA_CLASSES = ("secure_ml.data.MNISTDataModule", "secure_ml.data.datamodule.MNISTDataModule", "MNISTDataModule")
SUBCOMMANDS = ("fit", "validate", "test")  # predict never sets up the training part


def _merge(into: dict, new: dict) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _section(loaded, name: str, classes: Sequence[str] = ()) -> Optional[dict]:
    """The ``name`` section of a config as a dict of init args ({} when absent), or None when it is not one we can read."""
    section = loaded.get(name, {}) if isinstance(loaded, dict) else None
    if isinstance(section, dict) and "class_path" in section:
        section = section.get("init_args", {}) if section["class_path"] in classes else None
    return section if isinstance(section, dict) else None


def _read_config(path: str):
    """A config file's YAML; only regular files (a pipe or /dev/stdin read here would be gone for LightningCLI)."""
    import yaml

    if not stat.S_ISREG(os.stat(path).st_mode):
        raise ValueError(f"{path} is not a regular file")
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def _set(settings: dict, keys: List[str], value) -> None:
    node = settings
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError("a sub-key of a value that is not a mapping")
    node[keys[-1]] = value


def _guess(argv: Sequence[str]) -> Optional[dict]:
    import yaml

    args: List[str] = list(argv)
    if not args or args[0] not in SUBCOMMANDS or any(a in ("-h", "--help") or a.startswith("--print_config") for a in args):
        return None
    settings: dict = {}
    strategy = None
    i = 1
    while i < len(args):
        flag, eq, inline = args[i].partition("=")
        value = inline if eq else (args[i + 1] if i + 1 < len(args) else None)
        step = 1 if eq else 2
        if flag in ("-c", "--config") and value is not None:
            loaded = _read_config(value)
            data = _section(loaded, "data", DATA_CLASSES)
            if data is None:
                return None
            _merge(settings, data)
            trainer = _section(loaded, "trainer")
            strategy = (trainer or {}).get("strategy", strategy)
        elif flag == "--data" or flag.startswith("--data.class_path"):
            return None  # a whole data spec: not guessed
        elif flag.startswith("--data.") and value is not None:
            keys = flag[len("--data.") :].split(".")
            keys = keys[1:] if keys[0] == "init_args" else keys
            if not keys or not all(keys):
                return None
            _set(settings, keys, yaml.safe_load(value))
        elif flag == "--trainer.strategy" and value is not None:
            strategy = value
        else:
            step = 1
        i += step
    if strategy is not None and (not isinstance(strategy, str) or any(w in strategy for w in ("spawn", "fork", "notebook"))):
        return None  # ranks started by multiprocessing set the data up; this process never claims
    settings = {**DATA_DEFAULTS, **settings}
    sanitizer = settings.get("sanitizer") or {}
    return settings if isinstance(sanitizer, dict) and sanitizer.get("method", SANITIZER_DEFAULT) == "confident_knn" else None


def data_settings(argv: Sequence[str]) -> Optional[dict]:
    """The ``data`` settings ``argv`` (after ``secure-ml``) would give MNISTDataModule when its sanitizer is ``confident_knn``
    and this process will set the data up; else None. Never raises: whatever it cannot read, LightningCLI reports."""
    try:
        return _guess(argv)
    except Exception:  # a bad YAML value, an unreadable file, a recursion limit: no guess, and LightningCLI words the error
        return None
