"""Parameter paths and matricization of parameters (and their gradients) into ``m × n``.

A parameter is named by its pytree path with ``/`` separators: ``{"layers": [{"w": ...}]}``
has ``"layers/0/w"``. Matricization (rows = output side, row-major vec):

====================  =====================================================================
parameter shape       matrix
====================  =====================================================================
``()``                ``(1, 1)``
``(m,)`` (bias)       ``(m, 1)``
``(m, n)``            unchanged (``out × in``, as :class:`~precond_lab.capture.models.Tape`)
``(kh, kw, in, out)`` conv kernel in HWIO layout → ``(out, in·kh·kw)``, column
                      ``c·kh·kw + i·kw + j`` (the order of the built-in CNN)
other (3-D, 5-D, …)   rows = axis 0, columns = the other axes flattened in order; e.g. an
                      attention tensor ``(heads, d_model, d_head)`` → ``heads × (d_model·d_head)``
====================  =====================================================================

Any parameter can instead name its row axes explicitly (``row_axes={"path": (1, 2)}``):
rows are those axes flattened in the given order, columns the remaining axes in order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax

__all__ = ["path_str", "flat_params", "merge_params", "row_axes_for", "matrix_shape", "to_matrix"]


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
