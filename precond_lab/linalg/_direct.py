"""Factorization-based kernels: eigendecomposition, Cholesky and the QR eigenbasis refresh.

All kernels are jitted and run at the dtype of their input; whether JAX supports
that dtype is decided by the caller (``precond_lab.linalg._checks.require_dtype``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.scipy.linalg import cho_solve

from ._spectral import eigh_sym

__all__ = ["cholesky_solve", "eigh_power", "qr_eigen", "qr_refresh_step"]


@functools.partial(jax.jit, static_argnames=("exponent",))
def eigh_power(a: jax.Array, exponent: float, damping: float):
    """``(a + λI)^exponent = Q (w + λ)^exponent Qᵀ``; returns ``(result, Q, w)``.

    Eigenvalues are not clipped: a (rounded) eigenvalue ``w + λ ≤ 0`` gives a
    non-finite result, which the caller reports.
    """
    w, q = eigh_sym(a)
    return (q * ((w + damping) ** exponent)[None, :]) @ q.T, q, w


@jax.jit
def cholesky_solve(a: jax.Array, rhs: jax.Array, damping: float) -> jax.Array:
    """``(a + λI)^{-1} rhs`` through a Cholesky factorization."""
    eye = jnp.eye(a.shape[-1], dtype=a.dtype)
    factor = jnp.linalg.cholesky(a + damping * eye)
    return cho_solve((factor, True), rhs)


def qr_refresh_step(s: jax.Array, q: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One power-iteration step plus QR, as KL-Shampoo and SOAP refresh their bases.

    Args:
        s: symmetric ``d×d`` matrix (a Kronecker factor).
        q: current orthogonal basis ``d×d``.

    Returns:
        ``(q_new, d)``: ``q_new = QR(s q).Q`` with column signs fixed so that
        ``diag(R) ≥ 0``, and the eigenvalue estimate ``d = diag(q_newᵀ s q_new)``.
    """
    q_new, r = jnp.linalg.qr(s @ q)
    sign = jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0).astype(q.dtype)
    q_new = q_new * sign[None, :]
    return q_new, jnp.sum(q_new * (s @ q_new), axis=0)


@functools.partial(jax.jit, static_argnames=("steps",))
def qr_eigen(s: jax.Array, q0: jax.Array, steps: int):
    """``steps`` QR refreshes from ``q0``; returns ``(q, d, offdiag_history)``.

    ``offdiag_history[k] = ‖q_kᵀ s q_k − diag(d_k)‖_F / ‖s‖_F`` after step ``k``.
    """
    norm = jnp.linalg.norm(s)

    def body(q, _):
        q, r = jnp.linalg.qr(s @ q)
        q = q * jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0).astype(q.dtype)[None, :]
        rot = q.T @ (s @ q)
        off = rot - jnp.diag(jnp.diagonal(rot))
        return q, jnp.linalg.norm(off) / norm

    q, hist = jax.lax.scan(body, q0, None, length=steps)
    d = jnp.sum(q * (s @ q), axis=0)
    return q, d, hist
