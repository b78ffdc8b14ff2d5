"""Jitted per-chunk kernels on dense samples ``G: (c, m, n)`` with weights ``w: (c,)``."""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.jit
def _k_stats(g, w):
    """``(‖G_k‖² per sample, Σ_k w_k ‖G_k‖², Σ_k w_k G_k)``; NaN/Inf propagate into the
    norm of their sample."""
    sq = jnp.sum(g * g, axis=(1, 2))
    return sq, jnp.sum(w * sq), jnp.einsum("k,kij->ij", w, g)


@jax.jit
def _k_norms(g, w):
    sq = jnp.sum(g * g, axis=(1, 2))
    return sq, jnp.sum(w * sq)


@jax.jit
def _k_left(g, w, b):
    gb = jnp.matmul(g, b)  # one (c·m, n) × (n, n) product
    return jnp.einsum("kil,kml->im", gb * w[:, None, None], g)


@jax.jit
def _k_right(g, w, a):
    ag = jnp.matmul(a, g)  # (m, m) × (c, m, n)
    return jnp.einsum("kil,kij->jl", ag * w[:, None, None], g)


@jax.jit
def _k_left_moment(g, w):
    """``Σ_k w_k G_k G_kᵀ`` as one ``(m, c·n) × (c·n, m)`` product."""
    c, m, n = g.shape
    h = jnp.transpose(g, (1, 0, 2))  # (m, c, n)
    return h.reshape(m, c * n) @ (h * w[None, :, None]).reshape(m, c * n).T


@jax.jit
def _k_right_moment(g, w):
    """``Σ_k w_k G_kᵀ G_k`` as one ``(n, c·m) × (c·m, n)`` product (no transpose needed)."""
    c, m, n = g.shape
    return g.reshape(c * m, n).T @ (g * w[:, None, None]).reshape(c * m, n)


@jax.jit
def _k_moments(g, w):
    return _k_left_moment(g, w), _k_right_moment(g, w)


@jax.jit
def _k_rotdiag(g, w, qa, qb):
    p = qa.T @ g @ qb
    return jnp.einsum("k,kij->ij", w, p * p)


@jax.jit
def _k_diag(g, w):
    return jnp.einsum("k,kij->ij", w, g * g)


@jax.jit
def _k_trace_product(g, w, s):
    return jnp.einsum("k,kij,kij->", w, g, s.matvec(g))


@jax.jit
def _k_gram(ga, gb):
    return ga.reshape(ga.shape[0], -1) @ gb.reshape(gb.shape[0], -1).T


@jax.jit
def _k_frob_block(ga, wa, gb, wb):
    k = _k_gram(ga, gb)
    return jnp.einsum("k,kl,l->", wa, k * k, wb)


@jax.jit
def _k_cov(g, w):
    x = g.reshape(g.shape[0], -1)
    return x.T @ (x * w[:, None])


@jax.jit
def _k_combine(g, coef):
    return jnp.einsum("kr,kij->rij", coef, g)


@jax.jit
def _k_apply(g, w, x):
    """``Σ_k w_k G_k ⟨G_k, X⟩`` for a batch ``X`` of shape ``(…, m, n)``."""
    coef = jnp.einsum("kmn,...mn->k...", g, x) * w.reshape(-1, *(1,) * (x.ndim - 2))
    return jnp.einsum("k...,kmn->...mn", coef, g)
