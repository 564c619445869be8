"""``OneLineParser``: argparse whose errors are one ``ConfigError`` line (``secure_ml.cli.main`` prints it, exit 2)."""

import argparse

from secure_ml.errors import ConfigError


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that raises ``ConfigError("<prog>: <message>")`` instead of printing usage and exiting."""

    def error(self, message: str):
        raise ConfigError(f"{self.prog}: {message}")
