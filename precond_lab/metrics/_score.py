"""All forward metrics of one approximation from a single pass over the samples."""

from __future__ import annotations

import numpy as np

from .._validation import FitNeedsDampingError
from ..errors import DegenerateInputError
from ..structures import Diagonal
from ._common import prepare
from ._divergences import (
    _forward_scale,
    _resolve,
    _target_eigs,
    forward_kl_from_spectra,
    von_neumann_from_spectra,
)
from ._registry import score_names

__all__ = ["score", "SCORE_NAMES"]

#: The keys of ``score``: the registered metrics with ``in_score=True``.
SCORE_NAMES = score_names()
_KL_KEYS = ("kl", "kl_rescaled", "kl_scale")


def _kl_terms(values, delta, t, damping, approx_damping) -> dict[str, float]:
    """``kl``, ``kl_rescaled``, ``kl_scale`` from the spectra and ``log det(Σ+λI)`` (``inf``
    where X or Y is singular, and then a NaN scale)."""
    try:
        logdet_x = t.logdet(damping)  # raises if Σ + λI is singular; cached Gram, Cholesky
        args = (values, delta, None, t.dim, damping, approx_damping)
        kl = forward_kl_from_spectra(*args, logdet_x=logdet_x)
        kl_r = forward_kl_from_spectra(*args, rescale=True, logdet_x=logdet_x)
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
):
    """Every forward metric of ``approx`` against ``target``, in one pass over the samples.

    With the eigen form ``S = Q diag(D) Qᵀ`` and ``δ = diag(QᵀΣQ)`` (the one pass),
    ``⟨Σ, S⟩ = Σ δ·D``, ``‖S‖ = ‖D‖``, ``tr(Y⁻¹X)`` and ``tr(X log Y)`` are sums over
    ``(D, δ)``; ``‖Σ‖_F``, ``log det(Σ+λI)`` and the target's spectrum come from one
    weighted Gram matrix cached on the target. Build the target once
    (``SampleTarget(G)``, ``FactoredTarget(δ, a)``) to score many approximations cheaply;
    ``approx`` may be a list of structures, scored with one pass over the samples for all
    of them (then a list of dicts is returned).

    ``metrics`` (default: all of ``SCORE_NAMES``) names the keys wanted; the target's
    spectrum (eigenvalues of its Gram matrix) is computed only when the von Neumann key
    is asked for, ``log det(Σ+λI)`` (one Cholesky when ``λ > 0``) only for KL keys. The
    values do not depend on which others are asked for.

    Returns:
        A dict with the keys of ``SCORE_NAMES`` (or those of ``metrics``): ``cosine``,
        ``relative_frobenius``
        (``c = 1``), ``relative_frobenius_rescaled`` and ``frobenius_scale`` (``c*``),
        ``kl`` / ``kl_rescaled`` / ``kl_scale`` (forward ``KL(Σ+λI ‖ c·S+μI)``; ``inf``
        where ``Σ+λI`` or ``S+μI`` is singular, as the divergence is infinite there, and
        then ``kl_scale`` is NaN) and ``von_neumann`` (``inf`` for a singular ``S+μI``).
        An indefinite approximation raises ``ValueError``. All values agree with the
        individual metric functions. A list of such dicts for a list ``approx``.
    """
    wanted = SCORE_NAMES if metrics is None else tuple(metrics)
    unknown = [k for k in wanted if k not in SCORE_NAMES]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; score() computes {', '.join(SCORE_NAMES)}")
    damping, approx_damping = _resolve(damping, approx_damping)
    many = isinstance(approx, (list, tuple))
    approxes = list(approx) if many else [approx]
    if not approxes:
        return []
    t, _ = prepare(target, approxes[0], weights, center, chunk_size)
    pairs = [prepare(t, s)[1].eigen() for s in approxes]
    bases = [
        (None, None) if isinstance(e, Diagonal) else (e.left_basis, e.right_basis) for e in pairs
    ]
    deltas = t.rotated_diagonals(bases)
    out = [
        _score_one(t, e.values, delta, wanted, damping, approx_damping)
        for e, delta in zip(pairs, deltas, strict=True)
    ]
    return out if many else out[0]


def _score_one(t, values, delta, wanted, damping, approx_damping) -> dict[str, float]:
    d = np.asarray(values, np.float64).ravel()
    dl = np.asarray(delta, np.float64).ravel()
    inner = float(d @ dl)
    norm_s = float(np.linalg.norm(d))
    norm_t = float(t.frobenius_norm())
    if norm_s == 0 or norm_t == 0:
        what = "approximation" if norm_s == 0 else "target"
        raise DegenerateInputError(
            f"the {what} is zero (‖·‖_F = 0): cosine, relative error and divergences are "
            "undefined for it"
        )
    cosine = inner / (norm_t * norm_s)
    rel_sq = norm_t**2 - 2 * inner + norm_s**2
    out = {
        "cosine": cosine,
        "relative_frobenius": float(np.sqrt(max(rel_sq, 0.0)) / norm_t),
        "relative_frobenius_rescaled": float(np.sqrt(max(1.0 - cosine**2, 0.0))),
        "frobenius_scale": inner / norm_s**2,
    }
    if any(k in wanted for k in _KL_KEYS):
        out.update(_kl_terms(values, delta, t, damping, approx_damping))
    if "von_neumann" in wanted:
        mu, spec = _target_eigs(t, damping, need_full_rank=False)
        out["von_neumann"] = _von_neumann_term(values, delta, mu, spec, t, damping, approx_damping)
    return {k: out[k] for k in wanted}
