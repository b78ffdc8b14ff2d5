"""The ``precond-lab`` command line.

Subcommands:

* ``demo``    — estimate and score every method on real gradients (sklearn digits), with
  a dense float64 cross-check; the README's main job.
* ``capture`` — capture per-example gradients, Gauss–Newton pseudo-gradients and
  K-FAC factors from the built-in model zoo into a Zarr store.
* ``reproduce`` — run the claim studies of ``studies/`` (``--quick`` / ``--full``,
  ``--only NAME``), write ``figures/`` and ``REPORT.md``.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main", "build_parser"]


def _check_output(path, what: str) -> None:
    """Fail before any work if ``path`` cannot be written (missing or read-only folder)."""
    import os
    from pathlib import Path

    folder = Path(path).resolve().parent
    if not folder.is_dir():
        raise FileNotFoundError(f"{what}: the folder {folder} does not exist (create it first)")
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"{what}: the folder {folder} is not writable")


def _run_demo(args: argparse.Namespace) -> int:
    if args.train_steps < 0:
        raise ValueError(f"--train-steps must be ≥ 0; got {args.train_steps}")
    if args.out:
        _check_output(args.out, "--out")
    import jax

    jax.config.update("jax_enable_x64", not args.float32)
    import numpy as np

    from .demo import format_table, run_demo

    if not args.no_progress:
        print(
            f"demo: training softmax regression on digits ({args.train_steps} steps), then "
            "fitting and scoring every estimator (about a minute on a laptop CPU)",
            file=sys.stderr,
        )
    result = run_demo(
        check_dense=not args.no_dense_check,
        dtype=np.float32 if args.float32 else np.float64,
        steps=args.train_steps,
        progress=not args.no_progress,
    )
    print(format_table(result))
    if args.out:
        import xarray as xr

        rows = result["rows"]
        ds = xr.Dataset.from_dataframe(_frame(rows).set_index(["target", "estimator"]))
        ds.attrs.update(
            description="precond_lab demo: every estimator scored on sklearn digits",
            damping_empirical_fisher=result["damping"]["empirical_fisher"],
            damping_ggn=result["damping"]["ggn"],
        )
        from ._atomic import atomic_write

        atomic_write(args.out, ds.to_netcdf)
        print(f"\nwrote {args.out}")
    return 0


def _run_reproduce(args: argparse.Namespace) -> int:
    from .study import FAILS, reproduce, study_modules

    preset = "full" if args.full else "medium" if args.medium else "quick"
    only = [o.strip() for part in (args.only or []) for o in part.split(",") if o.strip()]
    if args.only is not None and not only:
        names = ", ".join(sorted(m.NAME for m in study_modules(None)))
        raise ValueError(f"--only names no study; available: {names}")
    if preset == "medium" and not only:  # the studies that have one; the others keep theirs
        only = [m.NAME for m in study_modules(None) if "medium" in m.PRESETS]
    study_modules(only or None)  # unknown names fail here, before anything is written
    for path, what in ((args.figures, "--figures"), (args.report, "--report")):
        if path is not None:
            _check_output(path if what == "--report" else f"{path}/x", what)
    records = reproduce(preset=preset, only=only or None, figdir=args.figures, report=args.report)
    errors = [r["name"] for r in records if r["error"]]
    verdicts = [v for r in records for v in r["verdicts"]]
    print(
        f"\n{len(records)} studies, {len(verdicts)} verdicts: "
        f"{sum(v.verdict == FAILS for v in verdicts)} 'does not hold', "
        f"{len(errors)} failed studies{(' (' + ', '.join(errors) + ')') if errors else ''}"
    )
    return 1 if errors else 0


def _frame(rows):
    import pandas as pd

    return pd.DataFrame(rows)


def build_parser(*, capture: bool = True) -> argparse.ArgumentParser:
    """The parser of every subcommand.

    Args:
        capture: build the ``capture`` subcommand's options (their help lists the models,
            datasets and targets, which imports JAX); False gives it only its help line,
            for a command line that is not ``capture`` (``--version``, ``--help``,
            ``demo``, ``reproduce``), which then starts without importing JAX.

    Returns:
        The ``argparse`` parser.
    """
    from ._help import CAPTURE_HELP, HelpFormatter
    from ._version import __version__

    parser = argparse.ArgumentParser(
        prog="precond-lab",
        description="Check what Kronecker-factored preconditioners approximate, on real gradients.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"precond-lab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    fmt = {"formatter_class": HelpFormatter}
    demo = sub.add_parser(
        "demo", help="score every estimator on real gradients (sklearn digits)", **fmt
    )
    demo.add_argument("--float32", action="store_true", help="run in float32 instead of float64")
    demo.add_argument(
        "--no-dense-check", action="store_true", help="skip the dense float64 cross-check"
    )
    demo.add_argument("--train-steps", type=int, default=30, help="full-batch GD steps first")
    demo.add_argument("--out", help="also write the table as netCDF")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    demo.set_defaults(func=_run_demo)
    rep = sub.add_parser(
        "reproduce", help="run the claim studies; write figures/ and REPORT.md", **fmt
    )
    group = rep.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="laptop-CPU preset (default)")
    group.add_argument(
        "--medium",
        action="store_true",
        help="the training studies' 2-core-CPU preset (≤ 60 min); other studies keep their "
        "saved sections",
    )
    group.add_argument("--full", action="store_true", help="the larger, GPU-scale preset")
    rep.add_argument("--only", action="append", help="study name(s), comma-separated")
    rep.add_argument("--figures", default=None, help="figure folder (default: <clone>/figures)")
    rep.add_argument("--report", default=None, help="report path (default: <clone>/REPORT.md)")
    rep.set_defaults(func=_run_reproduce)
    if capture:
        from .capture import cli as capture_cli

        capture_cli.add_parser(sub)
    else:
        sub.add_parser("capture", help=CAPTURE_HELP, add_help=False)
    return parser


def _command(argv: list[str]) -> str | None:
    """The subcommand of ``argv`` (its first word that is not an option), or None."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; user mistakes print one line (no traceback) and return 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(capture=_command(argv) == "capture")
    args = parser.parse_args(argv)
    from .errors import PrecondLabError

    try:
        return int(args.func(args) or 0)
    except (PrecondLabError, ValueError, OSError) as err:
        print(f"precond-lab {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
