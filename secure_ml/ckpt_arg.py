"""``--ckpt_path`` of ``fit/validate/test/predict``, checked while the command line is parsed: before any data set-up,
run folder or Lightning's own reading of it. Each refusal is one ConfigError naming the flag."""

from pathlib import Path
from typing import Optional

from fsspec.core import url_to_fs

from secure_ml.checkpoint_io import check_checkpoint_file
from secure_ml.errors import ConfigError, first_line

# Words Lightning reads as "a checkpoint of this Trainer": a new command has none, so "last" tested (and "fit" resumed
# from) a freshly initialised net with exit 0, and "best"/"hpc" ended in a traceback.
LIGHTNING_WORDS = ("last", "best", "hpc", "registry")
EVALUATING = ("validate", "test", "predict")


def check_ckpt_arg(subcommand: Optional[str], path) -> Optional[int]:
    """ConfigError unless ``path`` can be what ``subcommand`` runs on; the checkpoint's ``global_step`` when it was read."""
    if not path:
        if subcommand in EVALUATING:  # it scored a freshly initialised net, exit 0
            raise ConfigError(f"secure-ml {subcommand} needs --ckpt_path, the weights to evaluate (a run's checkpoints/last.ckpt)")
        return None
    text = str(path)
    if text in LIGHTNING_WORDS or text.startswith("registry:"):
        raise ConfigError(
            f"--ckpt_path {text}: give the checkpoint file's path (a run's lightning_logs/version_N/checkpoints/last.ckpt); "
            "Lightning's 'last', 'best', 'hpc' and 'registry' name checkpoints of the running process, and a new command has none"
        )
    if text.startswith(("http://", "https://")):
        return None  # downloaded once, when Lightning restores it (through the same safe loader)
    if Path(text).is_dir():
        from secure_ml.release.artifact import is_release

        what = "a release folder (secure-ml export: weights and manifest, no training state)" if is_release(Path(text)) else "a folder"
        raise ConfigError(
            f"--ckpt_path '{text}' is {what}; secure-ml {subcommand} needs a training checkpoint file (a run's checkpoints/last.ckpt)"
        )
    try:
        fs, _ = url_to_fs(text)
    except ImportError as exc:  # s3:// without s3fs, gs:// without gcsfs, ...
        raise ConfigError(f"--ckpt_path '{text}': reading it needs a package that is not installed ({first_line(exc)})") from None
    except ValueError as exc:  # an unknown protocol
        raise ConfigError(f"--ckpt_path '{text}': {first_line(exc)}") from None
    if "file" not in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        return None  # a remote object: read once, when Lightning restores it
    return int(check_checkpoint_file(text).get("global_step", 0))
