"""Overrides as CLI arguments, and checking option names and types against the LightningCLI's own parser.

A sweep file names options exactly as ``secure-ml fit`` does (``model.dp.noise_multiplier``); each is
checked by parsing it with the real parser (without instantiating anything) before any point runs,
so a typo or a wrong type is refused up front with the key named.
"""

import json
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from secure_ml.errors import ConfigError


def cli_value(value: Any) -> str:
    """A value as the CLI reads it: strings as they are (``knn``), everything else as JSON (``null``, ``[0.1, 0.3]``)."""
    return value if isinstance(value, str) else json.dumps(value)


def cli_args(overrides: Mapping[str, Any]) -> List[str]:
    """``{"model.dp.enabled": False}`` → ``["--model.dp.enabled=false"]``."""
    return [f"--{key}={cli_value(value)}" for key, value in overrides.items()]


def config_args(bases: Sequence[Path]) -> List[str]:
    return [arg for b in bases for arg in ("--config", str(b))]


class OptionChecker:
    """The ``secure-ml fit`` parser over the sweep's base configs; :meth:`check` parses extra overrides."""

    def __init__(self, bases: Sequence[Path]):
        from secure_ml.train_cli import SecureMLCLI, cli_main

        class _ParseOnly(SecureMLCLI):
            def _set_seed(self) -> None:
                pass

            def before_instantiate_classes(self) -> None:
                pass

            def instantiate_classes(self) -> None:
                pass

            def after_instantiate_classes(self) -> None:
                pass

        self.base = config_args(bases)
        try:
            cli = cli_main(self.base, run=False, cli_class=_ParseOnly, parser_kwargs={"exit_on_error": False})
        except Exception as exc:
            raise ConfigError(f"the base configs {', '.join(map(str, bases))} do not parse: {_first_lines(exc)}") from None
        self.parser = cli.parser
        self.config = cli.config
        self._seen: Dict[str, Optional[str]] = {}

    def check(self, overrides: Mapping[str, Any]) -> Optional[str]:
        """None when ``overrides`` parse on top of the bases, else the parser's complaint in one line (remembered per set of overrides)."""
        sig = json.dumps(overrides, sort_keys=True, default=str)
        if sig not in self._seen:
            try:
                self.parser.parse_args(self.base + cli_args(overrides))
                self._seen[sig] = None
            except Exception as exc:
                self._seen[sig] = _first_lines(exc)
        return self._seen[sig]

    def seed(self) -> Optional[int]:
        """The bases' ``seed_everything`` (None when unset or ``true``)."""
        value = self.config.get("seed_everything")
        return value if isinstance(value, int) and not isinstance(value, bool) else None


def _first_lines(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = " ".join(lines[:2]) if lines else type(exc).__name__
    if text.startswith("unrecognized arguments"):
        return "not a secure-ml fit option"
    return text


def check_all(checker: OptionChecker, where: str, items: Iterable[Tuple[str, Mapping[str, Any]]]) -> None:
    """Parse each ``(section, overrides)`` as a whole; when one fails, find the key that does and raise ConfigError naming it."""
    for section, overrides in items:
        if not overrides or checker.check(overrides) is None:
            continue
        for key, value in overrides.items():
            problem = checker.check({key: value})
            if problem is not None:
                raise ConfigError(f"{where}: {section} '{key}' = {cli_value(value)}: {problem}")
        raise ConfigError(f"{where}: {section} does not parse as a whole: {checker.check(overrides)}")


_CHECKERS: Dict[Tuple[str, ...], OptionChecker] = {}


def checker_for(bases: Sequence[Path]) -> OptionChecker:
    """One :class:`OptionChecker` per stack of base configs in this process (parsing is the slow part; results are remembered)."""
    key = tuple(str(Path(b).resolve()) for b in bases)
    if key not in _CHECKERS:
        _CHECKERS[key] = OptionChecker(bases)
    return _CHECKERS[key]
