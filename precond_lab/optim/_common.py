"""Shared machinery of the optimisers: leaf layout, mode products, first call, state size.

* **Layout.** A Kronecker optimiser sees each parameter leaf as a tensor of *modes*: size-1
  axes are dropped (as ``torch.squeeze`` in the reference codes); with
  ``tensor_mode="modewise"`` an order-k tensor keeps its k modes and gets one factor per mode
  (KL-Shampoo's tensor rule), with ``tensor_mode="matrix"`` it is reshaped to
  ``(prod(shape[:-1]), shape[-1])`` first. Matrices are the same under both.
* **Partition.** ``default_labels`` labels a leaf ``"kron"`` when it has at least two
  modes of size ≤ ``max_dim`` and ``"fallback"`` otherwise (biases, norm scales, 1-D
  parameters, embeddings with a huge vocabulary); ``with_fallback`` combines the two
  transformations with ``optax.partition``, so a user may pass their own labels (a
  pytree or a function of the params, optax's convention).
* **First call.** optax's ``init`` never sees a gradient; optimisers whose factors start from
  the first gradient (KL-Shampoo, KL-SOAP, SOAP) keep a step counter and branch on
  ``count == 0`` with ``jax.lax.cond`` (jit-, vmap- and pmap-safe).
* **Size.** ``state_size`` counts the floats and bytes of any optimiser state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "FALLBACK",
    "KRON",
    "StateSize",
    "conform",
    "default_labels",
    "eigh_desc",
    "leafwise",
    "mode_dot",
    "mode_gram",
    "project",
    "project_back",
    "qr_basis",
    "state_size",
    "with_fallback",
    "work_shape",
]

KRON = "kron"
FALLBACK = "fallback"
TENSOR_MODES = ("modewise", "matrix")


def work_shape(shape: Sequence[int], tensor_mode: str = "modewise") -> tuple[int, ...]:
    """The modes a Kronecker optimiser preconditions for a leaf of ``shape``.

    Args:
        shape: the leaf's shape.
        tensor_mode: ``"modewise"`` (one factor per mode) or ``"matrix"`` (order ≥ 3 reshaped
            to ``(prod(shape[:-1]), shape[-1])``).

    Returns:
        The working shape (size-1 axes dropped).

    Raises:
        ValueError: unknown ``tensor_mode``.
    """
    if tensor_mode not in TENSOR_MODES:
        raise ValueError(f"tensor_mode must be one of {TENSOR_MODES}, got {tensor_mode!r}")
    dims = tuple(int(d) for d in shape if int(d) != 1)
    if not dims:
        return (1,)
    if tensor_mode == "matrix" and len(dims) > 2:
        return (math.prod(dims[:-1]), dims[-1])
    return dims


def default_labels(params: Any, *, max_dim: int = 10_000) -> Any:
    """``"kron"`` for leaves with ≥ 2 modes all of size ≤ ``max_dim``, else ``"fallback"``."""

    def label(p):
        dims = [d for d in jnp.shape(p) if d != 1]
        return KRON if len(dims) >= 2 and max(dims) <= max_dim else FALLBACK

    return jax.tree.map(label, params)


def with_fallback(
    kron: optax.GradientTransformation,
    fallback: optax.GradientTransformation,
    *,
    labels: Any | Callable[[Any], Any] | None = None,
    max_dim: int = 10_000,
) -> optax.GradientTransformation:
    """``optax.partition`` of a Kronecker optimiser and its fallback.

    Args:
        kron: the transformation for leaves labelled ``"kron"``.
        fallback: the transformation for leaves labelled ``"fallback"``.
        labels: a pytree of labels or a function ``params -> labels``; default
            ``default_labels`` with ``max_dim``.
        max_dim: largest mode the default labels give a Kronecker factor.

    Returns:
        The combined transformation.
    """
    if labels is None:

        def labels(params):
            return default_labels(params, max_dim=max_dim)

    return optax.partition({KRON: kron, FALLBACK: fallback}, labels)


# ------------------------------------------------------------------------- mode products
def mode_dot(x: jax.Array, a: jax.Array, mode: int) -> jax.Array:
    """``a`` multiplied onto ``mode`` of ``x``: the mode-``mode`` unfolding becomes ``a X_(j)``."""
    return jnp.moveaxis(jnp.tensordot(a, x, axes=([1], [mode])), 0, mode)


def project(x: jax.Array, bases: Sequence[jax.Array]) -> jax.Array:
    """``x ×_j Q_jᵀ`` for every mode (2-D: ``Q_aᵀ X Q_b``)."""
    for j, q in enumerate(bases):
        x = mode_dot(x, q.T, j)
    return x


def project_back(x: jax.Array, bases: Sequence[jax.Array]) -> jax.Array:
    """``x ×_j Q_j`` for every mode (2-D: ``Q_a X Q_bᵀ``)."""
    for j, q in enumerate(bases):
        x = mode_dot(x, q, j)
    return x


def mode_gram(x: jax.Array, mode: int) -> jax.Array:
    """``X_(j) X_(j)ᵀ``: contracts every axis except ``mode`` (2-D: ``XXᵀ`` or ``XᵀX``)."""
    others = [i for i in range(x.ndim) if i != mode]
    return jnp.tensordot(x, x, axes=(others, others))


def other_size(shape: Sequence[int], mode: int) -> int:
    """``Π_{i≠j} d_i``."""
    return math.prod(d for i, d in enumerate(shape) if i != mode)


# -------------------------------------------------------------------------------- linalg
def linalg_dtype(dtype: Any) -> Any:
    """``eigh``/``qr`` run in float64 for float64 states and in float32 otherwise."""
    return jnp.float64 if jnp.dtype(dtype) == jnp.float64 else jnp.float32


def eigh_desc(s: jax.Array) -> jax.Array:
    """Eigenvectors of a symmetric matrix, eigenvalues descending (as the reference codes)."""
    s32 = s.astype(linalg_dtype(s.dtype))
    _, q = jnp.linalg.eigh(0.5 * (s32 + s32.T))
    return q[:, ::-1].astype(s.dtype)


def qr_basis(s: jax.Array, q: jax.Array) -> jax.Array:
    """One power step plus QR, ``QR(S Q).Q`` (the basis refresh of KL-Shampoo and SOAP)."""
    dt = linalg_dtype(s.dtype)
    q_new, _ = jnp.linalg.qr(s.astype(dt) @ q.astype(dt))
    return q_new.astype(q.dtype)


def resolve_dtype(state_dtype: Any, like: jax.Array) -> Any:
    """The state dtype: ``state_dtype`` or, when None, the parameter's dtype."""
    dt = jnp.dtype(like.dtype if state_dtype is None else state_dtype)
    if not jnp.issubdtype(dt, jnp.floating):
        raise ValueError(f"state_dtype must be a floating dtype, got {dt}")
    return dt


# ---------------------------------------------------------------------- leaf-wise update
def map_leaves(fn: Callable[..., tuple[Any, Any]], updates: Any, *rest: Any) -> tuple[Any, Any]:
    """Apply ``fn(u, *r) -> (new_u, new_leaf_state)`` leaf by leaf of ``updates``.

    ``rest`` are trees with ``updates`` as a prefix (per-leaf states, params); leaves that
    optax's masking replaced by ``MaskedNode`` carry no arrays and are skipped naturally.
    """
    leaves, treedef = jax.tree.flatten(updates)
    others = [treedef.flatten_up_to(r) for r in rest]
    out = [fn(u, *rs) for u, *rs in zip(leaves, *others, strict=True)]
    new_u = treedef.unflatten([o[0] for o in out])
    new_s = treedef.unflatten([o[1] for o in out])
    return new_u, new_s


def leafwise(fn: Callable[..., tuple[Any, Any]], updates: Any, leaves: Any) -> tuple[Any, Any]:
    """``map_leaves`` with each update reshaped to its state's working shape and dtype.

    ``fn(g, leaf) -> (direction, new_leaf)`` sees ``g`` shaped and typed as ``leaf.mu``; the
    direction comes back in the update's shape and dtype.
    """

    def one(u, leaf):
        g = u.reshape(leaf.mu.shape).astype(leaf.mu.dtype)
        d, new = fn(g, leaf)
        return d.reshape(u.shape).astype(u.dtype), new

    return map_leaves(one, updates, leaves)


def conform(leaves: Any, init: Callable[[Any], Any], updates: Any) -> Any:
    """The per-leaf states ``leaves`` in the structure ``init(updates).leaves`` would have.

    Containers that rebuild an optimiser state as nested mappings (Flax NNX's ``Optimizer``
    turns the per-leaf ``NamedTuple``s and tuples into ``State``s, keys sorted) keep the
    arrays but not the node types; the leaf states' fields are declared in alphabetical
    order, so the arrays come back in the same order and are re-assembled here.

    Raises:
        ValueError: the number of arrays does not match (not this optimiser's state).
    """
    template = jax.tree.structure(jax.eval_shape(init, updates).leaves)
    if jax.tree.structure(leaves) == template:
        return leaves
    arrays = jax.tree.leaves(leaves)
    if len(arrays) != template.num_leaves:
        raise ValueError(
            f"optimiser state has {len(arrays)} arrays, this optimiser expects "
            f"{template.num_leaves}: was it built by the same optimiser for these params?"
        )
    return template.unflatten(arrays)


class ScaleDecayState(NamedTuple):
    """Step counter of ``scale_and_decay`` (for learning-rate schedules)."""

    count: jax.Array


def scale_and_decay(
    learning_rate: Any, weight_decay: float, *, skip_first: bool = False
) -> optax.GradientTransformation:
    """``W ← W − η·U`` followed by decoupled weight decay on the updated weights.

    The reference codes of KL-Shampoo and SOAP decay *after* the step,
    ``W ← (W − ηU) − η·wd·(W − ηU)``; ``learning_rate`` may be an optax schedule. With
    ``skip_first`` the first call (an initialising call of KL-Shampoo, KL-SOAP or SOAP, which
    the reference codes skip entirely) does not decay either.
    """
    wd = float(weight_decay)

    def init(params):
        del params
        return ScaleDecayState(jnp.zeros([], jnp.int32))

    def update(updates, state, params=None):
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        new = jax.tree.map(lambda u: -lr * u, updates)
        if wd:
            if params is None:
                raise ValueError("weight decay needs the params: call update(g, state, params)")
            decay = lr * wd if not skip_first else jnp.where(state.count == 0, 0.0, lr * wd)
            new = jax.tree.map(lambda u, p: u - decay * (p + u), new, params)
        return new, ScaleDecayState(optax.safe_increment(state.count))

    return optax.GradientTransformation(init, update)


def step_with_adamw_fallback(
    direction: optax.GradientTransformation,
    learning_rate: Any,
    *,
    b1: float,
    b2: float,
    eps: float,
    weight_decay: float,
    labels: Any,
    max_dim: int,
    fallback: optax.GradientTransformation | None,
    skip_first: bool,
) -> optax.GradientTransformation:
    """A Kronecker direction's step (``scale_and_decay``) on the matrix leaves, and
    ``fallback`` — by default AdamW with the same ``b1, b2, eps, weight_decay`` — on the
    others (``with_fallback``)."""
    kron = optax.chain(
        direction, scale_and_decay(learning_rate, weight_decay, skip_first=skip_first)
    )
    if fallback is None:
        fallback = optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    return with_fallback(kron, fallback, labels=labels, max_dim=max_dim)


# ----------------------------------------------------------------------------- state size
class StateSize(NamedTuple):
    """Size of an optimiser state.

    Attributes:
        floats: number of floating-point entries.
        bytes: bytes of all arrays (counters included).
        arrays: number of arrays.
    """

    floats: int
    bytes: int
    arrays: int


def state_size(state: Any) -> StateSize:
    """Floats and bytes of any optax state (a pytree of arrays)."""
    floats = nbytes = arrays = 0
    for leaf in jax.tree.leaves(state):
        a = jnp.asarray(leaf)
        arrays += 1
        nbytes += a.size * a.dtype.itemsize
        if jnp.issubdtype(a.dtype, jnp.floating):
            floats += a.size
    return StateSize(floats, nbytes, arrays)
