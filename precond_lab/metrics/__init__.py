"""Approximation-quality metrics: exact, matrix-free (never an ``mn × mn`` array).

Each metric takes the target (per-example matrices ``G``, a DataArray or a
``Target``) and a structure, plus ``weights=``. To score
many approximations of one target, build the target once
(``precond_lab.SampleTarget(G)``): its Frobenius norm and spectrum are cached.

Damping, one meaning everywhere: ``damping=λ`` scores against ``Σ + λI`` — exactly
``metric(target.damped(λ), S)`` — and the approximation is used as given; damp it with an
explicit ``approx_damping=μ`` (``S + μI``). Estimators' ``damping=λ`` likewise fit
``Σ + λI``; K-FAC, built from factors, adds ``√λ I`` to each factor.
"""

# isort: off
# registration order (= the order of METRICS and SCORE_NAMES)
from . import _frobenius, _divergences, _spectra, _bregman  # noqa: F401

# isort: on
from ._bregman import bregman_divergence
from ._direction import (
    DirectionQuality,
    direction_cosines,
    direction_quality,
    exact_direction,
    loss_scaling_response,
)
from ._divergences import (
    diagonal_kl,
    kl_divergence,
    kl_scale,
    logdet_divergence,
    von_neumann_divergence,
)
from ._frobenius import (
    cosine_similarity,
    frobenius_inner,
    frobenius_scale,
    relative_frobenius_error,
)
from ._registry import METRICS, MetricSpec, register_metric
from ._score import SCORE_NAMES, score
from ._spectra import spectrum

__all__ = [
    "METRICS",
    "MetricSpec",
    "register_metric",
    "DirectionQuality",
    "direction_cosines",
    "direction_quality",
    "exact_direction",
    "loss_scaling_response",
    "SCORE_NAMES",
    "bregman_divergence",
    "score",
    "cosine_similarity",
    "frobenius_inner",
    "frobenius_scale",
    "diagonal_kl",
    "kl_divergence",
    "kl_scale",
    "logdet_divergence",
    "relative_frobenius_error",
    "spectrum",
    "von_neumann_divergence",
]
