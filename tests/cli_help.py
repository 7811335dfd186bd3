"""What ``--help`` must do for every entry point: print, and explain each flag."""
import argparse

import pytest


def assert_help_explains_every_flag(parser: argparse.ArgumentParser, capsys) -> None:
    """``--help`` exits 0 and its text names every option, each of which has a help text of its own.

    Catches a flag added without ``help=`` and a help text that argparse cannot format (a stray ``%``, a misspelt
    ``%(default)s``): both would otherwise surface only when a user asks for help.
    """
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for action in parser._actions:
        name = action.option_strings or [action.dest]
        assert action.help and action.help != argparse.SUPPRESS, f"{name} has no help text"
        assert all(option in text for option in action.option_strings), f"{name} is missing from --help"
