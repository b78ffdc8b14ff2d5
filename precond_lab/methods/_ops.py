"""Leaf layout, mode products and the small linear algebra every method shares.

* **Layout.** A Kronecker method sees each parameter leaf as a tensor of *modes*: size-1
  axes are dropped (as ``torch.squeeze`` in the reference codes); with
  ``tensor_mode="modewise"`` an order-k tensor keeps its k modes and gets one factor per
  mode (KL-Shampoo's tensor rule), with ``tensor_mode="matrix"`` it is reshaped to
  ``(prod(shape[:-1]), shape[-1])`` first. Matrices are the same under both. Diagonal
  methods (RF-RMSProp, Adam) keep the leaf's own shape (``tensor_mode="leaf"``).
* **Batches.** Every statistic is computed from a *batch* ``gb`` of shape ``(N, *modes)``:
  the mean over the batch of the per-sample statistics. An optimiser passes its gradient
  as a batch of one; an online estimator fed per-example gradients passes them all, so the
  same code computes ``E[G Gᵀ]`` from either.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
    "TENSOR_MODES",
    "cast_like",
    "eigh",
    "eigh_desc",
    "linalg_dtype",
    "all_finite",
    "batch_mode_dot",
    "map_leaves",
    "mode_dot",
    "mode_gram",
    "other_size",
    "project",
    "project_back",
    "qr_basis",
    "qr_q",
    "resolve_dtype",
    "work_shape",
]

TENSOR_MODES = ("modewise", "matrix", "leaf")


def work_shape(shape: Sequence[int], tensor_mode: str = "modewise") -> tuple[int, ...]:
    """The modes a method works on for a leaf of ``shape``.

    Args:
        shape: the leaf's shape.
        tensor_mode: ``"modewise"`` (one factor per mode), ``"matrix"`` (order ≥ 3
            reshaped to ``(prod(shape[:-1]), shape[-1])``) or ``"leaf"`` (the shape as is).

    Returns:
        The working shape (size-1 axes dropped, except under ``"leaf"``).

    Raises:
        ValueError: unknown ``tensor_mode``.
    """
    if tensor_mode not in TENSOR_MODES:
        raise ValueError(f"tensor_mode must be one of {TENSOR_MODES}, got {tensor_mode!r}")
    if tensor_mode == "leaf":
        return tuple(int(d) for d in shape)
    dims = tuple(int(d) for d in shape if int(d) != 1)
    if not dims:
        return (1,)
    if tensor_mode == "matrix" and len(dims) > 2:
        return (math.prod(dims[:-1]), dims[-1])
    return dims


def mode_dot(x: jax.Array, a: jax.Array, mode: int) -> jax.Array:
    """``a`` multiplied onto axis ``mode`` of ``x``: the unfolding becomes ``a X_(mode)``."""
    return jnp.moveaxis(jnp.tensordot(a, x, axes=([1], [mode])), 0, mode)


def project(x: jax.Array, bases: Sequence[jax.Array], offset: int = 0) -> jax.Array:
    """``x ×_j Q_jᵀ`` for every mode ``j`` (axis ``j + offset``; 2-D: ``Q_aᵀ X Q_b``)."""
    if offset == 1 and x.shape[0] == 1:  # a batch of one: the unbatched products
        return project(x[0], bases)[None]
    for j, q in enumerate(bases):
        x = mode_dot(x, q.T, j + offset)
    return x


def project_back(x: jax.Array, bases: Sequence[jax.Array], offset: int = 0) -> jax.Array:
    """``x ×_j Q_j`` for every mode (2-D: ``Q_a X Q_bᵀ``)."""
    for j, q in enumerate(bases):
        x = mode_dot(x, q, j + offset)
    return x


def mode_gram(gb: jax.Array, mode: int) -> jax.Array:
    """``mean_k G_k,(j) G_k,(j)ᵀ`` of a batch ``(N, *modes)`` (2-D: ``E[GGᵀ]`` or ``E[GᵀG]``).

    A batch of one (an optimiser's gradient) takes the unbatched product.
    """
    if gb.shape[0] == 1:
        x = gb[0]
        others = [i for i in range(x.ndim) if i != mode]
        return jnp.tensordot(x, x, axes=(others, others))
    others = [i for i in range(gb.ndim) if i != mode + 1]
    return jnp.tensordot(gb, gb, axes=(others, others)) / gb.shape[0]


def batch_mode_dot(gb: jax.Array, a: jax.Array, mode: int) -> jax.Array:
    """``a`` onto mode ``mode`` of every sample of a batch ``(N, *modes)``."""
    if gb.shape[0] == 1:
        return mode_dot(gb[0], a, mode)[None]
    return mode_dot(gb, a, mode + 1)


def other_size(shape: Sequence[int], mode: int) -> int:
    """``Π_{i≠j} d_i``."""
    return math.prod(d for i, d in enumerate(shape) if i != mode)


def _looped_on_cpu(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` whose ``vmap`` on the CPU backend loops over the batch (``lax.map``).

    jaxlib's CPU LAPACK kernels split a batched ``eigh``/``qr`` into chunks on XLA:CPU's
    own thread pool and block until they finish; when as many batched decompositions run
    at once as the pool has threads (a ``vmap`` over learning rates of an optimiser with
    two or more factors larger than ~30×30), every thread waits and the process hangs at
    0 % CPU. Unbatched calls run inline. Elsewhere the batched kernels are kept.
    """
    f = jax.custom_batching.custom_vmap(fn)

    @f.def_vmap
    def rule(axis_size, in_batched, *args):
        args = [
            a if b else jnp.broadcast_to(a, (axis_size, *jnp.shape(a)))
            for a, b in zip(args, in_batched, strict=True)
        ]
        if jax.default_backend() == "cpu":
            out = jax.lax.map(lambda xs: f(*xs), tuple(args))
        else:
            out = jax.vmap(fn)(*args)
        return out, jax.tree.map(lambda _: True, out)

    return f


#: ``jnp.linalg.eigh`` and the ``Q`` of ``jnp.linalg.qr``, safe under ``vmap`` on CPU.
eigh = _looped_on_cpu(lambda x: jnp.linalg.eigh(x))
qr_q = _looped_on_cpu(lambda x: jnp.linalg.qr(x)[0])


def linalg_dtype(dtype: Any) -> Any:
    """``eigh``/``qr`` run in float64 for float64 states and in float32 otherwise."""
    return jnp.float64 if jnp.dtype(dtype) == jnp.float64 else jnp.float32


def eigh_desc(s: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(values, vectors)`` of a symmetric matrix, eigenvalues descending (as the codes)."""
    s32 = s.astype(linalg_dtype(s.dtype))
    w, q = eigh(0.5 * (s32 + s32.T))
    return w[::-1].astype(s.dtype), q[:, ::-1].astype(s.dtype)


def qr_basis(s: jax.Array, q: jax.Array) -> jax.Array:
    """One power step plus QR, ``QR(S Q).Q`` (the basis refresh of KL-Shampoo and SOAP)."""
    dt = linalg_dtype(s.dtype)
    return qr_q(s.astype(dt) @ q.astype(dt)).astype(q.dtype)


def resolve_dtype(state_dtype: Any, like: Any) -> Any:
    """The state dtype: ``state_dtype`` or, when None, the parameter's dtype.

    Raises:
        TypeError: ``state_dtype`` is not a floating dtype.
    """
    try:
        dt = jnp.dtype(jnp.result_type(like) if state_dtype is None else state_dtype)
    except TypeError as exc:
        raise TypeError(f"state_dtype must be a floating dtype, got {state_dtype!r}") from exc
    if not jnp.issubdtype(dt, jnp.floating):
        raise TypeError(f"state_dtype must be a floating dtype (e.g. jnp.float32), got {dt}")
    return dt


def map_leaves(fn: Callable[..., tuple[Any, Any]], updates: Any, *rest: Any) -> tuple[Any, Any]:
    """Apply ``fn(u, *r) -> (new_u, new_leaf_state)`` leaf by leaf of ``updates``.

    ``rest`` are trees with ``updates`` as a prefix (per-leaf states, params); leaves that
    optax's masking replaced by ``MaskedNode`` carry no arrays and are skipped naturally.
    """
    leaves, treedef = jax.tree.flatten(updates)
    others = [treedef.flatten_up_to(r) for r in rest]
    out = [fn(u, *rs) for u, *rs in zip(leaves, *others, strict=True)]
    return treedef.unflatten([o[0] for o in out]), treedef.unflatten([o[1] for o in out])


def cast_like(tree: Any, like: Any) -> Any:
    """``tree``'s arrays cast to the dtypes of ``like``'s (a state keeps its dtype whatever
    the dtype of injected hyper-parameters)."""
    return jax.tree.map(lambda x, y: jnp.asarray(x).astype(jnp.result_type(y)), tree, like)


def all_finite(tree: Any) -> jax.Array:
    """Whether every floating-point leaf of ``tree`` is finite (a scalar boolean array)."""
    checks = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(jnp.result_type(x), jnp.inexact)
    ]
    return jnp.all(jnp.stack(checks)) if checks else jnp.asarray(True)
