"""The CLI builds the parser of the subcommand it is given, and that parser reads a config as the full set does."""

import contextlib
import io
from pathlib import Path

import pytest
from lightning.pytorch.cli import LightningCLI

from secure_ml.train_cli import SecureMLCLI, cli_main, named_subcommand

CAPSTONE = str(Path(__file__).resolve().parents[1] / "configs" / "capstone.yaml")


class Built(Exception):
    """Raised by :class:`Probe` once the parsers exist, carrying their names."""


class Probe(SecureMLCLI):
    def parse_arguments(self, parser, args):
        raise Built(sorted(self._subcommand_parsers))


class EveryParser(SecureMLCLI):
    subcommands = staticmethod(LightningCLI.subcommands)


def built_parsers(args):
    with pytest.raises(Built) as info:
        cli_main(args, cli_class=Probe)
    return info.value.args[0]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["fit", "--config", "x.yaml"], "fit"),
        (["predict"], "predict"),
        (["--config", "fit.yaml", "fit"], None),  # a later token may be an option's value
        (["fitt"], None),
        ([], None),
        ({"fit": {}}, None),
    ],
)
def test_named_subcommand_is_the_leading_name_only(args, expected):
    assert named_subcommand(args) == expected


def test_named_subcommand_reads_sys_argv_and_nothing_without_run(monkeypatch):
    monkeypatch.setattr("sys.argv", ["secure-ml", "test", "--ckpt_path", "last.ckpt"])
    assert named_subcommand(None) == "test"
    assert named_subcommand(["fit"], run=False) is None


def test_a_named_subcommand_builds_its_parser_alone():
    assert built_parsers(["fit", "--config", CAPSTONE]) == ["fit"]
    assert built_parsers(["test", "--config", CAPSTONE]) == ["test"]


def test_without_a_leading_name_every_parser_is_built():
    # the control: what LightningCLI does, so `secure-ml --help` and a mistyped name still list all four
    assert built_parsers(["--config", CAPSTONE, "fit"]) == ["fit", "predict", "test", "validate"]
    assert built_parsers(["fitt"]) == ["fit", "predict", "test", "validate"]


def test_the_lone_parser_reads_the_capstone_as_the_full_set_does():
    printed = {}
    for cls in (SecureMLCLI, EveryParser):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            cli_main(["fit", "--config", CAPSTONE, "--model.dp.noise_multiplier", "0.7", "--print_config"], cli_class=cls)
        printed[cls] = out.getvalue()
    assert "noise_multiplier: 0.7" in printed[SecureMLCLI]
    assert printed[SecureMLCLI] == printed[EveryParser]


def test_per_subcommand_parser_kwargs_keep_every_parser():
    # LightningCLI hands {"test": {...}} to the test parser; with the test parser missing it would reach the main one
    with pytest.raises(Built) as info:
        cli_main(["fit", "--config", CAPSTONE], cli_class=Probe, parser_kwargs={"test": {"description": "x"}})
    assert info.value.args[0] == ["fit", "predict", "test", "validate"]
