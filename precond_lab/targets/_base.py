"""The ``Target`` interface, the damped wrapper and their small shared helpers."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from .._validation import FitNeedsDampingError, check_finite, check_float_dtype
from ..errors import DegenerateInputError, NotPositiveDefiniteError
from ..structures import OperatorMixin, Structure

__all__ = ["Target", "DampedTarget", "Spectrum", "bucket", "check_weights", "checked_eigenvalues"]


@dataclasses.dataclass(frozen=True)
class Spectrum:
    """Non-zero eigenpairs of a target, in descending order.

    Attributes:
        values: ``(r,)`` eigenvalues (``r`` = numerical rank of ``Σ`` without damping).
        vectors: ``(r, m, n)`` orthonormal eigenvectors as matrices, or None.
        dim: ``mn``, so that ``dim - r`` eigenvalues equal ``floor``.
        floor: the eigenvalue on the orthogonal complement of ``vectors`` (0, or the
            damping ``λ`` of a ``Target.damped`` target).
    """

    values: jax.Array
    vectors: jax.Array | None
    dim: int
    floor: float = 0.0

    @property
    def rank(self) -> int:
        return int(self.values.shape[0])


class Target(OperatorMixin):
    """The matrix ``Σ`` (``mn × mn``) that the estimators approximate.

    Like a structure, a target is a linear operator of ``shape`` ``(mn, mn)`` (also
    ``operator_shape``), with ``Σ @ v`` and ``to_scipy()`` / ``to_lineax()`` (see
    ``OperatorMixin``); the factor sizes ``(m, n)`` of the
    per-example matrices are ``matrix_shape``.
    """

    matrix_shape: tuple[int, int]
    dtype: np.dtype

    @property
    def shape(self) -> tuple[int, int]:
        """``(mn, mn)``, as for any linear operator (``(m, n)`` is ``matrix_shape``)."""
        return self.operator_shape

    @property
    def dim(self) -> int:
        m, n = self.matrix_shape
        return m * n

    def matvec(self, x) -> jax.Array:
        """``Σ @ x`` for ``x`` of shape ``(mn,)``, ``(mn, k)`` or ``(…, m, n)``.

        With ``shape`` ``(mn, mn)`` this is SciPy's operator protocol:
        ``scipy.sparse.linalg.aslinearoperator(target)`` is the ``mn × mn`` operator ``Σ``.
        """
        return self @ x

    def rmatvec(self, x) -> jax.Array:
        """``Σᵀ @ x = Σ @ x`` (``Σ`` is symmetric)."""
        return self @ x

    def contract_left(self, b: jax.Array) -> jax.Array:
        """``E[G B Gᵀ]`` for an n×n ``B`` (an m×m result)."""
        raise NotImplementedError

    def contract_right(self, a: jax.Array) -> jax.Array:
        """``E[Gᵀ A G]`` for an m×m ``A`` (an n×n result)."""
        raise NotImplementedError

    def second_moments(self) -> tuple[jax.Array, jax.Array]:
        """Shampoo's statistics ``(L, R) = (E[G Gᵀ], E[Gᵀ G])``."""
        return self.left_moment(), self.right_moment()

    def left_moment(self) -> jax.Array:
        """``L = E[G Gᵀ] = contract_left(I)`` (m×m)."""
        return self.contract_left(jnp.eye(self.matrix_shape[1], dtype=self.dtype))

    def right_moment(self) -> jax.Array:
        """``R = E[Gᵀ G] = contract_right(I)`` (n×n)."""
        return self.contract_right(jnp.eye(self.matrix_shape[0], dtype=self.dtype))

    def rotated_diagonal(self, qa: jax.Array | None, qb: jax.Array | None) -> jax.Array:
        """``diag(QᵀΣQ)`` as ``(m, n)`` for ``Q = qa ⊗ qb`` (identity where None)."""
        raise NotImplementedError

    def trace(self) -> jax.Array:
        raise NotImplementedError

    def trace_product(self, s: Structure) -> jax.Array:
        """``tr(S Σ) = ⟨Σ, S⟩_F`` for a symmetric structure ``S``."""
        raise NotImplementedError

    def frobenius_norm(self) -> jax.Array:
        raise NotImplementedError

    def rotated_diagonals(self, bases) -> list[jax.Array]:
        """``rotated_diagonal`` for several ``(qa, qb)`` pairs (one pass where the
        target streams its samples)."""
        return [self.rotated_diagonal(qa, qb) for qa, qb in bases]

    def eigh(self, vectors: bool = False) -> Spectrum:
        """Non-zero eigenvalues (and optionally eigenvectors), descending."""
        raise NotImplementedError

    def _sample_space(self) -> bool:
        """True when the samples' weighted Gram matrix (``gram()``) is the smaller side."""
        return False

    def logdet(self, damping: float = 0.0) -> float:
        """``log det(Σ + λI)`` (``λ ≥ 0``): one Cholesky of the weighted Gram when ``λ > 0``,
        the weights are ≥ 0 and the samples are fewer than ``mn``; else from the spectrum.

        Raises:
            NotPositiveDefiniteError: if ``Σ`` is indefinite (negative weights).
            FitNeedsDampingError: if ``Σ + λI`` is singular.
        """
        cache = getattr(self, "_cache", None)  # a target is immutable: one value per λ
        key = ("logdet", float(damping))
        if cache is not None and key in cache:
            return cache[key]
        value = None
        if damping > 0 and self._sample_space():
            value = self.gram().logdet(float(damping), self.dim)
        if value is None:
            mu, spec = checked_eigenvalues(self.eigh(), damping)
            value = float(np.sum(np.log(np.asarray(mu, np.float64) + damping)))
            if spec.dim > spec.rank:
                value += (spec.dim - spec.rank) * float(np.log(spec.floor + damping))
        if cache is not None:
            cache[key] = value
        return value

    def to_dense(self) -> jax.Array:
        """The explicit ``(mn, mn)`` matrix: for references and small sizes only."""
        raise NotImplementedError

    def damped(self, damping: float) -> Target:
        """The target ``Σ + λI`` (every estimator and metric accepts it)."""
        if not np.isfinite(damping) or damping < 0:
            raise ValueError(f"damping must be a finite number ≥ 0; got {damping}")
        return DampedTarget(self, float(damping)) if damping else self


class DampedTarget(Target):
    """``Σ + λI`` for a base target ``Σ``, through the base's primitives.

    ``E[G B Gᵀ]`` gains ``λ tr(B) I``, ``E[Gᵀ A G]`` gains ``λ tr(A) I``, every diagonal
    entry in any orthogonal basis gains ``λ``, and the eigenvalues shift by ``λ`` (the
    complement of the base's eigenvectors has eigenvalue ``λ``).
    """

    def __init__(self, base: Target, damping: float):
        if isinstance(base, DampedTarget):
            base, damping = base.base, base.damping + damping
        self.base = base
        self.damping = damping
        self.matrix_shape = base.matrix_shape
        self.dtype = base.dtype

    def contract_left(self, b):
        m = self.matrix_shape[0]
        return self.base.contract_left(b) + self.damping * jnp.trace(b) * jnp.eye(
            m, dtype=self.dtype
        )

    def contract_right(self, a):
        n = self.matrix_shape[1]
        return self.base.contract_right(a) + self.damping * jnp.trace(a) * jnp.eye(
            n, dtype=self.dtype
        )

    def second_moments(self):
        m, n = self.matrix_shape
        left, right = self.base.second_moments()
        return (
            left + self.damping * n * jnp.eye(m, dtype=self.dtype),
            right + self.damping * m * jnp.eye(n, dtype=self.dtype),
        )

    def left_moment(self):
        m, n = self.matrix_shape
        return self.base.left_moment() + self.damping * n * jnp.eye(m, dtype=self.dtype)

    def right_moment(self):
        m, n = self.matrix_shape
        return self.base.right_moment() + self.damping * m * jnp.eye(n, dtype=self.dtype)

    def rotated_diagonal(self, qa, qb):
        return self.base.rotated_diagonal(qa, qb) + self.damping

    def trace(self):
        return self.base.trace() + self.damping * self.dim

    def trace_product(self, s: Structure):
        return self.base.trace_product(s) + self.damping * s.trace()

    def frobenius_norm(self):
        lam = self.damping
        sq = self.base.frobenius_norm() ** 2 + 2 * lam * self.base.trace() + lam**2 * self.dim
        return jnp.sqrt(sq)

    def rotated_diagonals(self, bases):
        return [d + self.damping for d in self.base.rotated_diagonals(bases)]

    def logdet(self, damping: float = 0.0) -> float:
        return self.base.logdet(damping + self.damping)

    def eigh(self, vectors: bool = False) -> Spectrum:
        spec = self.base.eigh(vectors)
        return Spectrum(
            spec.values + self.damping, spec.vectors, spec.dim, spec.floor + self.damping
        )

    def _apply_matrices(self, x):  # (Σ + λI) X
        return self.base._apply_matrices(x) + self.damping * x

    def to_dense(self):
        return self.base.to_dense() + self.damping * jnp.eye(self.dim, dtype=self.dtype)


def _truncate_rank(values, vectors, dim, dtype, size):
    """Drop eigenvalues within round-off of zero and sort descending."""
    values = np.asarray(values)
    order = np.argsort(values)[::-1]
    values = values[order]
    scale = np.max(np.abs(values)) if values.size else 0.0
    tol = 10 * max(size, 1) * np.finfo(np.dtype(dtype)).eps * scale
    keep = np.abs(values) > tol
    idx = order[keep]
    vals = jnp.asarray(values[keep], dtype=dtype)
    vecs = None if vectors is None else vectors[idx]
    return vals, vecs


def bucket(count: int) -> int:
    """``count`` rounded up to ``k·2^e`` with ``8 ≤ k ≤ 16`` (at most 1/8 more; exact up to
    16): sample counts in one bucket share array shapes, so a new ``N`` does not
    recompile the kernels."""
    shift = max(0, (count - 1).bit_length() - 4)
    return -(-count >> shift) << shift


def checked_eigenvalues(spec: Spectrum, damping: float, need_full_rank: bool = True):
    """``(μ, spec)``: the spectrum's values checked PSD (round-off negatives clipped to 0);
    full rank required when ``need_full_rank`` and ``floor + damping == 0``.

    Raises:
        NotPositiveDefiniteError: for an eigenvalue clearly below zero.
        FitNeedsDampingError: for a singular ``Σ + λI`` when full rank is needed.
    """
    mu = spec.values
    values = np.asarray(mu)  # on the host: no compilation per rank
    if values.size and float(values.min()) < 0:
        tol = 1e3 * float(np.finfo(values.dtype).eps) * float(np.max(np.abs(values)))
        if float(values.min()) < -tol:
            raise NotPositiveDefiniteError(
                f"the target is not positive semidefinite (eigenvalue {float(values.min()):.3e});"
                " Gaussian divergences are undefined. Are the weights right?"
            )
        mu = jnp.asarray(np.maximum(values, 0.0))
    if need_full_rank and spec.floor + damping == 0 and spec.rank < spec.dim:
        raise FitNeedsDampingError(
            f"the target Σ is singular (rank {spec.rank} < mn = {spec.dim}; e.g. fewer samples "
            "than dimensions), so N(0, Σ) is degenerate and this divergence is infinite. "
            "Pass damping > 0."
        )
    return mu, spec


def check_weights(weights, count, dtype):
    if weights is None:
        return jax.device_put(np.full((count,), 1.0 / count, dtype=dtype))  # no compile
    w = np.asarray(weights)
    if w.shape != (count,):
        raise ValueError(f"weights must have shape (N,) = ({count},); got {w.shape}")
    check_float_dtype(w.dtype if w.dtype.kind == "f" else np.float64, "weights")
    if w.dtype.kind not in "fiu":
        raise TypeError(f"weights must be real numbers; got dtype {w.dtype}")
    check_finite(w.astype(np.float64), "weights")
    if count and not np.any(w):
        raise DegenerateInputError("weights are all zero: the target would be zero")
    return jax.device_put(w.astype(dtype))
