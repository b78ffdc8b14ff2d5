"""All forward metrics of one approximation from a single pass over the samples."""

from __future__ import annotations

import numpy as np

from .._validation import FitNeedsDampingError
from ._common import prepare, rotated_target_diagonal
from ._divergences import (
    _forward_scale,
    _resolve,
    _target_eigs,
    forward_kl_from_spectra,
    von_neumann_from_spectra,
)
from ._registry import score_names

__all__ = ["score", "SCORE_NAMES"]

#: The keys of :func:`score`: the registered metrics with ``in_score=True``.
SCORE_NAMES = score_names()
_KL_KEYS = ("kl", "kl_rescaled", "kl_scale")


def _kl_terms(values, delta, mu, spec, t, damping, approx_damping) -> dict[str, float]:
    """``kl``, ``kl_rescaled``, ``kl_scale`` from the spectra (``inf`` where X or Y is
    singular, and then a NaN scale)."""
    try:
        _target_eigs(t, damping)  # raises if Σ + λI is singular
        args = (values, delta, mu, t.dim, damping, approx_damping)
        kl = forward_kl_from_spectra(*args, floor=spec.floor)
        kl_r = forward_kl_from_spectra(*args, rescale=True, floor=spec.floor)
        kl_c = _forward_scale(values, delta, damping, approx_damping)
    except FitNeedsDampingError:  # X or Y singular: the divergence is +∞
        kl = kl_r = float("inf")
        kl_c = float("nan")
    return {"kl": float(kl), "kl_rescaled": float(kl_r), "kl_scale": float(kl_c)}


def _von_neumann_term(values, delta, mu, spec, t, damping, approx_damping) -> float:
    """``von_neumann`` from the spectra (``inf`` for a singular ``S + μI``)."""
    try:
        return float(
            von_neumann_from_spectra(
                values, delta, mu, spec.rank, t.dim, t.trace(), damping, approx_damping, spec.floor
            )
        )
    except FitNeedsDampingError:  # S + μI singular: −tr(X log Y) = +∞
        return float("inf")


def score(
    target,
    approx,
    *,
    damping: float = 0.0,
    approx_damping: float | None = None,
    weights=None,
    center=False,
    chunk_size=None,
    metrics=None,
) -> dict[str, float]:
    """Every forward metric of ``approx`` against ``target``, in one pass over the samples.

    With the eigen form ``S = Q diag(D) Qᵀ`` and ``δ = diag(QᵀΣQ)`` (the one pass),
    ``⟨Σ, S⟩ = Σ δ·D``, ``‖S‖ = ‖D‖``, ``tr(Y⁻¹X)`` and ``tr(X log Y)`` are sums over
    ``(D, δ)``; ``‖Σ‖_F`` and the target's spectrum are cached on the target. Build the
    target once (``SampleTarget(G)``) to score many approximations cheaply.

    ``metrics`` (default: all of :data:`SCORE_NAMES`) names the keys wanted; the target's
    spectrum (an eigendecomposition of its Gram matrix) is computed only when a KL or von
    Neumann key is asked for, the KL terms only for KL keys. The values do not depend on
    which others are asked for.

    Returns:
        A dict with the keys of :data:`SCORE_NAMES` (or those of ``metrics``): ``cosine``,
        ``relative_frobenius``
        (``c = 1``), ``relative_frobenius_rescaled`` and ``frobenius_scale`` (``c*``),
        ``kl`` / ``kl_rescaled`` / ``kl_scale`` (forward ``KL(Σ+λI ‖ c·S+μI)``; ``inf``
        where ``Σ+λI`` or ``S+μI`` is singular, as the divergence is infinite there, and
        then ``kl_scale`` is NaN) and ``von_neumann`` (``inf`` for a singular ``S+μI``).
        An indefinite approximation raises ``ValueError``. All values agree with the
        individual metric functions.
    """
    wanted = SCORE_NAMES if metrics is None else tuple(metrics)
    unknown = [k for k in wanted if k not in SCORE_NAMES]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; score() computes {', '.join(SCORE_NAMES)}")
    damping, approx_damping = _resolve(damping, approx_damping)
    t, s = prepare(target, approx, weights, center, chunk_size)
    values, delta = rotated_target_diagonal(t, s)
    d = np.asarray(values, np.float64).ravel()
    dl = np.asarray(delta, np.float64).ravel()
    inner = float(d @ dl)
    norm_s = float(np.linalg.norm(d))
    norm_t = float(t.frobenius_norm())
    cosine = inner / (norm_t * norm_s)
    rel_sq = norm_t**2 - 2 * inner + norm_s**2
    out = {
        "cosine": cosine,
        "relative_frobenius": float(np.sqrt(max(rel_sq, 0.0)) / norm_t),
        "relative_frobenius_rescaled": float(np.sqrt(max(1.0 - cosine**2, 0.0))),
        "frobenius_scale": inner / norm_s**2,
    }
    want_kl = any(k in wanted for k in _KL_KEYS)
    if want_kl or "von_neumann" in wanted:
        mu, spec = _target_eigs(t, damping, need_full_rank=False)
        terms = (values, delta, mu, spec, t, damping, approx_damping)
        if want_kl:
            out.update(_kl_terms(*terms))
        if "von_neumann" in wanted:
            out["von_neumann"] = _von_neumann_term(*terms)
    return {k: out[k] for k in wanted}
