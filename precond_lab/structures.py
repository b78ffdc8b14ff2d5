"""Structured approximations of an ``mn × mn`` matrix: Kronecker, eigen-corrected, diagonal.

Conventions (the project's, see the README's "Conventions"): vec is row-major, so a matrix
``X`` of shape ``(m, n)`` is the vector ``X.reshape(-1)`` and

    kron(L, R) @ vec(X) = vec(L X Rᵀ),    L: m×m (rows / output side), R: n×n.

Every structure is a linear operator of ``shape`` ``(mn, mn)``: ``S @ v``
for vectors ``(mn,)`` / ``(mn, k)`` and batches of ``(…, m, n)`` matrices,
``to_scipy`` (a ``scipy.sparse.linalg.LinearOperator``) and
``to_lineax`` (when lineax is installed); the factor sizes ``(m, n)`` are
``matrix_shape``. It offers ``matvec`` on batches of
``(…, m, n)`` matrices, ``to_dense`` (for references and small sizes only),
``trace``, ``logdet``, ``frobenius_norm`` and spectral functions such as damped
powers ``(S + λI)^p``. Spectral functions of a Kronecker product with damping are
no longer Kronecker products; they are returned in eigen form
(``EigenKronecker``), which is exact and as cheap to apply.

Structures are JAX pytrees (their fit information is dropped when flattened), so
they can be passed into jitted functions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ._validation import check_float_dtype
from .errors import NonFiniteError, NotPositiveDefiniteError, NotSymmetricError, Status
from .linalg import eigh_sym

__all__ = ["FitInfo", "OperatorMixin", "Structure", "Kronecker", "EigenKronecker", "Diagonal"]


@dataclasses.dataclass(frozen=True)
class FitInfo:
    """Convergence history of an iterative estimator.

    Attributes:
        iterations: number of iterations performed.
        converged: whether the stopping tolerance was met.
        residuals: one residual per iteration (the estimator's docstring says which).
        objective: the objective value per iteration, where the estimator has one.
        method: short name of the algorithm.
    """

    iterations: int
    converged: bool
    residuals: np.ndarray
    objective: np.ndarray | None = None
    method: str = ""

    @property
    def status(self) -> Status:
        """``Status.OK`` when converged, else ``Status.NOT_CONVERGED``."""
        return Status.OK if self.converged else Status.NOT_CONVERGED


def check_spectrum(w: jax.Array, p: float, damping: float, what: str) -> jax.Array:
    """Return ``w + damping`` after checking that ``(w + damping)^p`` is defined."""
    if not np.isfinite(damping) or damping < 0:
        raise ValueError(f"damping must be a finite number ≥ 0; got {damping}")
    if not np.isfinite(p):
        raise ValueError(f"power must be a finite real number; got {p}")
    scale = float(jnp.max(jnp.abs(w))) if w.size else 0.0
    tol = 100 * max(w.shape[-1], 1) * float(jnp.finfo(w.dtype).eps) * scale
    wmin = float(jnp.min(w))
    if wmin < -tol:
        raise NotPositiveDefiniteError(
            f"{what} is not positive semidefinite (smallest eigenvalue {wmin:.3e}, largest "
            f"{float(jnp.max(w)):.3e}); power {p} is undefined."
        )
    shifted = jnp.maximum(w, 0.0) + damping
    if p <= 0 and float(jnp.min(shifted)) <= 0:
        from ._validation import FitNeedsDampingError

        raise FitNeedsDampingError(
            f"{what} is singular (smallest eigenvalue {wmin:.3e}); power {p} or a log-determinant "
            f"needs damping > 0."
        )
    return shifted


def _validate(parts: dict, *, symmetric=(), orthogonal=()) -> None:
    """Check a structure's arrays on construction (skipped for traced values under ``jit``).

    Every part must be a real float array (not half precision) without NaN/Inf; the
    ``symmetric`` parts must be symmetric and the ``orthogonal`` ones orthogonal, within a
    tolerance relative to their dtype's precision.

    Raises:
        TypeError: complex, integer or other non-float parts.
        UnsupportedDtypeError: float16/bfloat16 parts.
        NonFiniteError: a part holds NaN or Inf (the entry named).
        NotSymmetricError: a factor that must be symmetric is not.
        ValueError: a basis that must be orthogonal is not.
    """
    if any(isinstance(a, jax.core.Tracer) for a in parts.values()):
        return
    for name, a in parts.items():
        check_float_dtype(a.dtype, name)
        x = np.asarray(a)
        bad = ~np.isfinite(x)
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0]) if x.ndim else ()
            kind = "NaN" if np.isnan(x[idx] if idx else x) else "Inf"
            raise NonFiniteError(
                f"{name} contains non-finite values ({kind}) at entry {idx}; "
                f"{int(bad.sum())} non-finite entries in total."
            )
    eps = {n: float(np.finfo(np.dtype(parts[n].dtype)).eps) for n in (*symmetric, *orthogonal)}
    for name in symmetric:
        x = np.asarray(parts[name], np.float64)
        scale, asym = float(np.max(np.abs(x))), float(np.max(np.abs(x - x.T)))
        if asym > 1e3 * eps[name] * scale:
            raise NotSymmetricError(
                f"{name} is not symmetric: max |A - Aᵀ| = {asym:.3e} vs max |A| = {scale:.3e}; "
                "a Kronecker factor must be symmetric (symmetrize it: (A + Aᵀ)/2)."
            )
    for name in orthogonal:
        q = np.asarray(parts[name], np.float64)
        loss = float(np.max(np.abs(q.T @ q - np.eye(q.shape[1]))))
        if loss > 1e2 * np.sqrt(eps[name]):
            raise ValueError(
                f"{name} is not orthogonal: max |QᵀQ − I| = {loss:.3e}; an eigenbasis must have "
                "orthonormal columns."
            )


class OperatorMixin:
    """``@``, SciPy and lineax adapters for an ``mn × mn`` operator (structures, targets).

    A subclass provides ``matrix_shape`` ``(m, n)``, ``dtype`` and
    ``_apply_matrices(X)`` for ``X`` of shape ``(…, m, n)``.
    """

    matrix_shape: tuple[int, int]

    @property
    def operator_shape(self) -> tuple[int, int]:
        """``(mn, mn)``: the operator's shape (the factor sizes are ``matrix_shape``)."""
        m, n = self.matrix_shape
        return m * n, m * n

    def _apply_matrices(self, x):
        raise NotImplementedError

    def __matmul__(self, x):
        """``S @ v`` for ``v`` of shape ``(mn,)``, ``(mn, k)`` or ``(…, m, n)``.

        Raises:
            ValueError: when ``v`` fits none of these shapes.
        """
        m, n = self.matrix_shape
        xs = tuple(jnp.shape(x))
        if xs == (m * n,):
            return self._apply_matrices(jnp.reshape(x, (m, n))).reshape(m * n)
        if len(xs) == 2 and xs[0] == m * n and xs != (m, n):
            cols = jnp.reshape(jnp.asarray(x).T, (xs[1], m, n))
            return self._apply_matrices(cols).reshape(xs[1], m * n).T
        if len(xs) >= 2 and xs[-2:] == (m, n):
            return self._apply_matrices(jnp.asarray(x))
        raise ValueError(
            f"{type(self).__name__} of shape {(m * n, m * n)} (matrix_shape {(m, n)}) cannot "
            f"multiply an array of shape {xs}: use (mn,) = ({m * n},), (mn, k) or (…, {m}, {n})"
        )

    def to_scipy(self):
        """A ``scipy.sparse.linalg.LinearOperator`` of shape ``(mn, mn)`` (symmetric)."""
        from scipy.sparse.linalg import LinearOperator

        def mv(v):
            return np.asarray(self @ jnp.asarray(np.ravel(v), self.dtype))

        def mm(v):
            return np.asarray(self @ jnp.asarray(v, self.dtype))

        return LinearOperator(
            self.operator_shape, matvec=mv, rmatvec=mv, matmat=mm, dtype=self.dtype
        )

    def to_lineax(self, *, positive_semidefinite: bool = False):
        """A symmetric ``lineax.FunctionLinearOperator`` on vectors ``(mn,)`` (needs lineax).

        Args:
            positive_semidefinite: also tag it PSD (for ``lineax.CG``); true for targets
                with non-negative weights and fits of them, not checked here.

        Raises:
            ImportError: when lineax is not installed.
        """
        import lineax as lx

        m, n = self.matrix_shape
        struct = jax.ShapeDtypeStruct((m * n,), self.dtype)
        tags = (
            lx.symmetric_tag,
            *((lx.positive_semidefinite_tag,) if positive_semidefinite else ()),
        )
        return lx.FunctionLinearOperator(lambda v: self @ v, struct, tags)


class Structure(OperatorMixin):
    """Common interface of the structured approximations."""

    info: FitInfo | None

    @property
    def matrix_shape(self) -> tuple[int, int]:
        """``(m, n)``: the approximated matrix is ``mn × mn`` (that is ``shape``)."""
        raise NotImplementedError

    @property
    def shape(self) -> tuple[int, int]:
        """``(mn, mn)``, as for any linear operator (``(m, n)`` is ``matrix_shape``)."""
        return self.operator_shape

    def _apply_matrices(self, x):
        return self.matvec(x)

    @property
    def dtype(self):
        raise NotImplementedError

    def matvec(self, x: jax.Array) -> jax.Array:
        """Apply the ``mn × mn`` matrix to a batch of ``(…, m, n)`` matrices."""
        raise NotImplementedError

    def to_dense(self) -> jax.Array:
        """The explicit ``(mn, mn)`` matrix (references and small sizes only)."""
        raise NotImplementedError

    def eigen(self) -> EigenKronecker | Diagonal:
        """The same matrix in eigen form (a Kronecker eigenbasis and its eigenvalues)."""
        raise NotImplementedError

    def eigenvalues(self) -> jax.Array:
        """All ``mn`` eigenvalues as an ``(m, n)`` array (row-major, unsorted)."""
        return self.eigen().values

    def trace(self) -> jax.Array:
        return jnp.sum(self.eigenvalues())

    def frobenius_norm(self) -> jax.Array:
        return jnp.sqrt(jnp.sum(self.eigenvalues() ** 2))

    def logdet(self, damping: float = 0.0) -> jax.Array:
        """``log det(S + damping·I)``; raises if the matrix is singular or indefinite."""
        w = check_spectrum(self.eigenvalues(), 0.0, damping, type(self).__name__)
        return jnp.sum(jnp.log(w))

    def power(self, p: float, damping: float = 0.0) -> Structure:
        """``(S + damping·I)^p`` (``p = -1/2`` root, ``p = -1`` root-free inverse, …)."""
        return self.eigen().power(p, damping)

    def function(self, fn: Callable[[jax.Array], jax.Array]) -> Structure:
        """``Q fn(Λ) Qᵀ`` for the eigen form ``Q Λ Qᵀ`` (e.g. ``jnp.log``)."""
        return self.eigen().function(fn)

    @property
    def num_params(self) -> int:
        """Number of stored numbers (memory of the structure)."""
        return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(self)))


@jax.tree_util.register_pytree_node_class
class Kronecker(Structure):
    """``scale · kron(left, right)``: ``left`` is m×m (rows), ``right`` is n×n (columns).

    Attributes:
        left: the m×m factor, acting on rows: ``S vec(X) = scale · vec(left X rightᵀ)``.
        right: the n×n factor.
        scale: a scalar, kept apart so that estimators can report their factors in their
            natural normalisation (e.g. Shampoo² has ``left = L``, ``right = R``,
            ``scale = 1/tr Σ``).
        info: the fit's convergence history, or None.
    """

    def __init__(self, left, right, scale=1.0, info: FitInfo | None = None, *, validate=True):
        left = jnp.asarray(left)
        right = jnp.asarray(right)
        for name, f in (("left", left), ("right", right)):
            if f.ndim != 2 or f.shape[0] != f.shape[1] or f.shape[0] == 0:
                raise ValueError(
                    f"{name} factor must be square and at least 1×1; got shape {f.shape}"
                )
        if validate:
            parts = {"left factor": left, "right factor": right, "scale": jnp.asarray(scale)}
            _validate(parts)  # symmetry is checked on first spectral use (eigen)
        self.left = left
        self.right = right
        self.scale = jnp.asarray(scale, dtype=left.dtype)
        self.info = info

    def tree_flatten(self):
        return (self.left, self.right, self.scale), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        obj = object.__new__(cls)
        obj.left, obj.right, obj.scale = children
        obj.info = None
        return obj

    def __repr__(self) -> str:
        m, n = self.matrix_shape
        return f"Kronecker(m={m}, n={n}, scale={float(self.scale):.4g}, dtype={self.dtype})"

    @property
    def matrix_shape(self) -> tuple[int, int]:
        return self.left.shape[0], self.right.shape[0]

    @property
    def dtype(self):
        return self.left.dtype

    def matvec(self, x: jax.Array) -> jax.Array:
        return self.scale * (self.left @ x @ self.right.T)

    def to_dense(self) -> jax.Array:
        return self.scale * jnp.kron(self.left, self.right)

    def eigen(self) -> EigenKronecker:
        factors = {"left factor": self.left, "right factor": self.right}
        _validate(factors, symmetric=tuple(factors))  # a spectrum needs symmetric factors
        wl, ql = eigh_sym(self.left)
        wr, qr = eigh_sym(self.right)
        values = self.scale * jnp.outer(wl, wr)
        return EigenKronecker(ql, qr, values, info=self.info, validate=False)

    def trace(self) -> jax.Array:
        return self.scale * jnp.trace(self.left) * jnp.trace(self.right)

    def frobenius_norm(self) -> jax.Array:
        return jnp.abs(self.scale) * jnp.linalg.norm(self.left) * jnp.linalg.norm(self.right)

    def rescaled(self, factor) -> Kronecker:
        """The same Kronecker product multiplied by the scalar ``factor``."""
        return Kronecker(self.left, self.right, self.scale * factor, self.info, validate=False)

    def normalized(self) -> Kronecker:
        """Balanced factors ``‖left‖_F = ‖right‖_F = 1`` with all scale (and sign) in ``scale``.

        The factors' signs are fixed so that both traces are non-negative.
        """
        nl, nr = jnp.linalg.norm(self.left), jnp.linalg.norm(self.right)
        sl = jnp.where(jnp.trace(self.left) < 0, -1.0, 1.0)
        sr = jnp.where(jnp.trace(self.right) < 0, -1.0, 1.0)
        return Kronecker(
            sl * self.left / nl, sr * self.right / nr, self.scale * nl * nr * sl * sr, self.info
        )


class _EigenForm(Structure):
    """``Q diag(vec values) Qᵀ`` with a Kronecker-structured orthogonal ``Q``."""

    values: jax.Array

    def _rotate(self, x):  # Qᵀ vec(x)
        raise NotImplementedError

    def _unrotate(self, x):  # Q vec(x)
        raise NotImplementedError

    def _with_values(self, values) -> _EigenForm:
        raise NotImplementedError

    def eigen(self):
        return self

    def eigenvalues(self) -> jax.Array:
        return self.values

    @property
    def matrix_shape(self) -> tuple[int, int]:
        return tuple(self.values.shape)

    @property
    def dtype(self):
        return self.values.dtype

    def matvec(self, x: jax.Array) -> jax.Array:
        return self._unrotate(self._rotate(x) * self.values)

    def power(self, p: float, damping: float = 0.0):
        w = check_spectrum(self.values, p, damping, type(self).__name__)
        return self._with_values(w**p)

    def function(self, fn):
        return self._with_values(fn(self.values))


@jax.tree_util.register_pytree_node_class
class EigenKronecker(_EigenForm):
    """``(Qa ⊗ Qb) diag(vec D) (Qa ⊗ Qb)ᵀ``: a diagonal in a Kronecker eigenbasis.

    This is the EKFAC / SOAP structure; it is also the exact form of every spectral
    function of a Kronecker product (e.g. ``(L⊗R + λI)^{-1/2}``).

    Attributes:
        left_basis: orthogonal m×m ``Qa``.
        right_basis: orthogonal n×n ``Qb``.
        values: the ``(m, n)`` eigenvalues, ``values[i, j]`` belonging to ``qa_i ⊗ qb_j``.
    """

    def __init__(
        self, left_basis, right_basis, values, info: FitInfo | None = None, *, validate=True
    ):
        self.left_basis = jnp.asarray(left_basis)
        self.right_basis = jnp.asarray(right_basis)
        self.values = jnp.asarray(values)
        m, n = self.left_basis.shape[0], self.right_basis.shape[0]
        if self.values.shape != (m, n):
            raise ValueError(
                f"values must have shape (m, n) = {(m, n)} matching the bases; "
                f"got {self.values.shape}"
            )
        if validate:
            parts = {"left_basis": self.left_basis, "right_basis": self.right_basis}
            _validate({**parts, "eigenvalues (values)": self.values}, orthogonal=tuple(parts))
        self.info = info

    def tree_flatten(self):
        return (self.left_basis, self.right_basis, self.values), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        obj = object.__new__(cls)
        obj.left_basis, obj.right_basis, obj.values = children
        obj.info = None
        return obj

    def __repr__(self) -> str:
        m, n = self.matrix_shape
        return f"EigenKronecker(m={m}, n={n}, dtype={self.dtype})"

    def _rotate(self, x):
        return self.left_basis.T @ x @ self.right_basis

    def _unrotate(self, x):
        return self.left_basis @ x @ self.right_basis.T

    def _with_values(self, values):
        _validate({"eigenvalues (values)": values})  # e.g. fn = log of a zero eigenvalue
        return EigenKronecker(self.left_basis, self.right_basis, values, validate=False)

    def to_dense(self) -> jax.Array:
        q = jnp.kron(self.left_basis, self.right_basis)
        return (q * self.values.reshape(-1)) @ q.T


@jax.tree_util.register_pytree_node_class
class Diagonal(_EigenForm):
    """``diag(vec D)`` with ``D`` of shape ``(m, n)`` (row-major, like the gradients)."""

    def __init__(self, values, info: FitInfo | None = None, *, validate=True):
        self.values = jnp.asarray(values)
        if self.values.ndim != 2:
            raise ValueError(f"diagonal values must have shape (m, n); got {self.values.shape}")
        if validate:
            _validate({"diagonal values": self.values})
        self.info = info

    def tree_flatten(self):
        return (self.values,), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        obj = object.__new__(cls)
        (obj.values,) = children
        obj.info = None
        return obj

    def __repr__(self) -> str:
        m, n = self.matrix_shape
        return f"Diagonal(m={m}, n={n}, dtype={self.dtype})"

    def _rotate(self, x):
        return x

    def _unrotate(self, x):
        return x

    def _with_values(self, values):
        return Diagonal(values)

    def to_dense(self) -> jax.Array:
        return jnp.diag(self.values.reshape(-1))
