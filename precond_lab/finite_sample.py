"""Finite-sample error of the trace-power Bregman fits (Liu et al. 2026, §4.2, Prop. 4).

* ``effective_rank`` — ``r_eff(A) = (tr A)² / tr A²``;
* ``one_sided_factor_error`` — Monte Carlo of Prop. 4: exact-Kronecker Gaussian
  gradients ``G = L⋆^{½} Z R⋆^{½}``, the one-sided fit ``L̂`` with ``R = R⋆`` held, its
  whitened error ``(1/m)‖L⋆^{-½} L̂ L⋆^{-½} − I‖²_F`` against ``(m+1)/(N r_eff(R⋆^q))``;
* ``three_component_gradients`` — the synthetic non-Kronecker gradients of P4's Eq. 18:
  a *sum* of three matrix-normal components plus isotropic noise;
* ``kron_relative_error`` — ``‖S_ref^{-½} Ŝ S_ref^{-½} − I‖²_F / mn`` of two Kronecker
  products, from their factors;
* ``joint_fit_errors`` — P4's joint-fit protocol: each method's reference fit on a whole
  pool, few-sample fits on the first ``N`` of random permutations of the same pool, and the
  error of each against its own reference.
"""

from __future__ import annotations

import jax
import numpy as np
import xarray as xr

from . import estimators as est
from ._validation import check_number
from .structures import Kronecker

__all__ = [
    "effective_rank",
    "joint_fit_errors",
    "kron_relative_error",
    "one_sided_factor_error",
    "three_component_gradients",
]


def effective_rank(eigenvalues) -> float:
    """``r_eff(A) = (tr A)² / tr A²`` from the eigenvalues of a PSD ``A``.

    Raises:
        ValueError: empty, non-finite or negative eigenvalues, or all zero.
    """
    w = np.asarray(eigenvalues, np.float64).ravel()
    if w.size == 0 or not np.all(np.isfinite(w)) or np.min(w) < 0 or np.sum(w) == 0:
        raise ValueError(
            "eigenvalues must be finite, ≥ 0 and not all zero (a PSD matrix ≠ 0); got "
            f"{w.size} values, min {np.min(w) if w.size else 'n/a'}"
        )
    return float(np.sum(w) ** 2 / np.sum(w**2))


def _spd_root(a, what: str):
    a = np.asarray(a, np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or not np.all(np.isfinite(a)):
        raise ValueError(f"{what} must be a finite square matrix; got shape {a.shape}")
    w, v = np.linalg.eigh(0.5 * (a + a.T))
    if np.min(w) <= 0:
        raise ValueError(f"{what} must be positive definite (smallest eigenvalue {np.min(w):.3e})")
    return w, v


def one_sided_factor_error(
    left, right, q: float, sizes, trials: int, *, seed: int = 0, chunk: int = 200
) -> xr.Dataset:
    """Monte Carlo of P4's Prop. 4 for the one-sided fit ``L̂`` (``R = R⋆`` held fixed).

    Args:
        left, right: ``L⋆`` (m×m) and ``R⋆`` (n×n), positive definite.
        q: the trace power.
        sizes: the sample counts ``N``.
        trials: Monte-Carlo trials per ``N`` (≥ 2).
        seed: seed of the draws; chunk: trials drawn at once (bounded memory).

    Returns:
        Dataset over ``num_samples``: ``error`` (mean of ``(1/m)‖L⋆^{-½}L̂L⋆^{-½} − I‖²``),
        ``error_sem`` (its standard error) and ``predicted`` ``(m+1)/(N r_eff(R⋆^q))``;
        attrs ``effective_rank``.
    """
    check_number(trials, "trials", low=2, integer=True)
    check_number(chunk, "chunk", low=1, integer=True)
    q = float(check_number(q, "q"))
    sizes = [int(check_number(s, "sample size", low=1, integer=True)) for s in sizes]
    if not sizes:
        raise ValueError("sizes is empty: give at least one sample size N")
    wl, vl = _spd_root(left, "left")
    wr, vr = _spd_root(right, "right")
    m = len(wl)
    lroot, lwhite = (vl * np.sqrt(wl)) @ vl.T, (vl / np.sqrt(wl)) @ vl.T
    rroot = (vr * np.sqrt(wr)) @ vr.T
    reff = effective_rank(wr**q)
    stat = jax.jit(jax.vmap(lambda g: est.trace_power_statistic(g, wr, vr, q, "left")))
    rng = np.random.default_rng(seed)
    mean, sem = [], []
    for num in sizes:
        err = []
        for start in range(0, int(trials), int(chunk)):
            t = min(int(chunk), int(trials) - start)
            g = lroot @ rng.standard_normal((t, num, m, len(wr))) @ rroot  # (symmetric roots)
            white = lwhite @ np.asarray(stat(g)) @ lwhite
            err.append(np.sum((white - np.eye(m)) ** 2, axis=(1, 2)) / m)
        err = np.concatenate(err)
        mean.append(err.mean())
        sem.append(err.std(ddof=1) / np.sqrt(len(err)))
    sizes_arr = np.asarray(sizes)
    return xr.Dataset(
        {
            "error": ("num_samples", np.asarray(mean)),
            "error_sem": ("num_samples", np.asarray(sem)),
            "predicted": ("num_samples", (m + 1) / (sizes_arr * reff)),
        },
        coords={"num_samples": sizes_arr},
        attrs={"effective_rank": reff, "q": q, "trials": int(trials)},
    )


def three_component_gradients(
    num: int,
    *,
    seed: int = 0,
    basis_seed: int = 0,
    shape: tuple[int, int] = (16, 24),
    decays: tuple[float, ...] = (1.8, 1.2, 0.8),
    scale: float = 0.1,
    noise: float = 0.02,
) -> np.ndarray:
    """P4's Eq. 18 (as we read it): ``G = scale · Σ_c A_c Z_c B_cᵀ + noise · E``.

    Every sample *sums* the components (none is drawn per sample): ``A_c = Q_c
    diag(j^{-a_c/2})`` (m×m), ``B_c = P_c diag(j^{-a_c/2})`` (n×n) with Haar eigenbases
    ``Q_c, P_c`` fixed by ``basis_seed`` (the distribution) and i.i.d. standard normal
    ``Z_c``, ``E`` drawn with ``seed``. So ``Σ = scale² Σ_c (A_cA_cᵀ) ⊗ (B_cB_cᵀ) +
    noise² I``, a sum of three Kronecker products: not a Kronecker product.

    Returns:
        ``(num, m, n)`` float64 samples.
    """
    num = int(check_number(num, "num", low=1, integer=True))
    check_number(scale, "scale", low=0.0)
    check_number(noise, "noise", low=0.0)
    m, n = (int(check_number(s, "shape", low=1, integer=True)) for s in shape)
    if not decays:
        raise ValueError("decays is empty: give each component's spectrum decay a_c")
    brng, rng = np.random.default_rng(basis_seed), np.random.default_rng(seed)
    out = noise * rng.standard_normal((num, m, n))
    for a in decays:
        a = check_number(a, "decay")
        ql = np.linalg.qr(brng.standard_normal((m, m)))[0] * np.arange(1, m + 1) ** (-a / 2)
        qr = np.linalg.qr(brng.standard_normal((n, n)))[0] * np.arange(1, n + 1) ** (-a / 2)
        out += scale * np.einsum("ab,kbc,dc->kad", ql, rng.standard_normal((num, m, n)), qr)
    return out


def kron_relative_error(fit: Kronecker, reference: Kronecker) -> float:
    """``‖S_ref^{-½} Ŝ S_ref^{-½} − I‖²_F / (mn)`` for Kronecker ``Ŝ`` and ``S_ref``, from the
    factors (``‖cA⊗B − I‖² = c²‖A‖²‖B‖² − 2c trA trB + mn``).

    Raises:
        ValueError: the shapes differ, or the reference is not positive definite.
    """
    if tuple(fit.matrix_shape) != tuple(reference.matrix_shape):
        raise ValueError(
            f"fit is {fit.matrix_shape} but reference is {reference.matrix_shape}: they must match"
        )

    def white(x, r, what):
        w, v = _spd_root(r, f"reference {what} factor")
        inv_root = (v / np.sqrt(w)) @ v.T
        return inv_root @ np.asarray(x, np.float64) @ inv_root

    a = white(fit.left, reference.left, "left")
    b = white(fit.right, reference.right, "right")
    c = float(fit.scale) / float(reference.scale)
    m, n = a.shape[0], b.shape[0]
    sq = c**2 * np.sum(a * a) * np.sum(b * b) - 2 * c * np.trace(a) * np.trace(b) + m * n
    return float(max(sq, 0.0) / (m * n))


def joint_fit_errors(
    pool, qs, sizes, permutations: int, *, seed: int = 0, **fit_kwargs
) -> xr.DataArray:
    """P4's joint-fit protocol: few-sample fits against each method's own pool fit.

    For each ``q``: the reference ``bregman_optimal(pool, q)`` on the whole pool; for each
    of ``permutations`` random permutations of the pool and each ``N`` in ``sizes``, the fit
    on the permutation's first ``N`` samples and its ``kron_relative_error`` against the
    reference (the same permutations for every ``q``).

    Args:
        pool: ``(P, m, n)`` samples; sizes: ``N ≤ P``; permutations: ≥ 1.
        seed: seed of the permutations; fit_kwargs: to ``estimators.bregman_optimal``.

    Returns:
        DataArray ``(q, num_samples, permutation)``.
    """
    pool = np.asarray(pool, np.float64)
    if pool.ndim != 3:
        raise ValueError(f"pool must be (P, m, n) samples; got shape {pool.shape}")
    check_number(permutations, "permutations", low=1, integer=True)
    sizes = [int(check_number(s, "sample size", low=1, integer=True)) for s in sizes]
    if not sizes or max(sizes) > len(pool):
        raise ValueError(f"sizes {sizes} must be non-empty and ≤ the pool's {len(pool)} samples")
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(len(pool)) for _ in range(int(permutations))]
    err = np.zeros((len(qs), len(sizes), len(perms)))
    for i, q in enumerate(qs):
        ref = est.bregman_optimal(pool, q, **fit_kwargs)
        for j, num in enumerate(sizes):
            for k, p in enumerate(perms):
                err[i, j, k] = kron_relative_error(
                    est.bregman_optimal(pool[p[:num]], q, **fit_kwargs), ref
                )
    return xr.DataArray(
        err,
        dims=("q", "num_samples", "permutation"),
        coords={"q": list(qs), "num_samples": sizes, "permutation": np.arange(len(perms))},
        name="joint_fit_error",
        attrs={"pool": len(pool)},
    )
