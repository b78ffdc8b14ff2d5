"""Estimator state pytree and the shared gradient statistics.

A state holds its arrays as pytree children and its hyper-parameters as static
auxiliary data, so ``update(state, G)`` needs no extra arguments and is jit-able.

Every update accepts either one gradient ``G`` of shape ``(m, n)`` (e.g. a mini-batch
mean gradient; root-free methods then multiply its outer products by the batch size
``B``) or a batch of per-example gradients ``(N, m, n)``, whose statistics are the
batch means of the per-example outer products (no ``B`` factor: they already
estimate ``E[ggᵀ]``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ..structures import Structure

__all__ = [
    "EstimatorState",
    "OnlineEstimator",
    "batch_factor",
    "batch_left",
    "batch_right",
    "batch_square",
]


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class EstimatorState:
    """Arrays (``arrays``, a dict of JAX arrays) and static hyper-parameters (``hparams``)."""

    kind: str
    arrays: dict[str, jax.Array]
    hparams: tuple[tuple[str, Any], ...]

    def tree_flatten(self):
        keys = tuple(sorted(self.arrays))
        return tuple(self.arrays[k] for k in keys), (self.kind, keys, self.hparams)

    @classmethod
    def tree_unflatten(cls, aux, children):
        kind, keys, hparams = aux
        return cls(kind, dict(zip(keys, children, strict=True)), hparams)

    @property
    def hp(self) -> dict[str, Any]:
        """The hyper-parameters as a dict."""
        return dict(self.hparams)

    def replace(self, **arrays: jax.Array) -> EstimatorState:
        """A copy with some arrays replaced."""
        return EstimatorState(self.kind, {**self.arrays, **arrays}, self.hparams)

    def __getitem__(self, key: str) -> jax.Array:
        return self.arrays[key]


@dataclasses.dataclass(frozen=True)
class OnlineEstimator:
    """The three functions of an online estimator and how its preconditioner is applied.

    Attributes:
        name: registry name.
        init: ``init(G0, **hparams) -> state`` (consumes ``G0`` as its recipe says).
        update: ``update(state, G) -> state`` (jitted).
        preconditioner: ``state -> Structure`` approximating ``Σ`` (not its inverse).
        power: the power the optimizer applies, ``S^{-power}`` (0.5 root, 1 root-free).
        internal_damping: whether the structure already includes the damping (then
            directions use ``approx_damping=0``).
    """

    name: str
    init: Callable[..., EstimatorState]
    update: Callable[[EstimatorState, jax.Array], EstimatorState]
    preconditioner: Callable[[EstimatorState], Structure]
    power: float
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
