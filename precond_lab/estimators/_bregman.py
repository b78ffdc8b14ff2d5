"""The trace-power Bregman family of Kronecker fits (Liu et al. 2026, "How Bregman
Divergences Shape Shampoo").

For real ``q`` the generator ``f_q(x) = (x^q − q x + q − 1)/(q(q − 1))`` (limits
``f_1 = x log x − x + 1``, ``f_0 = −log x + x − 1``) applied to eigenvalues defines the
Bregman matrix divergence

    B_q(X, Y) = tr X^q/(q(q−1)) + tr Y^q/q − tr(Y^{q−1} X)/(q−1)

(``q = 2``: ½‖X − Y‖²_F; ``q = 1``: von Neumann; ``q = 0``: LogDet = 2·KL; ``q = ½``:
the "square-root" divergence of PSGD-Kron). For ``Y = L ⊗ R`` and ``X = Σ + λI`` its
stationary points satisfy

    L = E[G R^{q−1} Gᵀ] / tr R^q,    R = E[Gᵀ L^{q−1} G] / tr L^q,

where the expectation is over the damped target (``E[G B Gᵀ]`` gains ``λ tr(B) I``).
One factor update is the *trace-power statistic* of the other factor; it is shared by
the batch fit ``bregman_optimal``, the online estimators and the optimisers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .._validation import FitNeedsDampingError, check_number
from ..errors import NotPositiveDefiniteError
from ..linalg import eigh_sym, symmetrize
from ..structures import FitInfo, Kronecker
from ..targets import Target
from ._common import default_tol, target_of
from ._registry import EstimatorSpec, register

__all__ = [
    "bregman_optimality_checks",
    "bregman_stationarity_residual",
    "bregman_objective",
    "bregman_optimal",
    "factor_power",
    "trace_power_statistic",
    "trace_power_update",
]

_SIDES = ("left", "right")


def _check_q(q) -> float:
    q = float(q)
    if not np.isfinite(q):
        raise ValueError(f"the trace power q must be a finite real number; got {q}")
    return q


def _check_side(side: str) -> str:
    if side not in _SIDES:
        raise ValueError(f"side must be 'left' or 'right'; got {side!r}")
    return side


def factor_power(eigvals, q: float, what: str = "factor") -> tuple[jnp.ndarray, jnp.ndarray]:
    """``(w^{q−1}, Σ w^q)`` for a factor's eigenvalues ``w`` (the weights of the statistic).

    Eigenvalues within round-off of zero are clipped to zero; a negative power of a
    singular factor raises.

    Raises:
        NotPositiveDefiniteError: an eigenvalue is clearly negative.
        FitNeedsDampingError: ``q < 1`` (a negative power ``q − 1``) and the factor is
            singular, or ``tr R^q = 0``.
    """
    w = jnp.asarray(eigvals)
    if w.ndim != 1:
        raise ValueError(f"eigenvalues must be a vector; got shape {w.shape}")
    if isinstance(w, jax.core.Tracer):  # under jit: no host-side checks, same arithmetic
        return _powers(w, q)
    scale = float(jnp.max(jnp.abs(w))) if w.size else 0.0
    tol = 100 * max(w.shape[0], 1) * float(jnp.finfo(w.dtype).eps) * scale
    wmin = float(jnp.min(w))
    if not np.isfinite(wmin) or not np.isfinite(scale):
        raise NotPositiveDefiniteError(f"the {what}'s eigenvalues are not finite")
    if wmin < -tol:
        raise NotPositiveDefiniteError(
            f"the {what} is not positive semidefinite (smallest eigenvalue {wmin:.3e}, "
            f"largest {scale:.3e})"
        )
    w = jnp.maximum(w, 0.0)
    if q < 1 and float(jnp.min(w)) <= 0:
        raise FitNeedsDampingError(
            f"the {what} is singular (smallest eigenvalue {wmin:.3e}); the power q − 1 = "
            f"{q - 1:g} is undefined. Pass damping > 0."
        )
    wp, total = _powers(w, q)
    if float(total) <= 0:
        raise FitNeedsDampingError(f"tr(F^q) of the {what} is zero; pass damping > 0.")
    return wp, total


def _powers(w, q: float):
    """``(w^{q−1}, Σ w^q)`` with ``0^p = 0`` for the zero eigenvalues of a PSD factor."""
    w = jnp.maximum(w, 0.0)
    positive = w > 0
    safe = jnp.where(positive, w, 1.0)
    total = (
        jnp.sum(jnp.where(positive, safe**q, 0.0)) if q != 0 else jnp.asarray(w.shape[0], w.dtype)
    )
    if q == 1:
        return jnp.ones_like(w), total
    return jnp.where(positive, safe ** (q - 1), 0.0), total


def trace_power_statistic(grads, eigvals, eigvecs, q: float, side: str = "left"):
    """The trace-power factor statistic of a (mini-)batch of gradients.

    ``side="left"``: ``mean_b G_b R^{q−1} G_bᵀ / tr R^q`` (m×m) with the right factor
    ``R = V diag(w) Vᵀ`` given by ``eigvals`` ``w`` (n,) and ``eigvecs`` ``V`` (n, n);
    ``side="right"``: ``mean_b G_bᵀ L^{q−1} G_b / tr L^q`` (n×n) with ``L``'s eigenpairs.
    ``q = 1`` is Shampoo's statistic over ``tr`` of the other factor, ``q = 0`` the KL
    (flip-flop) statistic ``G R⁻¹ Gᵀ / n``, ``q = 2`` the Frobenius power step.

    Jittable: under ``jax.jit`` the host-side checks of the other factor (PSD, not
    singular when ``q < 1``) are skipped; ``q`` and ``side`` are static.

    Args:
        grads: ``(B, m, n)`` gradients, or one ``(m, n)`` gradient.
        eigvals: eigenvalues of the other factor (``(n,)`` for ``side="left"``).
        eigvecs: its eigenvectors as columns (``(n, n)``).
        q: the trace power (any finite real; ``q < 1`` needs a non-singular factor).
        side: which factor the statistic is for.

    Returns:
        The symmetric statistic, ``(m, m)`` (left) or ``(n, n)`` (right).
    """
    q = _check_q(q)
    side = _check_side(side)
    g = jnp.asarray(grads)
    if g.ndim == 2:
        g = g[None]
    if g.ndim != 3:
        raise ValueError(f"grads must be (B, m, n) or (m, n); got shape {tuple(g.shape)}")
    if side == "right":
        g = jnp.swapaxes(g, 1, 2)
    k = g.shape[2]
    v = jnp.asarray(eigvecs, g.dtype)
    if v.shape != (k, k) or jnp.shape(eigvals) != (k,):
        raise ValueError(
            f"the other factor's eigenpairs must be ({k},) and ({k}, {k}) for grads of shape "
            f"{tuple(jnp.shape(grads))} and side={side!r}; got {jnp.shape(eigvals)} and {v.shape}"
        )
    what = "right factor" if side == "left" else "left factor"
    wp, total = factor_power(jnp.asarray(eigvals, g.dtype), q, what)
    p = g @ v  # (B, rows, k)
    stat = jnp.einsum("bik,bjk->ij", p * wp, p) / (g.shape[0] * total)
    return symmetrize(stat)


def trace_power_update(target, eigvals, eigvecs, q: float, side: str = "left"):
    """The stationarity update of one factor over a whole target.

    ``side="left"``: ``E[G R^{q−1} Gᵀ] / tr R^q`` over the target (a
    ``Target`` or ``(N, m, n)`` samples, weighted; a damped
    target adds ``λ tr(R^{q−1}) I``), with ``R``'s eigenpairs; ``side="right"`` the twin
    ``E[Gᵀ L^{q−1} G] / tr L^q``. This is the exact minimiser of ``B_q(Σ+λI, L ⊗ R)``
    over one factor with the other held fixed.
    """
    q = _check_q(q)
    side = _check_side(side)
    target = target if isinstance(target, Target) else target_of(target)
    m, n = target.matrix_shape
    k = n if side == "left" else m
    v = jnp.asarray(eigvecs, target.dtype)
    if v.shape != (k, k) or jnp.shape(eigvals) != (k,):
        raise ValueError(
            f"the other factor's eigenpairs must be ({k},) and ({k}, {k}); "
            f"got {jnp.shape(eigvals)} and {v.shape}"
        )
    wp, total = factor_power(jnp.asarray(eigvals, target.dtype), q)
    power = (v * wp) @ v.T
    stat = target.contract_left(power) if side == "left" else target.contract_right(power)
    return symmetrize(stat) / total


def bregman_stationarity_residual(
    samples, fit: Kronecker, q: float, *, damping: float = 0.0
) -> float:
    """Relative residual of both stationarity equations (P4's Prop. 1) at a fit ``L ⊗ R``.

    ``‖U_L(R) − L‖/‖L‖ + ‖U_R(L) − R‖/‖R‖`` with ``U`` the ``trace_power_update`` of each
    side over the samples (``Σ + λI``); ``L`` carries the fit's scale. Zero exactly at a
    stationary point of ``B_q(Σ + λI, L ⊗ R)``.
    """
    if not isinstance(fit, Kronecker):
        raise TypeError(f"fit must be a Kronecker; got {type(fit).__name__}")
    target = target_of(samples, None, False, None)
    if check_number(damping, "damping", low=0.0) > 0:
        target = target.damped(damping)
    left = np.asarray(fit.left, np.float64) * float(fit.scale)
    right = np.asarray(fit.right, np.float64)
    wl, vl = np.linalg.eigh(left)
    wr, vr = np.linalg.eigh(right)
    new_l = np.asarray(trace_power_update(target, wr, vr, q, "left"))
    new_r = np.asarray(trace_power_update(target, wl, vl, q, "right"))
    return float(
        np.linalg.norm(new_l - left) / np.linalg.norm(left)
        + np.linalg.norm(new_r - right) / np.linalg.norm(right)
    )


def bregman_optimality_checks(samples, q: float, *, seed: int = 0, tol: float = 1e-14) -> dict:
    """P4's Prop. 1 at one ``q`` on ``(N, m, n)`` samples: is ``estimators.bregman_optimal``
    the minimiser of ``B_q(Σ, L ⊗ R)``?

    Returns ``{"special": max relative difference from ``frobenius_optimal``,
    ``shampoo_squared``, ``kl_optimal`` at ``q = 2, 1, 0`` (NaN at other q),
    "stationarity": bregman_stationarity_residual, "dense": max relative difference from
    ``reference.bregman_optimal`` (scipy) (L ⊗ R), "perturbation":
    reference.bregman_perturbation_increase}`` (small, small, small, > 0 at the minimiser).
    """
    from .. import reference as ref
    from ._frobenius import frobenius_optimal
    from ._kl import kl_optimal
    from ._shampoo import shampoo_squared

    g = np.asarray(samples, np.float64)
    if g.ndim != 3:
        raise ValueError(f"samples must be (N, m, n); got shape {g.shape}")
    m, n = g.shape[1:]
    sigma = ref.target_matrix(g)
    fit = bregman_optimal(g, q, tol=tol)
    dense, want = np.asarray(fit.to_dense()), np.kron(*ref.bregman_optimal(sigma, m, n, q))
    special = {2.0: frobenius_optimal, 1.0: shampoo_squared,
               0.0: lambda t: kl_optimal(t, tol=tol, max_iter=5000)}.get(float(q))  # fmt: skip
    named = np.nan if special is None else np.asarray(special(g).to_dense())
    return {
        "special": float(np.abs(dense - named).max() / np.abs(named).max()),
        "stationarity": bregman_stationarity_residual(g, fit, q),
        "dense": float(np.abs(dense - want).max() / np.abs(want).max()),
        "perturbation": ref.bregman_perturbation_increase(
            sigma, fit.left, fit.right, q, scale=float(fit.scale), seed=seed
        ),
    }


def bregman_objective(q: float, tr_yq, tr_y, cross) -> float:
    """``B_q(X, L⊗R) − tr f_q(X)``-free part: the terms of ``B_q`` that depend on ``Y``.

    ``B_q(X, Y) = c_q(X) + J_q(Y)`` with ``J_q = tr Y^q/q − tr(Y^{q−1}X)/(q−1)`` for
    ``q ≠ 0, 1``, ``J_1 = tr Y − tr(X log Y)``, ``J_0 = log det Y + tr(Y⁻¹X)``; the
    arguments are ``tr Y^q`` (or ``log det Y`` at ``q = 0``), ``tr Y`` and the cross term
    ``tr(Y^{q−1}X)`` (``tr(X log Y)`` at ``q = 1``).

    Near ``q = 1`` (and ``q = 0``) ``J_q`` holds the ``Y``-free terms ``−tr X/(q−1)``
    (``dim/q``): correctly rounded, but its change between sweeps falls below float
    resolution within ~1e-8 of 1 (0). The divergence itself, without them, is
    ``metrics.bregman_divergence``, accurate for every ``q``.
    """
    if q == 1:
        return float(tr_y - cross)
    if q == 0:
        return float(tr_yq + cross)
    return float(tr_yq / q - cross / (q - 1))


def _safe_log(w):
    """``log w`` with ``0 log 0 = 0`` (a zero eigenvalue of a q = 1 fit carries no mass)."""
    return jnp.where(w > 0, jnp.log(jnp.where(w > 0, w, 1.0)), 0.0)


def _eig(x, what, q):
    w, v = eigh_sym(x)
    factor_power(w, q, what)  # validity checks (PSD, non-singular when q < 1)
    return jnp.maximum(w, 0.0), v


def _sweep_objective(q, wl, wr, vr, right_stat_unnormalised, total_l):
    """``J_q`` after a sweep, from the new factors and ``M_R = E[Gᵀ L^{q−1} G]``."""
    if q == 1:
        # tr(X log(L⊗R)) = tr(log L · E[GGᵀ]) + tr(log R · E[GᵀG]); the caller passes the
        # two traces in right_stat_unnormalised.
        tr_y = float(jnp.sum(wl) * jnp.sum(wr))
        return bregman_objective(1.0, None, tr_y, right_stat_unnormalised)
    if q == 0:
        logdet = len(wr) * float(jnp.sum(jnp.log(wl))) + len(wl) * float(jnp.sum(jnp.log(wr)))
        wp, _ = factor_power(wr, 0.0)
        cross = float(jnp.sum(((vr.T @ right_stat_unnormalised @ vr).diagonal()) * wp))
        return bregman_objective(0.0, logdet, None, cross)
    wp, tr_rq = factor_power(wr, q)
    cross = float(jnp.sum(((vr.T @ right_stat_unnormalised @ vr).diagonal()) * wp))
    return bregman_objective(q, float(total_l * tr_rq), None, cross)


def bregman_optimal(
    samples,
    q: float,
    *,
    damping: float = 0.0,
    weights=None,
    center: bool = False,
    chunk_size: int | None = None,
    init: Kronecker | tuple | None = None,
    max_iter: int = 500,
    tol: float | None = None,
    fix: tuple | None = None,
) -> Kronecker:
    """The Kronecker ``L ⊗ R`` minimising ``B_q(Σ + λI, L ⊗ R)`` (trace-power family).

    Alternating stationarity updates (``trace_power_update``) from the identity
    (or ``init``); each half-step is an exact block minimisation, so the objective
    decreases. The free scale ``(cL, R/c)`` is fixed by ``tr R = n`` during the
    iteration and the result is returned balanced. Special cases: ``q = 2`` is the
    Frobenius optimum (``frobenius_optimal``), ``q = 1`` Shampoo² ``L ⊗ R/tr Σ``
    (reached after one sweep), ``q = 0`` the KL optimum (``kl_optimal``).

    Args:
        samples: ``(N, m, n)`` per-example matrices, a DataArray, or a Target.
        q: the trace power (any finite real; ``[0, 2]`` is the studied range).
        damping: ``λ ≥ 0`` added to the target.
        weights: as for every estimator.
        center: as for every estimator.
        chunk_size: as for every estimator.
        init: a Kronecker or ``(L0, R0)`` to start from instead of the identity.
        max_iter: maximum number of sweeps (one left and one right update each).
        tol: stop when the relative change of both factors is below ``tol`` (default
            1e-12 in float64, 1e-5 in float32).
        fix: ``("left", R)`` fits only the left factor with the right one held at ``R``
            (one exact update; the one-sided estimate of P4's Prop. 4);
            ``("right", L)`` the twin. None fits both.

    Returns:
        ``Kronecker(left, right, scale)``; ``info.residuals`` holds the relative factor
        change per sweep and ``info.objective`` the ``Y``-dependent part of
        ``B_q(Σ+λI, L⊗R)`` (``bregman_objective``; the divergence up to a constant).

    Raises:
        FitNeedsDampingError: ``q < 1`` and a factor became singular (too few samples
            without damping).
    """
    q = _check_q(q)
    if damping < 0 or not np.isfinite(damping):
        raise ValueError(f"damping must be a finite number ≥ 0; got {damping}")
    max_iter = check_number(max_iter, "max_iter", low=1, integer=True)
    if tol is not None:
        check_number(tol, "tol", low=0.0)
    target = target_of(samples, weights, center, chunk_size)
    if damping > 0:
        target = target.damped(damping)
    m, n = target.matrix_shape
    dt = target.dtype
    if fix is not None:
        return _one_sided(target, q, fix)
    tol = default_tol(dt) if tol is None else float(tol)
    if init is None:
        left, right = jnp.eye(m, dtype=dt), jnp.eye(n, dtype=dt)
    else:
        left, right = (init.left, init.right) if isinstance(init, Kronecker) else init
        left, right = jnp.asarray(left, dt), jnp.asarray(right, dt)
        if left.shape != (m, m) or right.shape != (n, n):
            raise ValueError(
                f"init factors must be ({m}, {m}) and ({n}, {n}); got {left.shape}, {right.shape}"
            )
    wr, vr = _eig(right, "right factor", q)
    residuals, objective = [], []
    converged, iterations = False, 0
    moments = target.second_moments() if q == 1 else None
    for iterations in range(1, max_iter + 1):  # noqa: B007 (read after the loop)
        new_left = trace_power_update(target, wr, vr, q, "left")
        wl, vl = _eig(new_left, "left factor", q)
        wp_l, total_l = factor_power(wl, q, "left factor")
        stat_r = symmetrize(target.contract_right((vl * wp_l) @ vl.T))
        new_right = stat_r / total_l
        gauge = jnp.trace(new_right) / n
        new_right, new_left = new_right / gauge, new_left * gauge
        wr, vr = _eig(new_right, "right factor", q)
        wl = wl * gauge
        total_l = total_l * gauge**q
        stat_r = stat_r * gauge ** (q - 1)
        res = float(
            jnp.linalg.norm(new_left - left) / jnp.linalg.norm(new_left)
            + jnp.linalg.norm(new_right - right) / jnp.linalg.norm(new_right)
        )
        left, right = new_left, new_right
        if q == 1:
            cross = float(
                jnp.sum((vl.T @ moments[0] @ vl).diagonal() * _safe_log(wl))
                + jnp.sum((vr.T @ moments[1] @ vr).diagonal() * _safe_log(wr))
            )
            objective.append(_sweep_objective(q, wl, wr, vr, cross, None))
        else:
            objective.append(_sweep_objective(q, wl, wr, vr, stat_r, total_l))
        residuals.append(res)
        if res <= tol:
            converged = True
            break
    if not all(np.isfinite(objective)):
        raise FitNeedsDampingError(
            f"the trace-power fit (q={q:g}) diverged (non-finite objective); pass damping > 0."
        )
    info = FitInfo(
        iterations=iterations,
        converged=converged,
        residuals=np.asarray(residuals),
        objective=np.asarray(objective),
        method=f"trace-power-stationarity(q={q:g})",
    )
    return Kronecker(left, right, 1.0, info=info).normalized()


def _one_sided(target: Target, q: float, fix) -> Kronecker:
    if not (isinstance(fix, tuple) and len(fix) == 2):
        raise ValueError(f"fix must be None, ('left', R) or ('right', L); got {fix!r}")
    side, other = _check_side(fix[0]), jnp.asarray(fix[1], target.dtype)
    m, n = target.matrix_shape
    k = n if side == "left" else m
    if other.shape != (k, k):
        raise ValueError(f"fix=({side!r}, F) needs F of shape ({k}, {k}); got {other.shape}")
    w, v = eigh_sym(other)
    stat = trace_power_update(target, w, v, q, side)
    info = FitInfo(1, True, np.zeros(1), None, f"trace-power-one-sided(q={q:g}, {side})")
    if side == "left":
        return Kronecker(stat, other, 1.0, info=info)
    return Kronecker(other, stat, 1.0, info=info)


def _builder(ctx, q: float = 0.5, **kwargs):
    return bregman_optimal(ctx.target, q, **kwargs)


register(
    EstimatorSpec(
        "bregman_optimal",
        _builder,
        "Trace-power Bregman optimum",
        reference="bregman_optimal",
        summary="Kronecker minimiser of the trace-power Bregman divergence B_q(Σ, L⊗R).",
        color="#882255",  # not eigencorrected's #56B4E9 / "P": the two were drawn alike
        marker="*",
        example_args="(0.5)",
    )
)
