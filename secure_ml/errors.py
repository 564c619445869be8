"""Errors that the CLI turns into one clear sentence instead of a traceback."""


class SecureMLError(Exception):
    """Base class: the message is shown to the user as is, and the command exits with ``exit_status``."""

    exit_status: int = 2


class ConfigError(SecureMLError, ValueError):
    """A configuration value is out of range or inconsistent; the message names the flag."""


class DataNotFoundError(SecureMLError, FileNotFoundError):
    """The MNIST files are neither on disk nor downloadable."""


class NothingTrained(ConfigError):
    """A resumed fit found its checkpoint trained to the end: its run folder (config, a dashboard of the restored
    weights' metrics) records nothing and is removed (:class:`secure_ml.run_folder.FolderOnRefusal`)."""


class TrainingDiverged(SecureMLError):
    """A training step left the weights NaN or infinite; the run stops before validating or saving them."""


class Stopped(SecureMLError):
    """A run was stopped from outside (SIGTERM) before it finished; what it saved so far stays. Exit status 143 (128 + 15)."""

    exit_status = 143


# What ``torch.load(..., weights_only=True)`` raises on bytes that are not a checkpoint (text, truncated, empty, random):
# besides pickle's UnpicklingError (a refusal, reported apart), the unpickler trips on whatever the bytes lead it to.
UNREADABLE_CHECKPOINT = (EOFError, RuntimeError, OSError, ValueError, KeyError, IndexError, TypeError, AttributeError)


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its type's name when it has none): the reason quoted in a one-line error."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


SEED_MAX = 2**32 - 1  # numpy's seed range, which Lightning's seed_everything passes the seed to


TORCH_SEED_MAX = 2**62  # seeds that only seed torch generators (which take < 2**64), with room for the offsets added to them


def check_seed(value, flag: str, high: int = SEED_MAX) -> None:
    """ConfigError naming ``flag`` for an integer seed outside ``0..high``: by default numpy's range (Lightning's
    ``seed_everything`` raised ValueError; a seed above 2**63 ended in torch's "Overflow when unpacking long long")."""
    if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= high:
        why = " (the seeds numpy accepts)" if high == SEED_MAX else ""
        raise ConfigError(f"{flag} must be in 0..{high}{why}; got {value}")
