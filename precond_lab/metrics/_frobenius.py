"""Frobenius-geometry metrics: inner product, cosine similarity, relative error."""

from __future__ import annotations

import jax.numpy as jnp

from ._common import prepare
from ._registry import MetricSpec, register_metric

__all__ = ["frobenius_inner", "cosine_similarity", "relative_frobenius_error", "frobenius_scale"]


def frobenius_inner(target, approx, *, weights=None, center=False, chunk_size=None):
    """``⟨Σ, S⟩_F = tr(SΣ) = E[⟨G, S G⟩]`` (one pass over the samples)."""
    t, s = prepare(target, approx, weights, center, chunk_size)
    return t.trace_product(s)


def cosine_similarity(target, approx, *, weights=None, center=False, chunk_size=None):
    """Frobenius cosine ``⟨Σ, S⟩ / (‖Σ‖_F ‖S‖_F)`` (the metric of Morwani et al.).

    ``‖Σ‖_F`` comes from the samples' Gram matrix, ``⟨Σ, S⟩`` from per-sample products:
    exact, and no ``mn × mn`` array is formed.
    """
    t, s = prepare(target, approx, weights, center, chunk_size)
    return t.trace_product(s) / (t.frobenius_norm() * s.frobenius_norm())


def frobenius_scale(target, approx, *, weights=None, center=False, chunk_size=None):
    """The Frobenius-optimal scalar ``c* = ⟨Σ, S⟩ / ‖S‖_F²`` for the approximation ``c·S``."""
    t, s = prepare(target, approx, weights, center, chunk_size)
    return t.trace_product(s) / s.frobenius_norm() ** 2


def relative_frobenius_error(
    target, approx, *, rescale: bool = False, weights=None, center=False, chunk_size=None
):
    """``‖Σ − c·S‖_F / ‖Σ‖_F`` with ``c = 1`` or, with ``rescale=True``, ``c = c*``.

    Computed as ``sqrt(‖Σ‖² − 2c⟨Σ,S⟩ + c²‖S‖²)/‖Σ‖`` (matrix-free); like every such
    formula it resolves errors down to about ``sqrt(eps)`` (1e-8 in float64), not below.
    With ``rescale=True`` it equals ``sqrt(1 − cos²)``.
    """
    t, s = prepare(target, approx, weights, center, chunk_size)
    norm_t = t.frobenius_norm()
    norm_s = s.frobenius_norm()
    inner = t.trace_product(s)
    c = inner / norm_s**2 if rescale else 1.0
    sq = norm_t**2 - 2 * c * inner + c**2 * norm_s**2
    return jnp.sqrt(jnp.maximum(sq, 0.0)) / norm_t


register_metric(
    MetricSpec(
        "cosine",
        "cosine similarity",
        reference="cosine_similarity",
        function="cosine_similarity",
        symbol=r"$\cos(\Sigma, S)$",
        lower_is_better=False,
    )
)
register_metric(
    MetricSpec(
        "relative_frobenius",
        "relative Frobenius error",
        reference="relative_frobenius_error",
        function="relative_frobenius_error",
        symbol=r"$\|\Sigma - S\|_F / \|\Sigma\|_F$",
    )
)
register_metric(
    MetricSpec(
        "relative_frobenius_rescaled",
        "relative Frobenius error (optimal scale)",
        reference="relative_frobenius_error",
        function="relative_frobenius_error",
        symbol=r"$\|\Sigma - c^*S\|_F / \|\Sigma\|_F$",
        function_kwargs=(("rescale", True),),
        reference_kwargs=(("rescale", True),),
    )
)
register_metric(
    MetricSpec(
        "frobenius_scale",
        "Frobenius-optimal scale $c^*$",
        reference="frobenius_scale",
        function="frobenius_scale",
        lower_is_better=None,
    )
)
