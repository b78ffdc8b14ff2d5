"""Argument handling shared by the metrics."""

from __future__ import annotations

from ..structures import Diagonal, Structure
from ..targets import Target, as_target

__all__ = ["prepare", "rotated_target_diagonal"]


def prepare(
    target, approx, weights=None, center=False, chunk_size=None
) -> tuple[Target, Structure]:
    """Validate ``(target, approx)`` and turn the target into a ``Target``."""
    t = as_target(target, weights, center=center, chunk_size=chunk_size)
    if not isinstance(approx, Structure):
        raise TypeError(
            "approx must be a structure (Kronecker, EigenKronecker, Diagonal) from "
            f"precond_lab.estimators; got {type(approx).__name__}"
        )
    if tuple(approx.matrix_shape) != tuple(t.matrix_shape):
        raise ValueError(
            f"approximation has matrix_shape {approx.matrix_shape} but the target has "
            f"{t.matrix_shape}"
        )
    return t, approx


def rotated_target_diagonal(t: Target, approx: Structure):
    """``(D, diag(QᵀΣQ))`` for the eigen form ``S = Q diag(D) Qᵀ`` of ``approx``.

    With these two ``(m, n)`` arrays every ``tr(f(S) Σ) = Σ_ij f(D_ij) diag(QᵀΣQ)_ij``
    is exact and costs one pass over the samples.
    """
    e = approx.eigen()
    if isinstance(e, Diagonal):
        return e.values, t.rotated_diagonal(None, None)
    return e.values, t.rotated_diagonal(e.left_basis, e.right_basis)
