"""The command line: --version, help with defaults for every option, and every option documented."""

import argparse
import re

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


def test_version_and_help_do_not_import_jax():
    """``--version`` and ``--help`` took 2.4–4.7 s importing JAX first (issue 23)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from precond_lab.cli import main\n"
        "for argv in (['--version'], ['--help'], ['demo', '--help'], ['reproduce', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = sorted(m for m in ('jax', 'xarray', 'numpy', 'matplotlib') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout, out.stdout[-500:]


def test_capture_help_is_plain_text_with_one_default_each(capsys):
    with pytest.raises(SystemExit):
        main(["capture", "--help"])
    text = capsys.readouterr().out
    assert "``" not in text  # no raw reST markup
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "(default: [" not in text  # lists as typed: 0,50 — not a Python repr
    assert "--steps STEPS" in text and "(default: 0)" in text
    for block in re.split(r"\n  -", text):
        assert block.count("(default:") <= 1, block
    assert "example: precond-lab capture --model mlp" in text


def test_lazy_package_attributes():
    import precond_lab

    assert precond_lab.SampleTarget is precond_lab.targets.SampleTarget
    assert "Kronecker" in dir(precond_lab)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        precond_lab.nope  # noqa: B018
