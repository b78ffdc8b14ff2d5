"""Symmetric eigendecomposition helpers used by the structures and estimators.

These are the exact (eigendecomposition-based) matrix functions. Iterative and
inverse-free alternatives, and the precision harness that compares them, live in
the other modules of ``precond_lab.linalg``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..errors import NotPositiveDefiniteError

__all__ = ["symmetrize", "eigh_sym", "psd_function", "psd_power", "psd_sqrt"]


def symmetrize(a: jax.Array) -> jax.Array:
    """Return ``(a + aᵀ) / 2`` over the last two axes."""
    return 0.5 * (a + jnp.swapaxes(a, -1, -2))


@jax.jit
def eigh_sym(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Eigendecomposition of the symmetric part of ``a`` (ascending eigenvalues)."""
    return jnp.linalg.eigh(symmetrize(a))


def psd_function(a: jax.Array, fn) -> jax.Array:
    """``Q fn(Λ) Qᵀ`` for the symmetric matrix ``a = Q Λ Qᵀ``."""
    w, q = eigh_sym(a)
    return (q * fn(w)[..., None, :]) @ jnp.swapaxes(q, -1, -2)


def psd_power(a: jax.Array, p: float, damping: float = 0.0) -> jax.Array:
    """``(a + damping·I)^p`` of a symmetric positive (semi)definite matrix.

    Negative eigenvalues within round-off of zero are clipped to zero before the
    damping is added; a genuinely indefinite input or a singular one raised to a
    negative power without damping raises ``ValueError``.
    """
    w, q = eigh_sym(a)
    scale = jnp.max(jnp.abs(w))
    tol = 100 * a.shape[-1] * jnp.finfo(w.dtype).eps * scale
    if bool(jnp.any(w < -tol)):
        raise NotPositiveDefiniteError(
            f"matrix is not positive semidefinite: smallest eigenvalue {float(w.min()):.3e}"
            f" (largest {float(w.max()):.3e}); a fractional or negative power is undefined."
        )
    w = jnp.maximum(w, 0.0) + damping
    if p < 0 and bool(jnp.any(w <= 0)):
        raise ValueError(
            "matrix is singular; a negative power needs damping > 0 (pass damping=...)."
        )
    return (q * (w**p)[..., None, :]) @ jnp.swapaxes(q, -1, -2)


def psd_sqrt(a: jax.Array) -> jax.Array:
    """Principal square root of a symmetric PSD matrix."""
    return psd_power(a, 0.5)
