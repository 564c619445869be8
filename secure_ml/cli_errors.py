"""Errors of the training CLI as one line: jsonargparse's parse errors, and our own errors wrapped inside its messages."""

import sys
from typing import Optional

from secure_ml.errors import SEED_MAX, ConfigError, SecureMLError, check_seed  # noqa: F401 (the seed check lives with the errors)


def parser_error_line(message: str) -> str:
    """jsonargparse's multi-line parse error as one line: the key, the first reason that is not "None", the value given."""
    lines = [line.strip() for line in str(message).strip().splitlines() if line.strip()]
    if not lines:
        return "invalid arguments"
    if len(lines) == 1:
        if lines[0].startswith("unrecognized arguments:") and " --optimizer" in f" {lines[0]}":
            return lines[0] + " (a top-level optimizer would bypass DP; set --model.optimizer)"
        return lines[0]
    reasons = [line[2:] for line in lines[1:] if line.startswith("- ") and "NoneType" not in line]
    reasons = reasons or [line for line in lines[1:] if line.startswith("Expected")]  # a plain type error: one reason line
    given = next((line for line in lines if line.startswith("Given value:")), None)
    return "; ".join([lines[0].rstrip(":")] + reasons[:1] + ([given] if given else []))


def one_line_error(parser, message: str, ex: Optional[Exception] = None):
    """``parser.error`` for the CLI's parsers: one ``secure-ml: error:`` line and exit 2 instead of ~170 lines of usage.
    Parsers told not to exit (jsonargparse's own trial parses) keep raising as before."""
    if not parser.exit_on_error:
        return type(parser).error(parser, message, ex)
    sys.stderr.write(f"secure-ml: error: {parser_error_line(message)} (`secure-ml <command> --help` lists the options)\n")
    parser.exit(2)


def our_error(exc: BaseException):
    """The SecureMLError in ``exc``'s chain of causes (jsonargparse wraps it in "Does not validate against any of the Union
    subtypes"), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, SecureMLError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def check_config_files(argv) -> None:
    """ConfigError naming a ``--config`` file that holds no mapping of options: an empty or comment-only delta got
    jsonargparse's "Unexpected config: # a comment", a list or a scalar "Unexpected config: - a". Files that are not
    YAML, missing or not regular are left to jsonargparse, which words those."""
    import os

    import yaml

    args = list(argv or [])
    for i, arg in enumerate(args):
        flag, eq, inline = arg.partition("=")
        if flag not in ("-c", "--config") or (not eq and i + 1 >= len(args)):
            continue
        path = inline if eq else args[i + 1]
        try:
            if not os.path.isfile(path):
                continue
            with open(path, encoding="utf-8") as f:
                data = yaml.load(f, Loader=_unique_key_loader())  # a SafeLoader subclass: no Python tags
        except (OSError, UnicodeDecodeError):
            continue
        except yaml.constructor.ConstructorError as exc:
            if "found duplicate key" not in str(exc):
                continue  # jsonargparse words the others
            mark = exc.problem_mark
            raise ConfigError(
                f"--config {path}: line {mark.line + 1}: key {exc.problem.split('found duplicate key ', 1)[1]} appears twice in one "
                "mapping; YAML keeps only the last, so the first one's settings would be dropped without a word. Merge them"
            ) from None
        except yaml.YAMLError:
            continue
        if data is None:
            raise ConfigError(f"--config {path} holds no settings (it is empty or only comments); remove it from the command line")
        if not isinstance(data, dict):
            raise ConfigError(f"--config {path} must hold a mapping of options (key: value lines), not a {type(data).__name__}")


def _unique_key_loader():
    from collections.abc import Hashable

    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last without a word)."""

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base`: keys written after it override the merged ones, as YAML means
                key = self.construct_object(key_node, deep=deep)
                if not isinstance(key, Hashable):
                    continue  # SafeLoader refuses it; jsonargparse words that
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark
                    )
                seen.add(key)
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader
