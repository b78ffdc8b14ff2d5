"""Targets: the matrix ``Σ`` being approximated, and the few primitives everything uses.

A target is one of

* a bag of per-example matrices ``G`` of shape ``(N, m, n)`` with weights ``w``
  (default ``1/N``): ``Σ = Σ_k w_k vec(G_k) vec(G_k)ᵀ`` with row-major vec
  (``SampleTarget``, matrix-free, streamed over the sample axis in chunks and
  optionally sharded over several devices);
* the same bag given by factors, ``G_k = Σ_t u_kt v_ktᵀ`` with ``(N, T, m)`` left and
  ``(N, T, n)`` right factors (``FactoredTarget``: dense layers, ``T = 1``, and
  layers that share weights over ``T`` positions), never forming ``G`` where a cost
  model says the factors are cheaper;
* a small explicit ``(mn, mn)`` matrix with its ``(m, n)`` (``DenseTarget``),
  e.g. an exact Hessian block; every matrix-free result has this dense twin.

All expose the same primitives:

* ``contract_left(B) = E[G B Gᵀ] = R(Σ) vec(B)`` (m×m) and
  ``contract_right(A) = E[Gᵀ A G] = R(Σ)ᵀ vec(A)`` (n×n), the rearranged operator of
  Van Loan–Pitsianis;
* ``second_moments() = (E[G Gᵀ], E[Gᵀ G])`` (Shampoo's ``L`` and ``R``);
* ``rotated_diagonal(Qa, Qb) = diag(QᵀΣQ)`` for ``Q = Qa ⊗ Qb`` (and
  ``rotated_diagonals`` for several bases in one pass);
* ``trace_product(S) = tr(S Σ) = E[⟨G, S G⟩]`` for any structure ``S``;
* ``trace``, ``frobenius_norm``, ``eigh`` (the non-zero eigenpairs) and ``logdet``
  (``log det(Σ + λI)``), all from one weighted Gram matrix of the samples, computed
  once per target and cached (or, with more samples than ``mn``, in parameter space).
"""

from __future__ import annotations

from ._base import DampedTarget, Spectrum, Target, check_weights, checked_eigenvalues
from ._dense import DenseTarget
from ._factored import FactoredTarget
from ._sample import _CHUNK_BYTES, SampleTarget  # noqa: F401  (_CHUNK_BYTES: the benchmark)
from ._synthetic import kronecker_samples, mixture_samples

__all__ = [
    "Target",
    "SampleTarget",
    "FactoredTarget",
    "DenseTarget",
    "DampedTarget",
    "Spectrum",
    "as_target",
    "check_weights",
    "checked_eigenvalues",
    "kronecker_samples",
    "mixture_samples",
]


def as_target(
    samples,
    weights=None,
    *,
    center: bool = False,
    chunk_size: int | None = None,
    shape: tuple[int, int] | None = None,
) -> Target:
    """Turn user input into a ``Target``.

    Args:
        samples: a ``Target`` (returned as is), an ``(N, m, n)`` array or
            DataArray of per-example matrices, or an ``(mn, mn)`` dense matrix when
            ``shape=(m, n)`` is given.
        weights: per-sample weights, default ``1/N``.
        center: subtract the weighted mean (samples only).
        chunk_size: samples per streamed chunk.
        shape: ``(m, n)`` for a dense ``(mn, mn)`` target.
    """
    if isinstance(samples, Target):
        if weights is not None or center or shape is not None:
            raise ValueError("weights/center/shape cannot be changed on an existing Target")
        return samples
    if shape is not None:
        if weights is not None or center:
            raise ValueError("weights and center apply to samples, not to a dense target")
        return DenseTarget(samples, shape)
    return SampleTarget(samples, weights, center=center, chunk_size=chunk_size)
