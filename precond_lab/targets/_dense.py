"""A target given as its explicit ``(mn, mn)`` matrix (references, small sizes)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .._validation import check_finite, check_float_dtype
from ..structures import Structure
from ._base import Spectrum, Target, _truncate_rank

__all__ = ["DenseTarget"]


class DenseTarget(Target):
    """An explicit symmetric ``(mn, mn)`` matrix with its factor shape ``(m, n)``.

    Row ``i·n + j`` of the matrix belongs to entry ``(i, j)`` of an ``m×n`` matrix
    (row-major vec), exactly as for ``SampleTarget``.
    """

    def __init__(self, matrix, shape: tuple[int, int], *, check_symmetric: bool = True):
        check_float_dtype(getattr(matrix, "dtype", np.float64), "dense target")
        mat = jnp.asarray(matrix)
        m, n = (int(s) for s in shape)
        if m < 1 or n < 1:
            raise ValueError(f"shape (m, n) must be positive integers; got {tuple(shape)}")
        if mat.ndim != 2 or mat.shape != (m * n, m * n):
            raise ValueError(
                f"dense target must have shape (m·n, m·n) = {(m * n, m * n)} for shape={shape}; "
                f"got {mat.shape}"
            )
        check_finite(np.asarray(mat), "dense target", axis0_name="row")
        if check_symmetric:
            asym = float(jnp.max(jnp.abs(mat - mat.T)))
            scale = float(jnp.max(jnp.abs(mat))) or 1.0
            if asym > 1e3 * float(jnp.finfo(mat.dtype).eps) * scale:
                raise ValueError(
                    f"dense target is not symmetric (max |Σ - Σᵀ| = {asym:.3e}, "
                    f"max |Σ| = {scale:.3e})"
                )
        self.matrix = 0.5 * (mat + mat.T)
        self.matrix_shape = (m, n)
        self.dtype = np.dtype(self.matrix.dtype)

    def _blocks(self):
        m, n = self.matrix_shape
        return self.matrix.reshape(m, n, m, n)

    def contract_left(self, b):
        return jnp.einsum("ijkl,jl->ik", self._blocks(), jnp.asarray(b, self.dtype))

    def contract_right(self, a):
        return jnp.einsum("ijkl,ik->jl", self._blocks(), jnp.asarray(a, self.dtype))

    def rotated_diagonal(self, qa, qb):
        m, n = self.matrix_shape
        qa = jnp.eye(m, dtype=self.dtype) if qa is None else jnp.asarray(qa, self.dtype)
        qb = jnp.eye(n, dtype=self.dtype) if qb is None else jnp.asarray(qb, self.dtype)
        rot = jnp.einsum("ijkl,ia,jb,kc,ld->abcd", self._blocks(), qa, qb, qa, qb)
        return jnp.einsum("abab->ab", rot)

    def trace(self):
        return jnp.trace(self.matrix)

    def trace_product(self, s: Structure):
        m, n = self.matrix_shape
        cols = self.matrix.reshape(m * n, m, n)  # row k of Σ = Σ e_k (symmetric)
        return jnp.trace(s.matvec(cols).reshape(m * n, m * n))

    def frobenius_norm(self):
        return jnp.linalg.norm(self.matrix)

    def eigh(self, vectors: bool = False) -> Spectrum:
        m, n = self.matrix_shape
        d = m * n
        vals, vecs = jnp.linalg.eigh(self.matrix)
        vecs = vecs.T.reshape(d, m, n) if vectors else None
        vals, vecs = _truncate_rank(vals, vecs, d, self.dtype, d)
        return Spectrum(vals, vecs, d)

    def _apply_matrices(self, x):  # Σ vec(X) for X (…, m, n)
        m, n = self.matrix_shape
        flat = jnp.reshape(x, (-1, m * n))
        return (flat @ self.matrix.T).reshape(x.shape)

    def to_dense(self):
        return self.matrix
