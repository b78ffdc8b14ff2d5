"""Shampoo's statistics and its two implicit Kronecker approximations."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ..linalg import psd_power, symmetrize
from ..structures import Diagonal, Kronecker
from ._common import target_of
from ._registry import EstimatorSpec, on_target, register

__all__ = ["adafactor", "shampoo", "shampoo_host", "shampoo_product", "shampoo_squared"]


def shampoo(
    samples, *, weights=None, center: bool = False, chunk_size: int | None = None
) -> Kronecker:
    """Shampoo's implicit approximation ``L^{1/2} ⊗ R^{1/2}``.

    ``L = E[G Gᵀ]`` (m×m) and ``R = E[Gᵀ G]`` (n×n). Morwani et al. argue that it is
    the square of this, ``shampoo_squared``, that approximates ``Σ``; for an exact
    Kronecker ``Σ`` this one is proportional to ``Σ^{1/2}``.

    Args:
        samples: ``(N, m, n)`` per-example matrices, a DataArray, or a Target.
        weights: ``(N,)`` sample weights (default ``1/N``).
        center: subtract the weighted mean first.
        chunk_size: samples per streamed chunk.

    Returns:
        ``Kronecker(left=L^{1/2}, right=R^{1/2}, scale=1)``.
    """
    target = target_of(samples, weights, center, chunk_size)
    left, right = target.second_moments()
    return Kronecker(psd_power(left, 0.5), psd_power(right, 0.5))


def shampoo_squared(
    samples,
    *,
    weights=None,
    center: bool = False,
    chunk_size: int | None = None,
    relative_damping: float = 0.0,
) -> Kronecker:
    """Shampoo² with trace scaling: ``L ⊗ R / tr Σ``.

    Exact when ``Σ`` is a Kronecker product (``L ⊗ R = tr(Σ) Σ`` then), equal up to a
    scalar to one power-iteration step from the identity (Morwani et al.), and the
    exact minimiser of the von Neumann divergence ``D_vN(Σ, A ⊗ B)`` (identity D9).

    Args:
        relative_damping: ``ε ≥ 0``: each factor damped relative to its own trace,
            ``(L + ε tr L/m·I) ⊗ (R + ε tr R/n·I) / tr Σ``; unlike an absolute ``λ`` this
            keeps the estimate homogeneous of degree 2 in the samples (loss scaling, P2-28).

    Returns:
        ``Kronecker(left=L (+ ε tr L/m·I), right=R (+ ε tr R/n·I), scale=1/tr Σ)``.
    """
    from .._validation import check_number

    eps = check_number(relative_damping, "relative_damping", low=0.0)
    target = target_of(samples, weights, center, chunk_size)
    left, right = (symmetrize(f) for f in target.second_moments())
    if eps > 0:
        m, n = left.shape[0], right.shape[0]
        left = left + eps * jnp.trace(left) / m * jnp.eye(m, dtype=left.dtype)
        right = right + eps * jnp.trace(right) / n * jnp.eye(n, dtype=right.dtype)
    return Kronecker(left, right, 1.0 / target.trace())


def shampoo_product(
    samples, *, weights=None, center: bool = False, chunk_size: int | None = None
) -> Kronecker:
    """Shampoo's two one-sided KL solutions combined: ``(L/n) ⊗ (R/m) = L⊗R/(mn)``.

    Each factor alone is KL-optimal with the identity on the other side (P1's Claim 1,
    ``one_sided_kl``); their product is not the two-sided optimum (P1-14): it is
    mis-scaled (``L⊗R/tr Σ`` is the right multiple for an exact Kronecker ``Σ``) and,
    unless ``Σ`` is a Kronecker product, mis-shaped.

    Returns:
        ``Kronecker(left=L, right=R, scale=1/(mn))``.
    """
    target = target_of(samples, weights, center, chunk_size)
    m, n = target.matrix_shape
    left, right = target.second_moments()
    return Kronecker(symmetrize(left), symmetrize(right), 1.0 / (m * n))


def adafactor(
    samples, *, weights=None, center: bool = False, chunk_size: int | None = None
) -> Diagonal:
    """Adafactor's factored second moment ``diag(r) ⊗ diag(c) / Σ δ``.

    ``δ = diag(Σ)`` reshaped ``(m, n)`` (the mean squared gradient entries), ``r`` its row
    sums and ``c`` its column sums (``r = diag L``, ``c = diag R``). It is the minimiser of
    the von Neumann divergence ``D_vN(Σ, diag(a ⊗ b))`` over positive ``a, b`` (P1-22;
    ``reference.vn_optimal_diagonal_kronecker`` finds it numerically).

    Returns:
        ``Diagonal(r cᵀ / Σ δ)``.
    """
    target = target_of(samples, weights, center, chunk_size)
    delta = target.rotated_diagonal(None, None)
    return Diagonal(jnp.outer(delta.sum(1), delta.sum(0)) / jnp.sum(delta))


register(
    EstimatorSpec(
        "shampoo",
        on_target(shampoo),
        "Shampoo",
        reference="shampoo",
        summary="Shampoo's L^{1/2} ⊗ R^{1/2}, with L = E[GGᵀ], R = E[GᵀG].",
        color="#E69F00",
        marker="^",
    )
)
register(
    EstimatorSpec(
        "shampoo_squared",
        on_target(shampoo_squared),
        "Shampoo²",
        reference="shampoo_squared",
        optimal_for="von_neumann",
        summary="L ⊗ R / tr Σ: one power step from I, and the von Neumann optimum.",
        color="#D55E00",
        marker="s",
    )
)


def shampoo_host(
    samples, *, weights=None, center: bool = False, chunk_size: int | None = None
) -> Kronecker:
    """``shampoo`` with the square roots taken on the host in NumPy float64.

    The same ``L^{1/2} ⊗ R^{1/2}`` (to round-off); it avoids compiling an
    eigendecomposition per layer shape (about 0.4 s each on CPU), which dominates a sweep
    over many small layers. Not traceable (it leaves JAX).
    """
    target = target_of(samples, weights, center, chunk_size)
    left, right = target.second_moments()

    def root(a):
        w, v = np.linalg.eigh(np.asarray(a, np.float64))
        return ((v * np.sqrt(np.maximum(w, 0.0))) @ v.T).astype(target.dtype)

    return Kronecker(root(left), root(right))


register(
    EstimatorSpec(
        "shampoo_product",
        on_target(shampoo_product),
        "Shampoo L⊗R/(mn)",
        reference="shampoo_product",
        summary="(L/n) ⊗ (R/m): Shampoo's two one-sided KL solutions combined (P1-14).",
        color="#8C564B",
        marker="<",
    )
)
register(
    EstimatorSpec(
        "adafactor",
        on_target(adafactor),
        "Adafactor",
        reference="adafactor",
        summary="diag(row sums) ⊗ diag(col sums) / total of diag Σ: the vN-optimal "
        "diagonal Kronecker fit.",
        color="#6B8E23",
        marker=">",
    )
)
