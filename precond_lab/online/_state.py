"""The online-estimator type and the shared gradient statistics.

An online estimator is an optax-style pair of pure functions (modelled on optax's
``GradientTransformation`` and ``scale_by_adam``): ``init(G0) -> state`` and
``update(state, G) -> state``, plus ``approximation(state) -> Structure``, the estimate
of ``Σ`` the state stands for. States are ``typing.NamedTuple``s of arrays (pytrees, so
``update`` is jit-able, scannable and vmappable); hyper-parameters live in the closure
built by the estimator's factory (e.g. ``kl_shampoo(beta=0.98)``), never in the state.

Every update accepts either one gradient ``G`` of shape ``(m, n)`` (e.g. a mini-batch
mean gradient; root-free methods then multiply its outer products by the batch size
``B``) or a batch of per-example gradients ``(N, m, n)``, whose statistics are the
batch means of the per-example outer products (no ``B`` factor: they already
estimate ``E[ggᵀ]``).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from ..structures import Structure

__all__ = [
    "ApproximationFn",
    "InitFn",
    "OnlineEstimator",
    "UpdateFn",
    "batch_factor",
    "batch_left",
    "batch_right",
    "batch_square",
]


class InitFn(Protocol):
    """``init(G0) -> state``: the state after the first gradient (or batch) ``G0``."""

    def __call__(self, g0: jax.Array) -> Any: ...


class UpdateFn(Protocol):
    """``update(state, G) -> state``: one online step (jitted, pure)."""

    def __call__(self, state: Any, g: jax.Array) -> Any: ...


class ApproximationFn(Protocol):
    """``approximation(state) -> Structure``: the estimate of ``Σ`` (not its inverse)."""

    def __call__(self, state: Any) -> Structure: ...


class OnlineEstimator(NamedTuple):
    """An online estimator: ``(init, update)`` as in optax, and how to read its state.

    Attributes:
        init: ``init(G0) -> state``; ``G0`` is ``(m, n)`` or ``(N, m, n)``.
        update: ``update(state, G) -> state`` (jitted; the state is a NamedTuple pytree).
        approximation: ``state -> Structure`` approximating ``Σ`` (not its inverse).
        power: the power the optimizer applies, ``S^{-power}`` (0.5 root, 1 root-free).
        internal_damping: whether the structure already includes the damping (then
            directions and divergences use ``approx_damping=0``).
    """

    init: InitFn
    update: UpdateFn
    approximation: ApproximationFn
    power: float = 0.5
    internal_damping: bool = False


def _batched(g: jax.Array) -> jax.Array:
    return g if g.ndim == 3 else g[None]


def batch_left(g: jax.Array, b: jax.Array | None = None) -> jax.Array:
    """``mean_k G_k B G_kᵀ`` (``B = I`` if None) for ``(m, n)`` or ``(N, m, n)`` input."""
    g = _batched(g)
    gb = g if b is None else g @ b
    return jnp.einsum("kij,klj->il", gb, g) / g.shape[0]


def batch_right(g: jax.Array, a: jax.Array | None = None) -> jax.Array:
    """``mean_k G_kᵀ A G_k`` (``A = I`` if None)."""
    g = _batched(g)
    ag = g if a is None else a @ g
    return jnp.einsum("kij,kil->jl", ag, g) / g.shape[0]


def batch_square(g: jax.Array) -> jax.Array:
    """``mean_k G_k ⊙ G_k``."""
    g = _batched(g)
    return jnp.mean(g * g, axis=0)


def batch_factor(g: jax.Array, batch_size: int) -> float:
    """``B`` for a single mini-batch gradient, 1 for a batch of per-example gradients."""
    return 1.0 if g.ndim == 3 else float(batch_size)
