"""Parameter paths and matricization of parameters (and their gradients) into ``m × n``.

A parameter is named by its pytree path with ``/`` separators: ``{"layers": [{"w": ...}]}``
has ``"layers/0/w"``. Matricization (rows = output side, row-major vec):

====================  =====================================================================
parameter shape       matrix
====================  =====================================================================
``()``                ``(1, 1)``
``(m,)`` (bias)       ``(m, 1)``
``(m, n)``            unchanged (``out × in``, as ``Tape``)
``(kh, kw, in, out)`` conv kernel in HWIO layout → ``(out, in·kh·kw)``, column
                      ``c·kh·kw + i·kw + j`` (the order of the built-in CNN)
other (3-D, 5-D, …)   rows = axis 0, columns = the other axes flattened in order; e.g. an
                      attention tensor ``(heads, d_model, d_head)`` → ``heads × (d_model·d_head)``
====================  =====================================================================

Any parameter can instead name its row axes explicitly (``row_axes={"path": (1, 2)}``):
rows are those axes flattened in the given order, columns the remaining axes in order.

Framework presets (``LAYOUTS``, ``preset_row_axes``) name the output side of every
``≥ 2``-d weight: ``"flax"`` kernels are ``(in, out)`` and ``(kh, kw, in, out)`` (HWIO), so
rows = the last axis; ``"torch"`` (PyTorch, Equinox) weights are ``(out, in)`` and
``(out, in, kh, kw)`` (OIHW), so rows = axis 0. ``precond_lab.capture.capture_model``
picks the preset from the model object, and layers found in the jaxpr
(``.discover``) take their rows from the graph. A ``≥ 3``-d parameter matricized by the
default rule (no preset, no override) raises a ``LayoutWarning``: its layout is a
guess.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax

__all__ = [
    "LAYOUTS",
    "LayoutWarning",
    "path_str",
    "flat_params",
    "merge_params",
    "row_axes_for",
    "col_axes_for",
    "preset_row_axes",
    "warn_guessed",
    "describe",
    "matrix_shape",
    "to_matrix",
]

#: Framework layout presets: ``auto`` (the default rule), ``flax``, ``torch`` (also Equinox).
LAYOUTS = ("auto", "flax", "torch")


class LayoutWarning(UserWarning):
    """A parameter's matricization was guessed (a ``≥ 3``-d tensor without preset/override)."""


def path_str(keypath) -> str:
    """``"layers/0/w"`` from a JAX key path."""
    parts = []
    for k in keypath:
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def flat_params(params) -> dict[str, Any]:
    """``{path: leaf}`` in pytree order."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(params)
    return {path_str(kp): leaf for kp, leaf in leaves}


def merge_params(params, replace: Mapping[str, Any]):
    """``params`` with the leaves named in ``replace`` swapped (works under tracing)."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    new = [replace.get(path_str(kp), leaf) for kp, leaf in leaves]
    return jax.tree_util.tree_unflatten(treedef, new)


def row_axes_for(shape: Sequence[int], override: Sequence[int] | None = None) -> tuple[int, ...]:
    """The axes forming rows for a parameter of ``shape`` (see the module docstring)."""
    nd = len(shape)
    if override is not None:
        axes = tuple(int(a) for a in override)
        if not axes or len(set(axes)) != len(axes) or any(not 0 <= a < nd for a in axes):
            raise ValueError(f"row_axes {tuple(override)} are invalid for a {nd}-d parameter")
        return axes
    if nd == 0:
        return ()
    if nd == 4:
        return (3,)
    return (0,)


def col_axes_for(nd: int, rows: Sequence[int]) -> tuple[int, ...]:
    """The column axes, in column order, of a ``nd``-d parameter with row axes ``rows``."""
    return _perm(nd, tuple(rows))[1]


def preset_row_axes(shape: Sequence[int], layout: str) -> tuple[int, ...] | None:
    """Row axes of a parameter under a framework preset (None: the default rule applies).

    Raises:
        ValueError: unknown ``layout``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; valid layouts: {', '.join(LAYOUTS)}")
    nd = len(shape)
    if layout == "auto" or nd < 2:
        return None
    return (nd - 1,) if layout == "flax" else (0,)


def warn_guessed(shapes: Mapping[str, Sequence[int]], overrides: Mapping[str, Any]) -> None:
    """Warn (``LayoutWarning``) for each ``≥ 3``-d parameter with no explicit rows."""
    for p, shape in shapes.items():
        if len(shape) >= 3 and p not in overrides:
            rows = row_axes_for(shape)
            warnings.warn(
                f"parameter {p!r} of shape {tuple(shape)}: layout guessed, rows = axes {rows} "
                f"({describe(shape, rows)}); pass layout='flax'/'torch' or "
                f"row_axes={{{p!r}: (...)}} to say which axes are the output side",
                LayoutWarning,
                stacklevel=3,
            )


def describe(shape: Sequence[int], rows: Sequence[int]) -> str:
    """``"rows = axes (3,) [8], cols = axes (2, 0, 1) [3x3x3] → 8x27"``."""
    r, c = _perm(len(shape), tuple(rows))
    m, n = matrix_shape(shape, tuple(rows))

    def sizes(axes):
        return "x".join(str(shape[a]) for a in axes) or "1"

    return f"rows = axes {r} [{sizes(r)}], cols = axes {c} [{sizes(c)}] -> {m}x{n}"


def _perm(nd: int, rows: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if nd == 4 and rows == (3,):
        return rows, (2, 0, 1)
    return rows, tuple(a for a in range(nd) if a not in rows)


def matrix_shape(shape: Sequence[int], rows: tuple[int, ...]) -> tuple[int, int]:
    """``(m, n)`` of the matricized parameter."""
    r, c = _perm(len(shape), rows)
    return math.prod(shape[a] for a in r), math.prod(shape[a] for a in c)


def to_matrix(x, lead: int, shape: Sequence[int], rows: tuple[int, ...]):
    """Matricize ``x`` of shape ``(*batch, *shape)`` (``lead`` batch axes) to ``(*batch, m, n)``."""
    r, c = _perm(len(shape), rows)
    axes = tuple(range(lead)) + tuple(lead + a for a in (*r, *c))
    m, n = matrix_shape(shape, rows)
    return x.transpose(axes).reshape(*x.shape[:lead], m, n)
