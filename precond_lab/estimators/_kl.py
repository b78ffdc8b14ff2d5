"""KL-optimal Kronecker factors (Lin et al. 2025, "KL-Shampoo").

The objective is ``KL(N(0, Σ+λI) ‖ N(0, L⊗R))``, i.e. up to constants
``f(L, R) = n log det L + m log det R + tr((L⊗R)^{-1}(Σ+λI))`` — the matrix-normal
maximum-likelihood problem. Its stationary points satisfy the coupled ("flip-flop")
equations

    L = (E[G R⁻¹ Gᵀ] + λ tr(R⁻¹) I) / n,    R = (E[Gᵀ L⁻¹ G] + λ tr(L⁻¹) I) / m.

Each half-step is an exact block minimisation, so ``f`` decreases monotonically, and
after each half-step ``f = n log det L + m log det R + mn`` exactly.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .._validation import FitNeedsDampingError, check_damped_spectrum, check_number
from ..linalg import eigh_sym, symmetrize
from ..structures import FitInfo, Kronecker
from ._common import default_tol, target_of
from ._registry import EstimatorSpec, on_target, register

__all__ = ["instantaneous_kl_direction", "kl_optimal", "one_sided_kl"]


def _spd_inverse(x, name: str, max_condition: float):
    """Inverse of an SPD factor via its eigendecomposition, with a conditioning check."""
    w, q = eigh_sym(x)
    wmax = float(jnp.max(w))
    wmin = float(jnp.min(w))
    if not np.isfinite(wmin) or wmin <= 0 or wmax / wmin > max_condition:
        cond = np.inf if wmin <= 0 or not np.isfinite(wmin) else wmax / wmin
        low = jnp.dtype(x.dtype).itemsize < 8
        hint = (
            f" This fit ran in {jnp.dtype(x.dtype).name}, whose round-off alone can make a damped "
            "factor look singular: fit in float64 (jax.config.update('jax_enable_x64', True), "
            "then e.g. evaluate(..., dtype=np.float64) or SampleTarget(samples.astype(np.float64)))"
            " before raising the damping."
            if low
            else ""
        )
        raise FitNeedsDampingError(
            f"the KL fit's {name} factor became singular or ill-conditioned (condition number "
            f"{cond:.3e} > {max_condition:.1e}): the target is (near) singular in a way no "
            "Kronecker factor can match without damping. Pass damping > 0 (e.g. 1e-3 · tr(Σ)/(mn))"
            f" or a larger one.{hint}"
        )
    inv = (q / w[None, :]) @ q.T
    return symmetrize(inv), float(jnp.sum(jnp.log(w)))


def _kl_init(init, m: int, n: int, dt):
    """The starting factors ``(L0, R0)``: the identity, or a Kronecker/tuple (checked)."""
    if init is None or (isinstance(init, str) and init == "identity"):
        return jnp.eye(m, dtype=dt), jnp.eye(n, dtype=dt)
    if isinstance(init, Kronecker):
        init = (init.left, init.right)
    if not isinstance(init, tuple) or len(init) != 2 or isinstance(init[0], str):
        raise ValueError(
            f"init must be None, 'identity', a Kronecker or a tuple (L0, R0); got {init!r}"
        )
    left, right = jnp.asarray(init[0], dt), jnp.asarray(init[1], dt)
    if left.shape != (m, m) or right.shape != (n, n):
        hint = " (swapped? L0 is m×m, R0 is n×n)" if left.shape == (n, n) else ""
        raise ValueError(
            f"init factors must be ({m}, {m}) and ({n}, {n}); got {left.shape}, {right.shape}{hint}"
        )
    wmin = float(jnp.min(eigh_sym(right)[0]))
    if not np.isfinite(wmin) or wmin <= 0:
        raise ValueError(
            f"init right factor R0 must be positive definite; smallest eigenvalue {wmin}"
        )
    return left, right


def _flip_flop(target, left, right, damping, tol, max_iter, max_condition):
    """The block-coordinate sweeps of ``kl_optimal`` from ``(left, right)``."""
    m, n = target.matrix_shape
    dt = target.dtype
    eye_m, eye_n = jnp.eye(m, dtype=dt), jnp.eye(n, dtype=dt)
    residuals, objective = [], []
    converged = False
    iterations = 0
    right_inv, _ = _spd_inverse(right, "right", max_condition)
    for iterations in range(1, max_iter + 1):  # noqa: B007 (read after the loop)
        new_left = (
            symmetrize(target.contract_left(right_inv) + damping * jnp.trace(right_inv) * eye_m) / n
        )
        left_inv, logdet_left = _spd_inverse(new_left, "left", max_condition)
        new_right = (
            symmetrize(target.contract_right(left_inv) + damping * jnp.trace(left_inv) * eye_n) / m
        )
        new_right_inv, logdet_right = _spd_inverse(new_right, "right", max_condition)
        gauge = jnp.trace(new_right) / n  # fix the free scale: tr R = n
        new_right, new_right_inv, new_left = (
            new_right / gauge,
            new_right_inv * gauge,
            new_left * gauge,
        )
        logdet_left += m * float(jnp.log(gauge))
        logdet_right -= n * float(jnp.log(gauge))
        res = float(
            jnp.linalg.norm(new_left - left) / jnp.linalg.norm(new_left)
            + jnp.linalg.norm(new_right - right) / jnp.linalg.norm(new_right)
        )
        left, right, right_inv = new_left, new_right, new_right_inv
        residuals.append(res)
        objective.append(0.5 * (n * logdet_left + m * logdet_right))
        if res <= tol:
            converged = True
            break
    if not all(np.isfinite(objective)):
        raise FitNeedsDampingError("the KL fit diverged (non-finite objective); pass damping > 0.")
    return left, right, iterations, converged, residuals, objective


def kl_optimal(
    samples,
    *,
    damping: float = 0.0,
    weights=None,
    center: bool = False,
    chunk_size: int | None = None,
    tol: float | None = None,
    max_iter: int = 500,
    init: Kronecker | tuple | None = None,
    max_condition: float | None = None,
) -> Kronecker:
    """The Kronecker ``L ⊗ R`` minimising ``KL(N(0, Σ+λI) ‖ N(0, L⊗R))``.

    Solved by the flip-flop (block-coordinate) iteration from the identity; the first
    half-step from the identity gives Shampoo's ``L/n`` (claim P1-11). The scale
    is not identifiable (``cL, R/c``); it is fixed by ``tr R = n``, then reported in
    balanced form with ``scale`` carrying the product's magnitude.

    Args:
        samples: ``(N, m, n)`` per-example matrices, a DataArray, or a Target.
        damping: ``λ ≥ 0`` added to the target, ``Σ + λI``.
        weights: ``(N,)`` sample weights (default ``1/N``).
        center: subtract the weighted mean first.
        chunk_size: samples per streamed chunk.
        tol: stop when the relative change of both factors is below ``tol`` (default
            1e-12 in float64, 1e-5 in float32).
        max_iter: maximum number of flip-flop sweeps.
        init: None or ``"identity"`` (the identity), or a Kronecker or ``(L0, R0)`` (m×m,
            n×n; ``R0`` positive definite) to start from.
        max_condition: a factor more ill-conditioned than this raises
            ``FitNeedsDampingError`` (default ``0.01/eps``).

    Returns:
        ``Kronecker(left, right, scale)``. ``info.residuals`` holds the relative change
        per sweep, ``info.objective`` the KL divergence up to the constant
        ``−½ log det(Σ+λI)``: ``½(n log det L + m log det R)`` (monotone decreasing).

    Raises:
        FitNeedsDampingError: if a factor becomes singular (e.g. ``λ = 0`` with too few
            samples for the matrix-normal MLE to exist).
        NotPositiveDefiniteError: the fit failed and ``Σ + λI`` is indefinite (negative
            weights; the smallest eigenvalue and the damping that would fix it are named).
        ValueError: a bad option (its name and valid range in the message).
        TypeError: a bad option (its name and valid range in the message).
    """
    damping = check_number(damping, "damping", low=0.0)
    max_iter = check_number(max_iter, "max_iter", low=1, integer=True)
    if tol is not None:
        check_number(tol, "tol", low=0.0)
    target = target_of(samples, weights, center, chunk_size)
    m, n = target.matrix_shape
    dt = target.dtype
    tol = default_tol(dt) if tol is None else float(tol)
    max_condition = 0.01 / float(jnp.finfo(dt).eps) if max_condition is None else max_condition
    left, right = _kl_init(init, m, n, dt)
    try:
        left, right, iterations, converged, residuals, objective = _flip_flop(
            target, left, right, damping, tol, max_iter, max_condition
        )
    except FitNeedsDampingError:
        check_damped_spectrum(target.eigh(), damping)  # say so if Σ + λI is indefinite
        raise
    info = FitInfo(
        iterations=iterations,
        converged=converged,
        residuals=np.asarray(residuals),
        objective=np.asarray(objective),
        method="flip-flop",
    )
    return Kronecker(left, right, 1.0, info=info).normalized()


def instantaneous_kl_direction(g, relative_damping: float, **kwargs):
    """Instantaneous KL-Shampoo's direction ``S^{-1/2} vec G`` for one gradient ``G``.

    ``S = L ⊗ R`` is ``kl_optimal`` of the one-sample target ``Σ = vec G vec Gᵀ`` damped by
    ``λ = relative_damping · ‖G‖_F²/(mn)`` (``tr Σ/(mn)``: the damping relative to ``G``'s
    scale), i.e. the damped flip-flop of one gradient; the direction is
    ``L^{-1/2} G R^{-1/2}/√scale``. As ``λ → 0`` it tends to a multiple of ``G``'s polar
    factor ``UVᵀ`` (Eschenhagen et al., "Clarifying Shampoo", arXiv 2602.09314).

    Args:
        g: one ``(m, n)`` matrix.
        relative_damping: ``λ / (‖G‖_F²/(mn)) > 0``.
        **kwargs: forwarded to ``kl_optimal`` (``tol``, ``max_iter``, …).

    Returns:
        ``(direction, fit)``: the ``(m, n)`` direction and the ``Kronecker`` fit (its
        ``info`` says whether the flip-flop converged).
    """
    relative_damping = check_number(relative_damping, "relative_damping", low=0.0, low_open=True)
    g = jnp.asarray(g)
    if g.ndim != 2:
        raise ValueError(f"g must be one (m, n) matrix; got shape {tuple(g.shape)}")
    lam = relative_damping * float(jnp.sum(g * g)) / g.size
    fit = kl_optimal(g[None], damping=lam, **kwargs)
    return fit.power(-0.5).matvec(g), fit


def one_sided_kl(
    samples,
    *,
    side: str = "left",
    damping: float = 0.0,
    weights=None,
    center: bool = False,
    chunk_size: int | None = None,
) -> Kronecker:
    """KL-optimal one-sided Kronecker factor (P1's Claim 1).

    ``side="left"``: ``argmin_A KL(N(0,Σ+λI) ‖ N(0, A ⊗ I_n))`` is
    ``A = (E[G Gᵀ] + λ n I)/n = L/n + λI`` — Shampoo's left statistic;
    ``side="right"``: ``I_m ⊗ (R/m + λI)``.

    Returns:
        ``Kronecker(L + λnI, I, 1/n)`` or ``Kronecker(I, R + λmI, 1/m)``.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right'; got {side!r}")
    if damping < 0 or not np.isfinite(damping):
        raise ValueError(f"damping must be a finite number ≥ 0; got {damping}")
    target = target_of(samples, weights, center, chunk_size)
    m, n = target.matrix_shape
    dt = target.dtype
    if side == "left":
        stat = target.left_moment()
        return Kronecker(
            symmetrize(stat) + damping * n * jnp.eye(m, dtype=dt), jnp.eye(n, dtype=dt), 1.0 / n
        )
    stat = target.right_moment()
    return Kronecker(
        jnp.eye(m, dtype=dt), symmetrize(stat) + damping * m * jnp.eye(n, dtype=dt), 1.0 / m
    )


register(
    EstimatorSpec(
        "kl_optimal",
        on_target(kl_optimal),
        "KL-optimal (KL-Shampoo)",
        reference="kl_flip_flop",
        optimal_for="kl",
        summary="KL-Shampoo's two-sided fixed point: the Kronecker minimiser of KL(Σ ‖ S).",
        color="#CC79A7",
        marker="v",
    )
)
register(
    EstimatorSpec(
        "one_sided_kl",
        lambda ctx, side="left": one_sided_kl(ctx.target, side=side),
        "One-sided KL",
        reference="one_sided_kl",
        summary="One KL flip-flop half-step from the identity on the other side.",
        color="#B8860B",
        marker="X",
    )
)
