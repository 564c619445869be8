"""Errors that the CLI turns into one clear sentence instead of a traceback."""


class SecureMLError(Exception):
    """Base class: the message is shown to the user as is."""


class ConfigError(SecureMLError, ValueError):
    """A configuration value is out of range or inconsistent; the message names the flag."""


class DataNotFoundError(SecureMLError, FileNotFoundError):
    """The MNIST files are neither on disk nor downloadable."""
