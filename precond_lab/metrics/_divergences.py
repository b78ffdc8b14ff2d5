"""Divergences between the target ``Σ`` and a structured approximation ``S``.

All are exact and matrix-free: with ``X = Σ + λI`` and ``Y = S + λI`` and the eigen
form ``S = Q diag(D) Qᵀ`` (``Q = Qa ⊗ Qb``),

* ``tr(f(Y) X) = Σ_ij f(D_ij + λ) (diag(QᵀΣQ)_ij + λ)`` — one pass over the samples;
* ``log det X``, ``tr(X log X)`` and ``tr(X⁻¹ Y)`` use the target's non-zero
  eigenpairs (``r ≤ min(N, mn)``), computed from the Gram matrix of the samples.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import scipy.optimize

from ..structures import Structure, check_spectrum
from ..targets import Target, checked_eigenvalues
from ._common import prepare, rotated_target_diagonal
from ._registry import MetricSpec, register_metric

__all__ = [
    "kl_divergence",
    "logdet_divergence",
    "von_neumann_divergence",
    "kl_scale",
]


def _check_damping(damping, name: str = "damping"):
    if (
        isinstance(damping, (str, bytes, bool))
        or damping is None
        or np.size(damping) != 1
        or np.asarray(damping).dtype.kind not in "iuf"
    ):
        raise TypeError(f"{name} must be a real number ≥ 0; got {damping!r}")
    damping = float(np.asarray(damping).reshape(()))
    if not np.isfinite(damping) or damping < 0:
        raise ValueError(f"{name} must be a finite number ≥ 0; got {damping}")
    return damping


def _target_eigs(t: Target, damping: float, vectors: bool = False, need_full_rank: bool = True):
    """Eigenpairs of ``Σ``, checked PSD; full rank required when ``damping == 0``."""
    return checked_eigenvalues(t.eigh(vectors=vectors), damping, need_full_rank)


def _target_logdet(mu, dim, damping, floor=0.0):
    """``log det(Σ + λI)``: eigenvalues ``μ + λ`` and ``floor + λ`` on the complement (host)."""
    mu = np.asarray(mu, np.float64)
    logdet = float(np.sum(np.log(mu + damping)))
    if dim > mu.shape[0]:
        logdet += (dim - mu.shape[0]) * float(np.log(floor + damping))
    return logdet


def _forward_terms(values, delta, damping, approx_damping):
    """``tr(Y⁻¹X)`` and ``log det Y`` as functions of a scale ``c`` on ``S``.

    ``X = Σ + λI`` (``damping``), ``Y = c·S + μI`` (``approx_damping``).
    """
    values = np.asarray(values, np.float64).ravel()
    delta = np.asarray(delta, np.float64).ravel()

    def trace_term(c):
        return float(np.sum((delta + damping) / (c * values + approx_damping)))

    def logdet(c):
        return float(np.sum(np.log(c * values + approx_damping)))

    return trace_term, logdet


def _best_scale(objective, c0):
    """Minimise a scalar objective over ``c > 0`` (in ``log c``) from a good start."""
    x0 = np.log(c0)
    res = scipy.optimize.minimize_scalar(
        lambda x: objective(np.exp(x)), bracket=(x0 - 1.0, x0 + 1.0), tol=1e-12
    )
    return float(np.exp(res.x))


def _forward_scale(values, delta, damping, approx_damping):
    trace_term, logdet = _forward_terms(values, delta, damping, approx_damping)
    c0 = trace_term(1.0) / np.size(values)  # the closed form when approx_damping = 0
    if approx_damping == 0:
        return c0
    return _best_scale(lambda c: trace_term(c) + logdet(c), c0)


def _resolve(damping, approx_damping):
    damping = _check_damping(damping)
    approx_damping = (
        0.0 if approx_damping is None else _check_damping(approx_damping, "approx_damping")
    )
    return damping, approx_damping


def kl_scale(
    target,
    approx,
    *,
    damping=0.0,
    approx_damping=None,
    weights=None,
    center=False,
    chunk_size=None,
):
    """The KL-optimal scalar ``c`` for ``c·S`` (forward direction).

    Without damping on the approximation it is the closed form
    ``c = tr(S⁻¹(Σ+λI))/(mn)``; otherwise a one-dimensional
    minimisation of the exact objective.
    """
    damping, approx_damping = _resolve(damping, approx_damping)
    t, s = prepare(target, approx, weights, center, chunk_size)
    values, delta = rotated_target_diagonal(t, s)
    check_spectrum(values, -1.0, approx_damping, "approximation")
    return _forward_scale(values, delta, damping, approx_damping)


def forward_kl_from_spectra(
    values, delta, mu, dim, damping, approx_damping, rescale=False, floor=0.0, logdet_x=None
):
    """Forward KL from the approximation's eigenvalues ``D``, ``δ = diag(QᵀΣQ)`` and the
    target's ``log det(Σ+λI)`` (``logdet_x``, e.g. ``Target.logdet``), or its
    eigenvalues ``μ`` when ``logdet_x`` is None.

    Shared by ``kl_divergence`` and ``score``.
    """
    check_spectrum(values, -1.0, approx_damping, "approximation")
    trace_term, logdet = _forward_terms(values, delta, damping, approx_damping)
    c = _forward_scale(values, delta, damping, approx_damping) if rescale else 1.0
    if logdet_x is None:
        logdet_x = float(_target_logdet(mu, dim, damping, floor))
    return 0.5 * (trace_term(c) - dim + logdet(c) - logdet_x)


def von_neumann_from_spectra(
    values, delta, mu, rank, dim, trace, damping, approx_damping, floor=0.0
):
    """``D_vN(Σ+λI, S+μI)`` from ``D``, ``δ``, the target's eigenvalues and trace."""
    yv = check_spectrum(values, -1.0, approx_damping, "approximation")
    xv = np.asarray(mu, np.float64) + damping
    x_log_x = float(np.sum(np.where(xv > 0, xv * np.log(np.where(xv > 0, xv, 1.0)), 0.0)))
    comp = floor + damping  # eigenvalue of X on the complement of the eigenvectors
    if rank < dim and comp > 0:
        x_log_x += (dim - rank) * comp * np.log(comp)
    delta = np.asarray(delta, np.float64)
    x_log_y = float(np.sum((delta + damping) * np.log(np.asarray(yv, np.float64))))
    trace_y = float(np.sum(np.asarray(values, np.float64))) + dim * approx_damping
    return x_log_x - x_log_y - (float(trace) + dim * damping) + trace_y


def kl_divergence(
    target,
    approx: Structure,
    *,
    damping: float = 0.0,
    approx_damping: float | None = None,
    direction: str = "forward",
    rescale: bool = False,
    weights=None,
    center=False,
    chunk_size=None,
):
    """Gaussian KL divergence between ``X = Σ + λI`` and ``Y = S + μI``.

    * ``direction="forward"``: ``KL(N(0, X) ‖ N(0, Y))`` — with ``μ = 0`` exactly the
      objective that ``kl_optimal`` minimises (P1), the
      matrix-normal likelihood;
    * ``direction="reverse"``: ``KL(N(0, Y) ‖ N(0, X))``.

    Args:
        target: per-example matrices (``(N, m, n)``), a DataArray, or a Target.
        approx: a structure from ``precond_lab.estimators``.
        damping: ``λ ≥ 0`` on the target. A singular target (``N < mn``) needs ``λ > 0``.
        approx_damping: ``μ ≥ 0`` on the approximation (default 0: ``S`` as given, which
            is the objective ``kl_optimal(damping=λ)`` minimises). See "Damping" in
            ``precond_lab.metrics``.
        direction: ``"forward"`` or ``"reverse"``.
        rescale: evaluate at the KL-optimal scalar ``c·S`` instead of ``S``.

    Raises:
        FitNeedsDampingError: if ``Σ + λI`` (or ``S + μI``) is singular.
    """
    damping, approx_damping = _resolve(damping, approx_damping)
    if direction not in ("forward", "reverse"):
        raise ValueError(f"direction must be 'forward' or 'reverse'; got {direction!r}")
    t, s = prepare(target, approx, weights, center, chunk_size)
    dim = t.dim
    if direction == "forward":
        values, delta = rotated_target_diagonal(t, s)
        check_spectrum(values, -1.0, approx_damping, "approximation")
        logdet_x = t.logdet(damping)  # a Cholesky of the Gram where possible
        kl = forward_kl_from_spectra(
            values, delta, None, dim, damping, approx_damping, rescale, logdet_x=logdet_x
        )
        return jnp.asarray(kl, t.dtype)

    # reverse: tr(X⁻¹Y) with X⁻¹ = V (μ+λ)⁻¹ Vᵀ + (I − VVᵀ)/(floor+λ)
    mu, spec = _target_eigs(t, damping, vectors=True)
    values = s.eigenvalues()
    check_spectrum(values, -1.0, approx_damping, "approximation")
    vecs = spec.vectors
    quad = np.asarray(jnp.einsum("rij,rij->r", vecs, s.matvec(vecs)), np.float64)
    mu64 = np.asarray(mu, np.float64)
    vals64 = np.asarray(values, np.float64).ravel()
    trace_s = float(np.sum(vals64))

    def trace_term(c):
        inside = np.sum((c * quad + approx_damping) / (mu64 + damping))
        if spec.rank < dim:
            inside += (c * trace_s + dim * approx_damping - np.sum(c * quad + approx_damping)) / (
                spec.floor + damping
            )
        return float(inside)

    def logdet_s(c):
        return float(np.sum(np.log(c * vals64 + approx_damping)))

    c = 1.0
    if rescale:
        c0 = dim / trace_term(1.0)
        c = c0 if approx_damping == 0 else _best_scale(lambda c: trace_term(c) - logdet_s(c), c0)
    kl = trace_term(c) - dim + float(_target_logdet(mu, dim, damping, spec.floor)) - logdet_s(c)
    return jnp.asarray(0.5 * kl, t.dtype)


def logdet_divergence(
    target, approx, *, damping=0.0, approx_damping=None, weights=None, center=False, chunk_size=None
):
    """LogDet (Stein) divergence ``tr(XY⁻¹) − log det(XY⁻¹) − mn`` = ``2·KL(X‖Y)``."""
    return 2 * kl_divergence(
        target,
        approx,
        damping=damping,
        approx_damping=approx_damping,
        weights=weights,
        center=center,
        chunk_size=chunk_size,
    )


def von_neumann_divergence(
    target, approx, *, damping=0.0, approx_damping=None, weights=None, center=False, chunk_size=None
):
    """``D_vN(X, Y) = tr(X log X − X log Y − X + Y)`` with ``X = Σ+λI``, ``Y = S+μI``.

    ``L ⊗ R / tr Σ`` (``shampoo_squared``) is its exact
    minimiser over Kronecker products when ``λ = μ = 0``. ``0 log 0 = 0``,
    so a singular target is fine; ``S + μI`` must be positive definite.
    """
    damping, approx_damping = _resolve(damping, approx_damping)
    t, s = prepare(target, approx, weights, center, chunk_size)
    values, delta = rotated_target_diagonal(t, s)
    mu, spec = _target_eigs(t, damping, need_full_rank=False)
    vn = von_neumann_from_spectra(
        values, delta, mu, spec.rank, t.dim, t.trace(), damping, approx_damping, spec.floor
    )
    return jnp.asarray(vn, t.dtype)


register_metric(
    MetricSpec(
        "kl",
        "KL divergence",
        reference="kl_divergence",
        function="kl_divergence",
        symbol=r"$\mathrm{KL}(\Sigma \,\|\, S)$",
    )
)
register_metric(
    MetricSpec(
        "kl_rescaled",
        "KL divergence (optimal scale)",
        reference="kl_divergence",
        function="kl_divergence",
        symbol=r"$\mathrm{KL}(\Sigma \,\|\, c^*S)$",
        function_kwargs=(("rescale", True),),
        reference_kwargs=(("rescale", True),),
    )
)
register_metric(
    MetricSpec(
        "kl_scale",
        "KL-optimal scale $c^*$",
        reference="kl_scale",
        function="kl_scale",
        lower_is_better=None,
    )
)
register_metric(
    MetricSpec(
        "von_neumann",
        "von Neumann divergence",
        reference="von_neumann_divergence",
        function="von_neumann_divergence",
        symbol=r"$D_\mathrm{vN}(\Sigma, S)$",
    )
)
register_metric(
    MetricSpec(
        "logdet",
        "LogDet (Burg) divergence",
        reference="kl_divergence",
        function="logdet_divergence",
        symbol=r"$D_\mathrm{LD}(\Sigma, S)$",
        in_score=False,
    )
)


def diagonal_kl(target_values, approx_values, *, rescale: bool = True) -> float:
    """``KL(N(0, diag t) ‖ N(0, c·diag x))`` of two positive diagonals (e.g. a target's
    second moment along an eigenbasis and a method's eigenvalues there), with the KL-optimal
    ``c = mean(t/x)`` (``rescale``) or ``c = 1``: ``½Σ[r − 1 − ln r]``, ``r = t/(c·x)``.

    Raises:
        ValueError: the two are not the same shape, or not all positive and finite.
    """
    t, x = np.asarray(target_values, np.float64), np.asarray(approx_values, np.float64)
    if t.shape != x.shape or t.size == 0:
        raise ValueError(
            f"diagonal_kl: target and approximation diagonals must have one shape; got "
            f"{t.shape} and {x.shape}"
        )
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(x)) and t.min() > 0 and x.min() > 0):
        raise ValueError(
            "diagonal_kl: both diagonals must be positive and finite (add the damping to "
            "zero eigenvalues first)"
        )
    r = t / x
    r = r / r.mean() if rescale else r
    return float(0.5 * np.sum(r - 1.0 - np.log(r)))
