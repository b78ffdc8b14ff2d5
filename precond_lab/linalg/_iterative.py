"""Matmul-only iterations for inverse roots of SPD matrices (jitted kernels).

Every kernel takes an SPD matrix ``a`` already normalised so that ``max|a| ≤ 1``
(the caller scales by a power of two, which is exact) and runs entirely at
``a.dtype``: no factorization, no inverse, no upcast. The loop stops when the
residual reaches ``tol``, when it stops decreasing (it rises above 1.2× the best
seen, as in Shampoo's coupled-Newton implementation), when it turns non-finite, or
after ``max_iter`` updates; the iterate with the smallest residual is returned.

Kernels and residuals (each residual is the max-abs entry of a matrix that tends to 0):

* ``coupled_newton`` — Guo–Higham coupled Newton for ``a^{-1/r}``:
  ``T = ((r+1)I − M)/r``, ``M ← T^r M``, ``X ← X T`` from ``M₀ = z a``, ``X₀ = z^{1/r} I``
  with ``z = (1+r)/(2c)`` and ``c ≥ λ_max(a)``; residual ``M − I``.
* ``newton_schulz_inverse`` — ``X ← X(2I − aX)``, ``X₀ = I/c``; residual ``aX − I``.
* ``newton_schulz_sqrt`` — coupled ``Y ← YT``, ``Z ← TZ``, ``T = (3I − ZY)/2`` from
  ``Y₀ = a/c``, ``Z₀ = I``: ``Z → (a/c)^{-1/2}``, ``Y → (a/c)^{1/2}``; residual ``ZY − I``.
* ``if_shampoo_inverse`` — IF-Shampoo's multiplicative inverse-factor update for one
  factor: ``m = ½(Cᵀ a C − I)``, ``C ← C(I − β m)`` (step divided by ``max(1, ‖m‖_F)``
  when ``normalize``), ``C₀ = I/√c``; at the fixed point ``CCᵀ = a^{-1}``. With
  ``a = S + λI`` this is exactly IF-Shampoo's ``m_C = ½(CᵀSC + λ CᵀC − I)`` (P2) for a
  single factor. With ``β = 1`` and no normalisation it coincides with Newton–Schulz.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "STATUS",
    "coupled_newton",
    "if_shampoo_inverse",
    "matmuls_per_step",
    "newton_schulz_inverse",
    "newton_schulz_sqrt",
    "spectral_bound",
]

#: Status codes returned by the kernels.
STATUS = {0: "running", 1: "converged", 2: "stagnated", 3: "nonfinite", 4: "max_iter"}


def _matpow_matmuls(r: int) -> int:
    """Products needed by binary exponentiation of ``T^r``."""
    return max(r.bit_length() - 1 + bin(r).count("1") - 1, 0)


def matmuls_per_step(method: str, r: int = 1) -> int:
    """Dense products per loop evaluation of a kernel (residual included)."""
    return {
        "newton": _matpow_matmuls(r) + 2,
        "newton_schulz_inverse": 2,
        "newton_schulz_sqrt": 3,
        "if_shampoo": 3,
    }[method]


def spectral_bound(a: jax.Array) -> jax.Array:
    """``1.05·‖a‖_∞ ≥ λ_max(a)`` at ``a.dtype`` (the margin covers rounding of the sum)."""
    return 1.05 * jnp.max(jnp.sum(jnp.abs(a), axis=-1))


def _matpow(t: jax.Array, r: int) -> jax.Array:
    result, base = None, t
    while r:
        if r & 1:
            result = base if result is None else result @ base
        r >>= 1
        if r:
            base = base @ base
    return result


def _iterate(step, x0, max_iter: int, tol: float):
    """Run ``x, res(x) = step(x)`` until converged/stagnated/non-finite/``max_iter``.

    Returns ``(best_x, best_index, evaluations, status, residual_history)``.
    """
    res_dtype = jax.tree_util.tree_leaves(x0)[0].dtype
    hist0 = jnp.full((max_iter + 1,), jnp.nan, res_dtype)
    inf = jnp.asarray(jnp.inf, res_dtype)

    def cond(c):
        return c[4] == 0

    def body(c):
        k, x, best_x, best_res, status, best_k, hist = c
        x_new, res = step(x)
        hist = hist.at[k].set(res)
        finite = jnp.isfinite(res) & jnp.all(
            jnp.asarray([jnp.all(jnp.isfinite(v)) for v in jax.tree_util.tree_leaves(x)])
        )
        better = finite & (res < best_res)
        best_x = jax.tree_util.tree_map(lambda a, b: jnp.where(better, a, b), x, best_x)
        best_k = jnp.where(better, k, best_k)
        stagnated = finite & (res > 1.2 * best_res)
        best_res = jnp.where(better, res, best_res)
        status = jnp.select(
            [~finite, finite & (res <= tol), stagnated, k >= max_iter],
            [3, 1, 2, 4],
            default=0,
        ).astype(jnp.int32)
        return k + 1, x_new, best_x, best_res, status, best_k, hist

    zero = jnp.asarray(0, jnp.int32)
    init = (zero, x0, x0, inf, zero, zero, hist0)
    k, _, best_x, _, status, best_k, hist = lax.while_loop(cond, body, init)
    return best_x, best_k, k, status, hist


@functools.partial(jax.jit, static_argnames=("r", "max_iter", "tol"))
def coupled_newton(a: jax.Array, r: int, max_iter: int, tol: float):
    """``a^{-1/r}`` by the scaled coupled Newton iteration (see module docstring)."""
    eye = jnp.eye(a.shape[-1], dtype=a.dtype)
    z = (1 + r) / (2 * spectral_bound(a))

    def step(state):
        m, x = state
        res = jnp.max(jnp.abs(m - eye))
        t = ((r + 1) * eye - m) / r
        return (_matpow(t, r) @ m, x @ t), res

    (m, x), k, evals, status, hist = _iterate(step, (z * a, z ** (1.0 / r) * eye), max_iter, tol)
    return x, k, evals, status, hist


@functools.partial(jax.jit, static_argnames=("max_iter", "tol"))
def newton_schulz_inverse(a: jax.Array, max_iter: int, tol: float):
    """``a^{-1}`` by the Newton–Schulz iteration (see module docstring)."""
    eye = jnp.eye(a.shape[-1], dtype=a.dtype)

    def step(x):
        ax = a @ x
        return x @ (2 * eye - ax), jnp.max(jnp.abs(ax - eye))

    x, k, evals, status, hist = _iterate(step, eye / spectral_bound(a), max_iter, tol)
    return x, k, evals, status, hist


@functools.partial(jax.jit, static_argnames=("max_iter", "tol"))
def newton_schulz_sqrt(a: jax.Array, max_iter: int, tol: float):
    """``(a^{1/2}, a^{-1/2})`` by the coupled Newton–Schulz iteration."""
    eye = jnp.eye(a.shape[-1], dtype=a.dtype)
    c = spectral_bound(a)

    def step(state):
        y, z = state
        zy = z @ y
        t = 0.5 * (3 * eye - zy)
        return (y @ t, t @ z), jnp.max(jnp.abs(zy - eye))

    (y, z), k, evals, status, hist = _iterate(step, (a / c, eye), max_iter, tol)
    return (y * jnp.sqrt(c), z / jnp.sqrt(c)), k, evals, status, hist


@functools.partial(jax.jit, static_argnames=("beta", "max_iter", "tol", "normalize"))
def if_shampoo_inverse(a: jax.Array, beta: float, max_iter: int, tol: float, normalize: bool):
    """``(C Cᵀ, C)`` with ``CCᵀ → a^{-1}`` by IF-Shampoo's multiplicative update."""
    eye = jnp.eye(a.shape[-1], dtype=a.dtype)

    def step(c):
        w = c.T @ (a @ c)
        m = 0.5 * (w - eye)
        lr = beta / jnp.maximum(1.0, jnp.linalg.norm(m)) if normalize else beta
        return c @ (eye - lr * m), jnp.max(jnp.abs(w - eye))

    c0 = eye / jnp.sqrt(spectral_bound(a))
    c, k, evals, status, hist = _iterate(step, c0, max_iter, tol)
    return (c @ c.T, c), k, evals, status, hist
