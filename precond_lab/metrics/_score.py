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


def score(
    target,
    approx,
    *,
    damping: float = 0.0,
    approx_damping: float | None = None,
    weights=None,
    center=False,
    chunk_size=None,
) -> dict[str, float]:
    """Every forward metric of ``approx`` against ``target``, in one pass over the samples.

    With the eigen form ``S = Q diag(D) Qᵀ`` and ``δ = diag(QᵀΣQ)`` (the one pass),
    ``⟨Σ, S⟩ = Σ δ·D``, ``‖S‖ = ‖D‖``, ``tr(Y⁻¹X)`` and ``tr(X log Y)`` are sums over
    ``(D, δ)``; ``‖Σ‖_F`` and the target's spectrum are cached on the target. Build the
    target once (``SampleTarget(G)``) to score many approximations cheaply.

    Returns:
        A dict with the keys of :data:`SCORE_NAMES`: ``cosine``, ``relative_frobenius``
        (``c = 1``), ``relative_frobenius_rescaled`` and ``frobenius_scale`` (``c*``),
        ``kl`` / ``kl_rescaled`` / ``kl_scale`` (forward ``KL(Σ+λI ‖ c·S+μI)``; ``inf``
        where ``Σ+λI`` or ``S+μI`` is singular, as the divergence is infinite there, and
        then ``kl_scale`` is NaN) and ``von_neumann`` (``inf`` for a singular ``S+μI``).
        An indefinite approximation raises ``ValueError``. All values agree with the
        individual metric functions.
    """
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
    mu, spec = _target_eigs(t, damping, need_full_rank=False)
    try:
        _target_eigs(t, damping)  # raises if Σ + λI is singular
        args = (values, delta, mu, t.dim, damping, approx_damping)
        kl = forward_kl_from_spectra(*args, floor=spec.floor)
        kl_r = forward_kl_from_spectra(*args, rescale=True, floor=spec.floor)
        kl_c = _forward_scale(values, delta, damping, approx_damping)
    except FitNeedsDampingError:  # X or Y singular: the divergence is +∞
        kl = kl_r = float("inf")
        kl_c = float("nan")
    try:
        vn = von_neumann_from_spectra(
            values, delta, mu, spec.rank, t.dim, t.trace(), damping, approx_damping, spec.floor
        )
    except FitNeedsDampingError:  # S + μI singular: −tr(X log Y) = +∞
        vn = float("inf")
    out.update(kl=float(kl), kl_rescaled=float(kl_r), kl_scale=float(kl_c), von_neumann=float(vn))
    return out
