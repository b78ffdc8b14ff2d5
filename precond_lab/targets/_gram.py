"""Everything a sample target derives from its weighted Gram matrix, on host arrays.

With the samples as rows of ``X`` (``N × mn``), ``K = X Xᵀ`` and the weighting
``C = diag(w) − c·w wᵀ / Σw`` (``c = 1`` when centered), the target is ``Σ = Xᵀ C X``.
Then (Sylvester, and ``tr(AB) = tr(BA)``)

* ``tr Σ = tr(CK)`` and ``‖Σ‖_F² = tr(CKCK)`` (no ``N × N`` temporary);
* with ``w ≥ 0``, ``C = L Lᵀ`` for ``L = diag(√w) P`` (``P = I − √w √wᵀ / Σw`` when
  centered, a projector): the non-zero eigenvalues of ``Σ`` are those of
  ``M = Lᵀ K L`` (one symmetric eigenproblem, eigenvalues only unless vectors are
  asked for; the eigenvectors are ``Xᵀ L Z μ^{-1/2}``), and
  ``log det(Σ + λI) = mn·log λ + log det(I + M/λ)`` by one Cholesky factorisation;
* with weights of either sign, ``K = U κ Uᵀ`` first and ``Σ``'s eigenpairs come from the
  small middle matrix ``√κ Uᵀ C U √κ``.

SciPy's LAPACK drivers are used (on host arrays, overwriting their input): on CPU they
beat JAX's ``eigh`` by a wide margin at these sizes.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.linalg

__all__ = ["Gram"]


def _eigh(a: np.ndarray, vectors: bool):
    """Symmetric eigendecomposition (ascending), eigenvalues only unless ``vectors``.

    ``a`` is symmetric, so its transpose (a Fortran-ordered view) is the same matrix and
    LAPACK overwrites it in place instead of copying a C-ordered array first.
    """
    a = a.T
    if vectors:
        return scipy.linalg.eigh(a, overwrite_a=True, check_finite=False, driver="evd")
    return scipy.linalg.eigh(a, eigvals_only=True, overwrite_a=True, check_finite=False), None


@dataclasses.dataclass
class Gram:
    """A weighted Gram matrix ``(K, w, centered)`` and what it determines.

    Attributes:
        k: ``(N, N)`` host array ``K_kl = ⟨G_k, G_l⟩`` (padding rows are zero, with zero
            weight).
        w: ``(N,)`` host weights.
        center: subtract the weighted mean.
    """

    k: np.ndarray
    w: np.ndarray
    center: bool = False

    def __post_init__(self):
        self.w = np.asarray(self.w, self.k.dtype)
        self.total = float(np.sum(self.w, dtype=np.float64))
        self.nonnegative = bool(np.all(self.w >= 0))
        if self.center and self.total == 0:
            raise ValueError("center=True needs weights with a non-zero sum.")

    @property
    def size(self) -> int:
        return int(self.k.shape[0])

    def trace(self) -> float:
        """``tr Σ = tr(CK)``."""
        k, w = self.k, self.w
        tr = float(np.dot(w, np.diagonal(k)))
        if self.center:
            tr -= float(w @ (k @ w)) / self.total
        return tr

    def frobenius_sq(self) -> float:
        """``‖Σ‖_F² = tr(CKCK)``, in one sweep over ``K`` without a second buffer."""
        k, w = self.k, self.w
        sq = float(np.einsum("kl,kl,l->k", k, k, w) @ w)
        if self.center:
            a = k @ w
            sq += -2.0 * float(np.dot(w * a, a)) / self.total + (float(w @ a) / self.total) ** 2
        return sq

    def _middle(self) -> np.ndarray:
        """``M = Lᵀ K L`` (needs ``w ≥ 0``), as a fresh array."""
        s = np.sqrt(self.w)
        m = self.k * s[:, None]
        m *= s[None, :]
        if self.center:
            ms = m @ s
            c = float(s @ ms) / self.total**2
            m -= np.outer(s, ms / self.total)
            m -= np.outer(ms / self.total, s)
            m += c * np.outer(s, s)
        return m

    def _tolerance(self, values) -> float:
        scale = float(np.max(np.abs(values))) if values.size else 0.0
        return 10 * max(self.size, 1) * float(np.finfo(self.k.dtype).eps) * scale

    def spectrum(self, vectors: bool = False):
        """Non-zero eigenvalues of ``Σ`` (descending) and, with ``vectors``, the ``(N, r)``
        coefficients ``A`` with eigenvectors ``Σ_k A_kr G_k``."""
        if self.nonnegative:
            mu, z = _eigh(self._middle(), vectors)
            keep = np.abs(mu) > self._tolerance(mu)
            order = np.flatnonzero(keep)[::-1]
            mu = mu[order]
            if not vectors:
                return mu, None
            z = z[:, order] / np.sqrt(mu)[None, :]
            s = np.sqrt(self.w)
            if self.center:
                z = z - np.outer(s, (s @ z) / self.total)
            return mu, z * s[:, None]
        kappa, u = _eigh(self.k.copy(), True)
        keep = kappa > self._tolerance(kappa)
        u, root = u[:, keep], np.sqrt(kappa[keep])
        cu = u * self.w[:, None]
        if self.center:
            cu -= np.outer(self.w, (self.w @ u) / self.total)
        mid = (root[:, None] * (u.T @ cu)) * root[None, :]
        mu, z = _eigh(0.5 * (mid + mid.T), vectors)
        keep = np.abs(mu) > self._tolerance(mu)
        order = np.flatnonzero(keep)[::-1]
        mu = mu[order]
        return mu, (None if not vectors else (u / root[None, :]) @ z[:, order])

    def logdet(self, damping: float, dim: int) -> float | None:
        """``log det(Σ + λI)`` by Cholesky, or None where that does not apply (``λ = 0``
        or weights of both signs)."""
        if damping <= 0 or not self.nonnegative:
            return None
        a = self._middle()
        a /= damping
        a[np.diag_indices_from(a)] += 1.0
        try:
            chol = scipy.linalg.cholesky(  # a.T: the same symmetric matrix, factored in place
                a.T, lower=True, overwrite_a=True, check_finite=False
            )
        except np.linalg.LinAlgError:  # pragma: no cover - I + M/λ is SPD for w ≥ 0
            return None
        return dim * float(np.log(damping)) + 2.0 * float(
            np.sum(np.log(np.diagonal(chol)), dtype=np.float64)
        )
