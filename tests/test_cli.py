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
        "for argv in (['--version'], ['--help'], ['demo', '--help'], ['reproduce', '--help'],\n"
        "             ['capture', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = sorted(m for m in ('jax', 'xarray', 'numpy', 'matplotlib') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout, out.stdout[-500:]


def test_importing_the_cli_and_the_capture_package_does_not_import_jax():
    """``precond-lab capture --help`` took 3.3 s importing JAX through ``precond_lab.capture``'s
    eager imports (issue 23); the package now loads its names on first use."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import precond_lab.cli\n"
        "import precond_lab.capture, precond_lab.capture.cli\n"
        "heavy = ('jax', 'flax', 'optax', 'xarray')\n"
        "print('HEAVY', sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout, out.stdout[-500:]


def test_capture_help_names_agree_with_the_registries():
    """``capture --help`` lists the models, datasets and targets from ``_help`` (no JAX)."""
    from precond_lab import _help
    from precond_lab.capture import api, data, models

    # the built-in zoo, registered first (a test may register more after it)
    assert tuple(models.MODEL_SPECS)[: len(_help.CAPTURE_MODELS)] == _help.CAPTURE_MODELS
    assert _help.CAPTURE_DATASETS == data.DATASETS
    assert _help.CAPTURE_TARGETS == api.TARGETS


_PACKAGES = [
    "precond_lab",
    "precond_lab.capture",
    "precond_lab.estimators",
    "precond_lab.linalg",
    "precond_lab.metrics",
    "precond_lab.methods",
    "precond_lab.online",
    "precond_lab.optim",
    "precond_lab.sweep",
    "precond_lab.targets",
]


@pytest.mark.parametrize("package", _PACKAGES)
def test_every_public_name_resolves(package):
    """Every name of a package's ``__all__`` resolves (lazy ones included), and
    ``from package import *`` works."""
    import importlib

    module = importlib.import_module(package)
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing, f"{package}: {missing}"
    namespace: dict = {}
    exec(f"from {package} import *", namespace)
    assert set(module.__all__) <= set(namespace)
    assert set(module.__all__) <= set(dir(module))


def test_capture_lazy_names_are_the_submodules_objects():
    import precond_lab.capture as cap
    from precond_lab.capture import api, models, store

    assert cap.capture is api.capture and cap.StoreError is store.StoreError
    assert cap.MODELS == models.MODELS
    assert cap.cache.enable_persistent_cache is cap.enable_persistent_cache  # a submodule
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        cap.nope  # noqa: B018
    with pytest.raises(ImportError, match="nope"):
        exec("from precond_lab.capture import nope", {})


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
