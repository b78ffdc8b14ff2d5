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

import dataclasses

import jax.numpy as jnp
import numpy as np

from .._validation import FitNeedsDampingError, check_damped_spectrum, check_number
from ..linalg import eigh_sym, symmetrize
from ..structures import FitInfo, Kronecker
from ..targets import SampleTarget
from ._common import default_tol, target_of
from ._registry import EstimatorSpec, on_target, register

__all__ = [
    "FlipFlopRecord",
    "ShapeGap",
    "instantaneous_kl_direction",
    "kl_fixed_point_residual",
    "kl_flip_flop_record",
    "kl_optimal",
    "kl_shape_gap",
    "one_sided_kl",
]


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


def kl_fixed_point_residual(target, fit: Kronecker) -> float:
    """The flip-flop equations' residual at ``fit``, recomputed from one sweep.

    ``‖L' − L‖/‖L‖ + ‖R' − R‖/‖R‖`` with ``L' = E[G R⁻¹ Gᵀ]/n``, ``R' = E[Gᵀ L⁻¹ G]/m``
    of ``target`` (pass the damped target the fit was made on: its contractions carry the
    ``λ tr(·) I`` terms); zero exactly at a stationary point (P1-12), whatever the split
    of the scale between the factors. ``reference.kl_fixed_point_residual`` is its dense
    twin.

    Args:
        target: the (damped) target, a ``Target`` or per-example matrices.
        fit: a ``Kronecker`` of the target's shape (e.g. ``kl_optimal(target)``).

    Raises:
        TypeError: ``fit`` is not a Kronecker.
        ValueError: ``fit``'s shape differs from the target's.
    """
    if not isinstance(fit, Kronecker):
        raise TypeError(
            f"fit must be a Kronecker (e.g. kl_optimal(target)); got {type(fit).__name__}"
        )
    target = target_of(target)
    if tuple(fit.matrix_shape) != tuple(target.matrix_shape):
        raise ValueError(
            f"fit has matrix_shape {tuple(fit.matrix_shape)} but the target "
            f"{tuple(target.matrix_shape)}: pass the fit of this target"
        )
    m, n = target.matrix_shape
    left = np.asarray(fit.left, np.float64) * float(fit.scale)
    right = np.asarray(fit.right, np.float64)
    inv = [jnp.asarray(np.linalg.inv(f), target.dtype) for f in (right, left)]
    new_l = np.asarray(target.contract_left(inv[0]), np.float64) / n
    new_r = np.asarray(target.contract_right(inv[1]), np.float64) / m
    return float(
        np.linalg.norm(new_l - left) / np.linalg.norm(left)
        + np.linalg.norm(new_r - right) / np.linalg.norm(right)
    )


@dataclasses.dataclass(frozen=True)
class FlipFlopRecord:
    """``kl_flip_flop_record``'s result: how one damped flip-flop fit went.

    Attributes:
        n_examples: the examples fitted on.
        needs_damping: the fit raised ``FitNeedsDampingError`` (no fit: the rest is unset).
        iterations: flip-flop sweeps run; converged: the tolerance was reached.
        residuals: the relative change of the factors per sweep (``FitInfo.residuals``).
        stationarity: ``kl_fixed_point_residual`` at the fit.
    """

    n_examples: int
    needs_damping: bool
    iterations: int = -1
    converged: bool = False
    residuals: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    stationarity: float = np.nan

    def as_dict(self, prefix: str = "", length: int | None = None) -> dict:
        """The fields by ``prefix + name`` (booleans as int), ``residuals`` NaN-padded to
        ``length``; a fit that needs damping gives only ``n_examples`` and
        ``needs_damping`` (for ``study.grid``, which marks the rest missing)."""
        out = {"n_examples": self.n_examples, "needs_damping": int(self.needs_damping)}
        if not self.needs_damping:
            hist = np.full(length or len(self.residuals), np.nan)
            hist[: len(self.residuals)] = self.residuals[: len(hist)]
            out.update(iterations=self.iterations, converged=int(self.converged),
                       residuals=hist, stationarity=self.stationarity)  # fmt: skip
        return {prefix + k: v for k, v in out.items()}


def kl_flip_flop_record(
    samples,
    *,
    weights=None,
    examples: int | None = None,
    per_example: int = 1,
    damping_rel: float = 0.0,
    max_iter: int = 500,
) -> FlipFlopRecord:
    """``kl_optimal`` on the first ``examples`` examples at ``λ = damping_rel·trΣ_N/(mn)``,
    recorded: sweeps, convergence, residual history and fixed-point residual (P1-12).

    Args:
        samples: ``(N·K, m, n)`` per-example matrices, ``K = per_example`` consecutive
            pseudo-samples per example (e.g. the classes of a Gauss–Newton bag).
        weights: ``(N·K,)`` weights (default uniform); the subset's are renormalised.
        examples: how many examples (None or more than there are: all).
        damping_rel: the damping relative to the subset's ``tr Σ/(mn)``, ≥ 0.
        max_iter: flip-flop sweeps.

    Raises:
        ValueError: a bad option (the message names it).
    """
    samples = np.asarray(samples)
    if samples.ndim != 3 or samples.shape[0] % int(per_example):
        raise ValueError(
            f"samples must be (N·K, m, n) with K = per_example = {per_example} dividing N·K; "
            f"got shape {samples.shape}"
        )
    damping_rel = check_number(damping_rel, "damping_rel", low=0.0)
    total = samples.shape[0] // per_example
    n_ex = total if examples is None else min(check_number(examples, "examples", low=1,
                                                           integer=True), total)  # fmt: skip
    w = np.ones(len(samples)) if weights is None else np.asarray(weights, np.float64)
    w = w[: n_ex * per_example] / np.sum(w[: n_ex * per_example])
    base = SampleTarget(samples[: n_ex * per_example], w)
    x = base.damped(damping_rel * float(base.trace()) / np.prod(base.matrix_shape))
    try:
        fit = kl_optimal(x, max_iter=max_iter)
    except FitNeedsDampingError:
        return FlipFlopRecord(n_ex, True)
    info = fit.info
    return FlipFlopRecord(n_ex, False, info.iterations, bool(info.converged),
                          np.asarray(info.residuals), kl_fixed_point_residual(x, fit))  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ShapeGap:
    """``kl_shape_gap``'s result: the shape part of Shampoo's KL gap and its noise.

    Attributes:
        gap: ``KL(X ‖ c*·L⊗R) − KL(X ‖ KL-opt)`` on all examples (``X = Σ + λI``).
        kl_optimal: ``KL(X ‖ KL-opt)``.
        resampled: the gap on each bootstrap resample of the examples.
    """

    gap: float
    kl_optimal: float
    resampled: np.ndarray

    @property
    def spread(self) -> float:
        """The standard deviation of the resampled gaps (NaN with fewer than two)."""
        r = self.resampled[np.isfinite(self.resampled)]
        return float(np.std(r, ddof=1)) if r.size > 1 else np.nan

    @property
    def corrected(self) -> float:
        """The bootstrap bias-corrected gap ``2·gap − mean(resampled)``: sampling noise
        alone makes a Kronecker ``Σ``'s sample gap positive, and a resample's larger;
        the correction takes that inflation off (≈ 0 or below for a Kronecker ``Σ``)."""
        r = self.resampled[np.isfinite(self.resampled)]
        return float(2 * self.gap - np.mean(r)) if r.size else np.nan


def _shape_gap_once(samples, weights, damping_rel, max_iter, init=None):
    from ..metrics import kl_divergence

    base = SampleTarget(samples, weights)
    m, n = base.matrix_shape
    x = base.damped(damping_rel * float(base.trace()) / (m * n))
    fit = kl_optimal(x, max_iter=max_iter, init=init)
    opt = float(kl_divergence(x, fit))
    left, right = x.second_moments()
    rescaled = float(kl_divergence(x, Kronecker(left, right, 1.0 / (m * n)), rescale=True))
    return rescaled - opt, opt, fit


def kl_shape_gap(
    samples,
    *,
    weights=None,
    damping_rel: float = 1e-3,
    resamples: int = 0,
    per_example: int = 1,
    seed: int = 0,
    max_iter: int = 500,
) -> ShapeGap:
    """The shape part of Shampoo's KL gap, with its spread over bootstrap resamples.

    Every multiple ``c·L⊗R`` of Shampoo's statistics (``L⊗R/(mn)``, ``L⊗R/tr Σ``) has the
    same KL-optimal rescaling ``c*·L⊗R``; what is left after it, ``KL(X ‖ c*·L⊗R) −
    KL(X ‖ KL-opt) ≥ 0``, is the *shape* mismatch of P1-14 (zero iff ``L⊗R`` is
    proportional to the KL optimum, e.g. for a Kronecker ``X``). On finite samples the
    gap is positive even for a Kronecker population; the bootstrap (examples drawn with
    replacement, ``λ`` recomputed on each, each KL fit started from the full sample's)
    measures that noise: ``ShapeGap.spread`` and ``ShapeGap.corrected``.

    Args:
        samples: ``(N·K, m, n)`` per-example matrices: ``K = per_example`` consecutive
            pseudo-samples per example (e.g. one per class of a Gauss–Newton bag),
            resampled together.
        weights: ``(N·K,)`` weights (default ``1/(N·K)``).
        damping_rel: ``λ = damping_rel · tr Σ/(mn)``, ≥ 0.
        resamples: the number of bootstrap resamples (0: none).
        per_example: pseudo-samples per example, dividing ``N·K``.
        seed: the resampling seed.
        max_iter: flip-flop sweeps of each KL fit.

    Raises:
        ValueError: a bad option, or samples that are not ``(N·K, m, n)`` with ``K``
            dividing the count (the message names the argument).
    """
    samples = np.asarray(samples)
    if samples.ndim != 3:
        raise ValueError(
            f"samples must be (N, m, n) per-example matrices; got shape {samples.shape}"
        )
    damping_rel = check_number(damping_rel, "damping_rel", low=0.0)
    resamples = check_number(resamples, "resamples", low=0, integer=True)
    per_example = check_number(per_example, "per_example", low=1, integer=True)
    if samples.shape[0] % per_example:
        raise ValueError(
            f"per_example={per_example} does not divide the {samples.shape[0]} samples: pass "
            "the number of pseudo-samples each example contributes (e.g. the classes)"
        )
    total = samples.shape[0]
    w = np.full(total, 1.0 / total) if weights is None else np.asarray(weights, np.float64)
    if w.shape != (total,):
        raise ValueError(f"weights must have shape ({total},); got {w.shape}")
    gap, opt, fit = _shape_gap_once(samples, w, damping_rel, max_iter)
    rng = np.random.default_rng(seed)
    n_ex = total // per_example
    out = np.full(resamples, np.nan)
    for b in range(resamples):
        pick = rng.integers(0, n_ex, n_ex)
        idx = (pick[:, None] * per_example + np.arange(per_example)).ravel()
        try:
            out[b] = _shape_gap_once(samples[idx], w[idx], damping_rel, max_iter, fit)[0]
        except FitNeedsDampingError:  # a resample too degenerate to fit: left out
            pass
    return ShapeGap(gap, opt, out)


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
