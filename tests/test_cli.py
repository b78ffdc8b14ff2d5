"""The command line: --version, help with defaults for every option, and every option documented."""

import argparse

import pytest

from precond_lab import __version__
from precond_lab.cli import build_parser, main


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"precond-lab {__version__}"


@pytest.mark.parametrize("command", ["demo", "reproduce", "capture"])
def test_every_option_has_help_and_shows_its_default(command):
    sub = _subparsers(build_parser())[command]
    undocumented = [
        a.option_strings
        for a in sub._actions
        if a.option_strings and not a.help and a.help is not argparse.SUPPRESS
    ]
    assert not undocumented, f"{command}: options without help: {undocumented}"
    text = sub.format_help()
    for a in sub._actions:
        if a.option_strings and a.default not in (None, False, argparse.SUPPRESS) and a.help:
            # ArgumentDefaultsHelpFormatter appends "(default: …)"
            assert "(default:" in text, f"{command}: defaults are not shown in --help"


def test_capture_is_a_core_command():
    """The capture dependencies are in the core install: no '[capture] extra' fallback."""
    assert "capture" in _subparsers(build_parser())
