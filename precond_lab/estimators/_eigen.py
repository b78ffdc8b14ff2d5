"""Diagonal estimators: plain diagonal and the eigen-corrected diagonal (EKFAC / SOAP)."""

from __future__ import annotations

import jax.numpy as jnp

from ..linalg import eigh_sym
from ..structures import Diagonal, EigenKronecker, Kronecker, Structure
from ._common import target_of
from ._registry import EstimatorSpec, FitContext, build, on_target, parse_estimator, register
from ._shampoo import shampoo_squared

__all__ = ["diagonal", "eigencorrected"]


def diagonal(
    samples, *, weights=None, center: bool = False, chunk_size: int | None = None
) -> Diagonal:
    """``diag(E[g²])`` as an ``(m, n)`` array: the Frobenius- and KL-optimal diagonal."""
    target = target_of(samples, weights, center, chunk_size)
    return Diagonal(target.rotated_diagonal(None, None))


def _basis_of(basis, target):
    if basis is None or (isinstance(basis, str) and basis == "shampoo"):
        basis = shampoo_squared(target)
    if isinstance(basis, Kronecker):
        return eigh_sym(basis.left)[1], eigh_sym(basis.right)[1]
    if isinstance(basis, EigenKronecker):
        return basis.left_basis, basis.right_basis
    if isinstance(basis, tuple) and len(basis) == 2:
        qa, qb = (jnp.asarray(q, target.dtype) for q in basis)
        m, n = target.matrix_shape
        if qa.shape != (m, m) or qb.shape != (n, n):
            raise ValueError(
                f"basis matrices must be ({m}, {m}) and ({n}, {n}); got {qa.shape}, {qb.shape}"
            )
        for name, q in (("left", qa), ("right", qb)):
            err = float(jnp.max(jnp.abs(q.T @ q - jnp.eye(q.shape[0], dtype=q.dtype))))
            if err > 1e3 * float(jnp.finfo(q.dtype).eps) * q.shape[0]:
                raise ValueError(f"{name} basis is not orthogonal (max |QᵀQ − I| = {err:.2e})")
        return qa, qb
    if isinstance(basis, Structure):
        raise TypeError(f"a {type(basis).__name__} has no Kronecker eigenbasis to correct")
    raise TypeError(
        "basis must be None/'shampoo', a Kronecker or EigenKronecker structure, or a tuple "
        f"(Qa, Qb) of orthogonal matrices; got {type(basis).__name__}"
    )


def eigencorrected(
    samples,
    *,
    basis=None,
    weights=None,
    center: bool = False,
    chunk_size: int | None = None,
) -> EigenKronecker:
    """The optimal diagonal in a Kronecker eigenbasis ``Q = Qa ⊗ Qb``.

    ``D = diag(QᵀΣQ) = E[(Qaᵀ G Qb)²]`` is both the Frobenius- and the KL-optimal
    diagonal in that basis (identity D7): EKFAC (basis of K-FAC), SOAP (basis of
    Shampoo) and KL-SOAP (basis of the KL fit).

    Args:
        samples: per-example matrices or a Target.
        basis: where the eigenbasis comes from: ``None``/``"shampoo"`` (the
            eigenvectors of Shampoo's ``L`` and ``R``), any ``Kronecker`` (e.g.
            ``kfac(...)`` or ``kl_optimal(...)``), an ``EigenKronecker``, or a tuple
            ``(Qa, Qb)`` of orthogonal matrices.
    """
    target = target_of(samples, weights, center, chunk_size)
    qa, qb = _basis_of(basis, target)
    return EigenKronecker(qa, qb, target.rotated_diagonal(qa, qb))


def _eigencorrected_builder(ctx: FitContext, basis: str = "shampoo") -> EigenKronecker:
    if basis == "shampoo":
        return eigencorrected(ctx.target)
    base = build(parse_estimator(basis), ctx)
    if not isinstance(base, Kronecker):
        raise ValueError(f"eigencorrected needs a Kronecker basis; {basis!r} gave {type(base)}")
    return eigencorrected(ctx.target, basis=base)


register(
    EstimatorSpec(
        "eigencorrected",
        _eigencorrected_builder,
        "Eigen-corrected (SOAP)",
        reference="eigencorrected",
        summary="EKFAC/SOAP: Σ's diagonal in a Kronecker eigenbasis (default Shampoo's).",
        color="#56B4E9",
        marker="P",
    )
)
register(
    EstimatorSpec(
        "diagonal",
        on_target(diagonal),
        "Diagonal",
        reference="diagonal",
        summary="diag(Σ): Adagrad/Adam's diagonal second moment.",
        color="#7F7F7F",
        marker="x",
    )
)
