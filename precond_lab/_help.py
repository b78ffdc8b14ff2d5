"""The ``--help`` formatter of the command line (standard library only: imported on
``precond-lab --help`` and ``--version``, which must not import JAX)."""

from __future__ import annotations

import argparse

__all__ = ["CAPTURE_DATASETS", "CAPTURE_HELP", "CAPTURE_MODELS", "CAPTURE_TARGETS", "HelpFormatter"]

#: The capture subcommand's line in ``precond-lab --help``.
CAPTURE_HELP = "train a model and capture per-example gradients, GGN and K-FAC factors"

# The names ``precond-lab capture --help`` lists, without importing the registries (they
# import JAX): ``capture.models.MODELS`` (the built-in zoo), ``capture.data.DATASETS`` and
# ``capture.api.TARGETS``. tests/test_cli.py checks that they agree.
CAPTURE_MODELS = ("mlp", "cnn", "transformer")
CAPTURE_DATASETS = ("digits", "mnist", "binary-mnist", "mnist1d", "stdlib-chars", "teacher")
CAPTURE_TARGETS = (
    "gradients",
    "ggn",
    "ggn-mc",
    "kfac",
    "kfac-ggn",
    "kfac-mc",
    "batch",
    "trajectory",
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: …)`` once, only for a real default (not None/False, not when the
    help already says its default), with lists as ``a,b`` the way they are typed."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            default in (None, False, argparse.SUPPRESS)
            or "default" in text
            or action.required
            or isinstance(action, argparse._HelpAction | argparse._VersionAction)
        ):
            return text
        if isinstance(default, list | tuple):
            shown = ",".join(str(v) for v in default).replace("%", "%%")
        else:
            shown = "%(default)s"
        return f"{text} (default: {shown})"
