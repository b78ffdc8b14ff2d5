"""``precond-lab capture``: the command-line front end of ``precond_lab.capture.capture``.

Example::

    precond-lab capture --model mlp --dataset digits --steps 0,50,200 \\
        --targets gradients,ggn,ggn-mc,kfac --layers layers/0/w --out run.zarr

Wire it with ``add_parser(subparsers)`` and call ``run(args)`` (returns the exit code:
0 on success, 2 for invalid input, 1 for a store problem).
"""

from __future__ import annotations

import argparse
import json
import sys

# Standard library only at import: ``precond-lab capture --help`` must not import JAX.
from .._help import (
    CAPTURE_DATASETS,
    CAPTURE_HELP,
    CAPTURE_MODELS,
    CAPTURE_TARGETS,
    HelpFormatter,
)

__all__ = ["add_parser", "run", "HELP"]

#: One line for ``precond-lab --help`` (in ``_help``: the top-level help imports nothing).
HELP = CAPTURE_HELP
DESCRIPTION = (
    "Train a built-in model on a dataset and, at the chosen steps, capture per-example "
    "gradients, Gauss-Newton pseudo-gradients and K-FAC factors of its layers into a Zarr "
    "store (resumed if it exists)."
)
EPILOG = (
    "example: precond-lab capture --model mlp --dataset digits --steps 0,50,200 "
    "--targets gradients,ggn,ggn-mc,kfac --layers layers/0/w --out run.zarr"
)


def _ints(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers; got {text!r}"
        ) from None


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``capture`` subcommand to an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "capture",
        help=HELP,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    p.add_argument("--model", default="mlp", help=f"one of: {', '.join(CAPTURE_MODELS)}")
    p.add_argument("--dataset", default="digits", help=f"one of: {', '.join(CAPTURE_DATASETS)}")
    p.add_argument("--steps", type=_ints, default=[0], help="comma-separated steps, e.g. 0,50,200")
    p.add_argument(
        "--targets",
        type=_names,
        default=["gradients"],
        help=f"comma-separated, from: {', '.join(CAPTURE_TARGETS)}",
    )
    p.add_argument(
        "--layers",
        type=_names,
        default=None,
        help="comma-separated parameter paths (default: every layer's weight)",
    )
    p.add_argument("--out", required=True, help="output Zarr store (resumed if it exists)")
    p.add_argument("--num-samples", type=int, default=64, help="examples captured per step")
    p.add_argument("--batch-size", type=int, default=32, help="training mini-batch size")
    p.add_argument("--batch-sizes", type=_ints, default=[8], help="for the batch target")
    p.add_argument("--mc-samples", type=int, default=8, help="sampled labels per example (ggn-mc)")
    p.add_argument("--optimizer", default="sgd", help="sgd, momentum or adam")
    p.add_argument("--lr", type=float, default=0.1, help="training learning rate")
    p.add_argument("--seed", type=int, default=0, help="seed of data order, init and labels")
    p.add_argument(
        "--dtype", default="float32", choices=["float32", "float64"], help="capture dtype"
    )
    p.add_argument("--model-options", default="{}", help="JSON, e.g. '{\"hidden\": [64, 64]}'")
    p.add_argument(
        "--storage",
        default="auto",
        choices=["auto", "dense", "factored"],
        help="per-example gradients/ggn/ggn-mc as factors (δ, a) where smaller (auto), always "
        "(factored) or as dense arrays (dense)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run the capture described by ``args``; print a summary. Returns the exit code."""
    from ..schema import step_name
    from .api import capture
    from .store import StoreError, validate_store

    try:
        if args.layers is not None and not args.layers:
            raise ValueError("--layers names no layer (omit it for every layer weight)")
        options = json.loads(args.model_options)
        if not isinstance(options, dict):
            raise ValueError("--model-options must be a JSON object")
        if args.dtype == "float64":
            import jax

            jax.config.update("jax_enable_x64", True)
        tree = capture(
            args.model,
            args.dataset,
            steps=args.steps,
            targets=args.targets,
            layers=args.layers,
            out=args.out,
            num_samples=args.num_samples,
            batch_size=args.batch_size,
            batch_sizes=args.batch_sizes,
            mc_samples=args.mc_samples,
            optimizer=args.optimizer,
            learning_rate=args.lr,
            seed=args.seed,
            dtype=args.dtype,
            model_options=options,
            progress=not args.no_progress,
            storage=args.storage,
        )
        steps = validate_store(args.out)
    except StoreError as e:
        print(f"precond-lab capture: store error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"precond-lab capture: cannot write {args.out}: {e}", file=sys.stderr)
        return 1
    except (ValueError, TypeError) as e:
        print(f"precond-lab capture: error: {e}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.out}: model {tree.attrs['model']}, dataset {tree.attrs['dataset']}, "
        f"{tree.attrs['num_samples']} samples, targets {tree.attrs['targets']}"
    )
    print(f"layers: {tree.attrs['layers']} (matrices {tree.attrs['layer_shapes']})")
    for s in steps:
        a = tree[step_name(s)].attrs
        acc = "" if a["accuracy"] < 0 else f", accuracy {a['accuracy']:.3f}"
        test = "" if a["test_accuracy"] < 0 else f", test accuracy {a['test_accuracy']:.3f}"
        print(f"  step {s}: loss {a['loss']:.4f}{acc}{test}")
    return 0
