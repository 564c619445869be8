"""The README cannot drift from the code.

* Every table preceded by ``<!-- defaults: dotted.path.ToTheClass -->`` (columns ``| option | default | what it does |``,
  option and default in backticks) lists every constructor parameter (dataclass field) of that class, and each
  default, read with ``yaml.safe_load``, equals the code's. Conventions: ``required`` (no backticks) for a parameter
  without a default; for a default that is a dataclass instance, a YAML mapping of the fields that differ from that
  dataclass's own defaults (``{}``: none).
* Every ``configs/*.yaml`` is named in the table after ``<!-- configs -->``, and every file named there exists.
* Every ``--option`` in a README code block after ``secure-ml fit|validate|test|predict`` is an option of that subcommand.
"""

import dataclasses
import importlib
import inspect
import re
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
MARKER = re.compile(r"<!--\s*defaults:\s*([\w.]+)\s*-->")
REQUIRED = "required"
MISSING = object()


# --- parsing ---------------------------------------------------------------------------------------------------------


def _table_after(text: str, start: int) -> List[List[str]]:
    """Cells of the markdown table that begins at or after ``start`` (blank lines allowed before it), header and rule dropped."""
    lines = text[start:].splitlines()[1:]
    while lines and not lines[0].strip():
        lines.pop(0)
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows[2:]


def _code(cell: str) -> str:
    m = re.fullmatch(r"`([^`]*)`", cell)
    if m is None:
        raise ValueError(f"expected one `code` span, got {cell!r}")
    return m.group(1)


def defaults_tables(text: str) -> Dict[str, Dict[str, Any]]:
    """``{class path: {option: documented default}}``; a documented default is a YAML value or :data:`REQUIRED`."""
    tables: Dict[str, Dict[str, Any]] = {}
    for m in MARKER.finditer(text):
        rows = _table_after(text, m.start())
        if not rows:
            raise ValueError(f"no table after the marker for {m.group(1)}")
        table: Dict[str, Any] = {}
        for row in rows:
            if len(row) != 3:
                raise ValueError(f"{m.group(1)}: a row needs | option | default | what it does |, got {row}")
            option = _code(row[0])
            table[option] = REQUIRED if row[1] == REQUIRED else yaml.safe_load(_code(row[1]))
        tables[m.group(1)] = table
    return tables


def _load(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def code_defaults(cls) -> Dict[str, Any]:
    """``{parameter: default}`` of a dataclass's fields or a class's ``__init__`` (MISSING when required)."""
    if dataclasses.is_dataclass(cls):
        out = {}
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
            else:
                out[f.name] = MISSING
        return out
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return {
        p.name: MISSING if p.default is inspect.Parameter.empty else p.default
        for p in params
        if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    }


def _same(documented: Any, actual: Any) -> bool:
    if actual is MISSING or documented == REQUIRED:
        return actual is MISSING and documented == REQUIRED
    if dataclasses.is_dataclass(actual) and not isinstance(actual, type):
        if not isinstance(documented, dict):
            return False
        try:
            return dataclasses.replace(type(actual)(), **documented) == actual
        except TypeError:  # a documented field the dataclass does not have
            return False
    if isinstance(documented, str) and isinstance(actual, (int, float)) and not isinstance(actual, bool):
        try:  # YAML 1.1 reads 1e-5 (no dot) as a string
            documented = float(documented)
        except ValueError:
            return False
    if isinstance(documented, bool) or isinstance(actual, bool):
        return type(documented) is type(actual) and documented == actual
    if isinstance(actual, tuple):
        actual = list(actual)
    return documented == actual


def defaults_problems(text: str) -> List[str]:
    """One line per documented default that differs from the code, per undocumented parameter, per documented non-parameter."""
    problems = []
    for path, table in defaults_tables(text).items():
        actual = code_defaults(_load(path))
        for name in actual.keys() - table.keys():
            problems.append(f"{path}: `{name}` is not documented")
        for name in table.keys() - actual.keys():
            problems.append(f"{path}: `{name}` is documented but is no parameter")
        for name in table.keys() & actual.keys():
            if not _same(table[name], actual[name]):
                problems.append(f"{path}: `{name}` documented default {table[name]!r}, code {actual[name]!r}")
    return problems


def nested_without_table(text: str) -> List[str]:
    """Settings dataclasses that are the default of a documented option but have no ``defaults:`` table."""
    tables = defaults_tables(text)
    missing = []
    for path in tables:
        for value in code_defaults(_load(path)).values():
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                nested = f"{type(value).__module__}.{type(value).__qualname__}"
                if nested not in tables and nested not in missing:
                    missing.append(nested)
    return missing


def configs_named(text: str) -> List[str]:
    start = text.index("<!-- configs -->")
    return [_code(row[0]) for row in _table_after(text, start)]


COMMAND = re.compile(r"(?:secure-ml|-m secure_ml)\s+(fit|validate|test|predict)\b(.*)")


def cli_options(text: str) -> List[Tuple[str, str]]:
    """``(subcommand, --option)`` for every option after a training command in the README's code blocks."""
    found = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            m = COMMAND.search(line)
            if m is None:
                continue
            args = re.split(r"\s#|[;|&]", m.group(2))[0]
            found += [(m.group(1), o) for o in re.findall(r"(?<![\w-])(--[A-Za-z_][\w.]*)", args)]
    return found


def unknown_options(pairs: List[Tuple[str, str]], options: Dict[str, set]) -> List[str]:
    bad = []
    for sub, opt in pairs:
        known = options[sub]
        parts = opt.split(".")
        # an option under a class-typed one (e.g. --model.optimizer.lr) is known when the class option is (it has .help)
        under_class = any(".".join(parts[:i]) in known and ".".join(parts[:i]) + ".help" in known for i in range(1, len(parts)))
        if opt not in known and not under_class:
            bad.append(f"secure-ml {sub} {opt}")
    return bad


# --- fixtures ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def readme() -> str:
    return README.read_text()


class _ParserBuilt(Exception):
    pass


@pytest.fixture(scope="module")
def subcommand_options() -> Dict[str, set]:
    """Option strings of each training subcommand, from the real LightningCLI parser (built, never run)."""
    from secure_ml import train_cli

    class Probe(train_cli.SecureMLCLI):
        def parse_arguments(self, parser, args):
            raise _ParserBuilt(parser)

    original = train_cli.SecureMLCLI
    train_cli.SecureMLCLI = Probe
    try:
        train_cli.cli_main([])  # no subcommand named: every subcommand's parser is built
    except _ParserBuilt as built:
        parser = built.args[0]
    finally:
        train_cli.SecureMLCLI = original
    subs = parser._subcommands_action._name_parser_map
    return {name: {o for a in subs[name]._actions for o in a.option_strings} for name in ("fit", "validate", "test", "predict")}


# --- tests -------------------------------------------------------------------------------------------------------------


def test_documented_defaults_match_the_code(readme):
    tables = defaults_tables(readme)
    for path in (
        "secure_ml.callbacks.robustness.RobustnessCallback",
        "secure_ml.callbacks.membership.MembershipInferenceCallback",
        "secure_ml.callbacks.sponge.SpongeCallback",
        "secure_ml.callbacks.scorecard.Scorecard",
        "secure_ml.callbacks.privacy_budget.PrivacyBudget",
        "secure_ml.privacy.config.DPConfig",
        "secure_ml.adversarial.AdversarialConfig",
        "secure_ml.data.datamodule.MNISTDataModule",
    ):
        assert path in tables, f"README has no <!-- defaults: {path} --> table"
    assert defaults_problems(readme) == []


def test_every_nested_settings_class_has_its_table(readme):
    """A documented option whose default is a settings dataclass (``--data.poison``, ``--model.dp``, serve.yaml's
    sections) has a table of its own, so a new section or a new field in one cannot go undocumented."""
    assert nested_without_table(readme) == []
    # control: a README that drops one of them is noticed
    doctored = readme.replace("<!-- defaults: secure_ml.data.poisoning.PoisonConfig -->", "")
    assert nested_without_table(doctored) == ["secure_ml.data.poisoning.PoisonConfig"]


def test_the_check_catches_a_wrong_default_a_missing_row_and_an_extra_row(readme):
    """Negative control: doctored copies of the README are reported."""
    row = "| `pgd_max_samples` | `96` |"
    assert row in readme
    wrong = defaults_problems(readme.replace(row, "| `pgd_max_samples` | `128` |"))
    assert wrong == ["secure_ml.callbacks.robustness.RobustnessCallback: `pgd_max_samples` documented default 128, code 96"]
    missing = defaults_problems(readme.replace(row + " held-out digits attacked with PGD |\n", ""))
    assert missing == ["secure_ml.callbacks.robustness.RobustnessCallback: `pgd_max_samples` is not documented"]
    extra = readme.replace(row, "| `autoattack_magic` | `true` | x |\n" + row)
    assert defaults_problems(extra) == [
        "secure_ml.callbacks.robustness.RobustnessCallback: `autoattack_magic` is documented but is no parameter"
    ]
    # type-strict where it matters, and the conventions for required parameters and nested dataclasses
    assert not _same(1, True) and not _same("1e-4", 1e-5) and _same("1e-5", 1e-5) and _same(10, 10.0)
    assert _same(REQUIRED, MISSING) and not _same(None, MISSING) and not _same(REQUIRED, None)
    from secure_ml.data.poisoning import PoisonConfig

    assert _same({}, PoisonConfig()) and not _same({}, PoisonConfig(rate=0.1)) and _same({"rate": 0.1}, PoisonConfig(rate=0.1))
    assert not _same({"no_such_field": 1}, PoisonConfig())


def test_every_config_file_is_in_the_configuration_table(readme):
    named = configs_named(readme)
    on_disk = sorted(f"configs/{p.name}" for p in (REPO / "configs").glob("*.yaml"))
    assert sorted(set(named) & set(on_disk)) == on_disk, f"not in the README's configuration table: {sorted(set(on_disk) - set(named))}"
    assert set(named) <= set(on_disk), f"named in the README but missing: {sorted(set(named) - set(on_disk))}"
    # control: a file missing from the table is noticed
    doctored = readme.replace("| `configs/no_dp.yaml` |", "| `configs/nodp.yaml` |")
    assert "configs/no_dp.yaml" not in configs_named(doctored)


def test_every_cli_option_in_the_readme_exists(readme, subcommand_options):
    pairs = cli_options(readme)
    assert ("fit", "--data.data_dir") in pairs and ("test", "--ckpt_path") in pairs  # the scan sees the commands
    assert unknown_options(pairs, subcommand_options) == []
    # control: a misspelt option in a code block is reported
    doctored = readme.replace("secure-ml fit --help", "secure-ml fit --data.datadir x --help")
    assert unknown_options(cli_options(doctored), subcommand_options) == ["secure-ml fit --data.datadir"]


def _readme_commands(text: str, heading: str) -> List[str]:
    """Command lines of the first code block under ``## heading``."""
    section = text.split(f"\n## {heading}\n", 1)[1]
    block = re.search(r"```[a-z]*\n(.*?)```", section, flags=re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip()]


def _ci_section(ci: str, heading: str) -> List[str]:
    """Lines of ``.ci/run`` between ``# --- README: heading ---`` and the next ``# ---`` comment."""
    part = ci.split(f"# --- README: {heading} ---\n", 1)[1]
    return [line.strip() for line in part.split("# ---", 1)[0].splitlines() if line.strip() and not line.startswith("#")]


def test_ci_runs_the_readme_install_lint_and_test_commands(readme):
    ci = (REPO / ".ci" / "run").read_text()
    for heading in ("Install", "Lint", "Test"):
        documented = [c for c in _readme_commands(readme, heading) if not c.startswith("python3 -m venv")]  # CI makes its own venv
        assert documented and documented == _ci_section(ci, heading), heading
    # control: a README that drifts from CI is noticed
    assert [c for c in _readme_commands(readme.replace("python -m pytest -q", "pytest"), "Test")] != _ci_section(ci, "Test")
