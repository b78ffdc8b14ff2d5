"""The trace-power Bregman divergence ``B_q(Σ + λI, S + μI)`` (exact, matrix-free).

With ``X = Σ + λI``, ``Y = S + μI`` and ``q ∉ {0, 1}``,

    B_q(X, Y) = tr X^q/(q(q−1)) + tr Y^q/q − tr(Y^{q−1} X)/(q−1),

evaluated without cancellation near ``q = 0`` and ``q = 1`` (``precond_lab._trace_power``),
where ``tr X^q`` comes from the target's non-zero spectrum (the Gram matrix of the
samples, cached on the target) plus the damping floor on its complement, ``tr Y^q`` from
the eigenvalues ``D`` of the approximation's Kronecker eigen form ``S = Q diag(D) Qᵀ``,
and the cross term is ``Σ_ij (D_ij + μ)^{q−1} (diag(QᵀΣQ)_ij + λ)`` — one pass of
per-sample products. The limits ``q = 1`` (von Neumann) and ``q = 0`` (LogDet = 2·KL)
use the closed forms of those divergences; ``q = 2`` is ``½‖X − Y‖²_F``.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .._trace_power import bregman_from_eigen, generator
from .._validation import FitNeedsDampingError, NonFiniteError
from ..structures import Structure, check_spectrum
from ._common import prepare, rotated_target_diagonal
from ._divergences import (
    _resolve,
    _target_eigs,
    forward_kl_from_spectra,
    von_neumann_from_spectra,
)
from ._registry import MetricSpec, register_metric

__all__ = ["bregman_divergence", "bregman_from_spectra"]


def bregman_from_spectra(q, values, delta, mu, rank, dim, damping, approx_damping, floor=0.0):
    """``B_q(Σ+λI, S+μI)`` from ``D``, ``δ = diag(QᵀΣQ)`` and the target's eigenvalues ``μ``.

    ``rank`` eigenvalues are given; the other ``dim − rank`` equal ``floor`` (before ``λ``).
    Accurate for every ``q`` including within round-off of 0 and 1, where it tends to the
    LogDet and von Neumann divergences (``precond_lab._trace_power``).
    """
    yv = np.asarray(check_spectrum(values, q - 1, approx_damping, "approximation"), np.float64)
    yv = yv.ravel()
    xv = np.maximum(np.asarray(mu, np.float64), 0.0) + damping
    comp = floor + damping
    if q < 0 and (float(np.min(xv, initial=np.inf)) <= 0 or (rank < dim and comp <= 0)):
        raise FitNeedsDampingError(
            f"Σ + λI is singular and B_q with q = {q:g} < 0 is infinite; pass damping > 0."
        )
    # Σ f_q(x) + Σ_j [e_q(log y_j) − (δ_j + λ) f_q′(y_j)] (precond_lab._trace_power): the
    # literal tr X^q/(q(q−1)) + tr Y^q/q − tr(Y^{q−1}X)/(q−1) cancels near q = 0 and 1.
    total = float(np.sum(generator(xv, q)))
    if rank < dim:
        total += (dim - rank) * float(generator(comp, q))
    delta = np.asarray(delta, np.float64).ravel() + damping
    return total + bregman_from_eigen(q, np.empty(0), yv, delta)


def bregman_divergence(
    target,
    approx: Structure,
    q: float = 0.5,
    *,
    damping: float = 0.0,
    approx_damping: float | None = None,
    weights=None,
    center=False,
    chunk_size=None,
):
    """The trace-power Bregman divergence ``B_q(Σ + λI, S + μI)``.

    ``q = 2``: ``½‖X − Y‖²_F``; ``q = 1``: von Neumann
    (``von_neumann_divergence``); ``q = ½``: the square-root
    divergence of PSGD-Kron; ``q = 0``: LogDet
    (``logdet_divergence``, ``= 2·KL``). The Kronecker
    minimiser over ``S`` is ``bregman_optimal`` with the
    same ``q`` and ``damping``.

    Args:
        target: per-example matrices (``(N, m, n)``), a DataArray, or a Target.
        approx: a structure from ``precond_lab.estimators``.
        q: the trace power (finite real).
        damping: ``λ ≥ 0`` on the target.
        approx_damping: ``μ ≥ 0`` on the approximation (default 0).

    Raises:
        FitNeedsDampingError: ``q < 1`` and ``S + μI`` is singular, or ``q ≤ 0`` and
            ``Σ + λI`` is singular (the divergence is infinite).
    """
    if isinstance(q, (str, bytes, bool)) or q is None or np.size(q) != 1:
        raise TypeError(f"the trace power q must be a finite real number; got {q!r}")
    if np.asarray(q).dtype.kind not in "iuf":
        raise TypeError(f"the trace power q must be a finite real number; got {q!r}")
    q = float(np.asarray(q).reshape(()))
    if not np.isfinite(q):
        raise ValueError(f"the trace power q must be a finite real number; got {q}")
    damping, approx_damping = _resolve(damping, approx_damping)
    t, s = prepare(target, approx, weights, center, chunk_size)
    values, delta = rotated_target_diagonal(t, s)
    mu, spec = _target_eigs(t, damping, need_full_rank=q <= 0)
    if q == 1:
        out = von_neumann_from_spectra(
            values, delta, mu, spec.rank, t.dim, t.trace(), damping, approx_damping, spec.floor
        )
    elif q == 0:
        out = 2 * forward_kl_from_spectra(
            values, delta, mu, t.dim, damping, approx_damping, floor=spec.floor
        )
    else:
        out = bregman_from_spectra(
            q, values, delta, mu, spec.rank, t.dim, damping, approx_damping, spec.floor
        )
    dtype = np.dtype(t.dtype)
    if not (abs(float(out)) <= float(np.finfo(dtype).max)):  # inf or NaN from overflow
        raise NonFiniteError(
            f"B_q(Σ + λI, S + μI) at q = {q:g} overflows {dtype.name} (tr X^q or tr Y^q "
            f"exceeds {float(np.finfo(dtype).max):.1e} for eigenvalues away from 1): use a "
            f"smaller |q|, or rescale the target and the approximation together "
            f"(B_q(cX, cY) = c^q B_q(X, Y))."
        )
    return jnp.asarray(out, t.dtype)


register_metric(
    MetricSpec(
        "bregman",
        "Trace-power Bregman divergence",
        reference="bregman_divergence",
        function="bregman_divergence",
        symbol=r"$B_q(\Sigma, S)$",
        in_score=False,
        function_kwargs=(("q", 0.5),),
        reference_kwargs=(("q", 0.5),),
    )
)
