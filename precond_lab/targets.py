"""Targets: the matrix ``Σ`` being approximated, and the few primitives everything uses.

A target is either

* a bag of per-example matrices ``G`` of shape ``(N, m, n)`` with weights ``w``
  (default ``1/N``): ``Σ = Σ_k w_k vec(G_k) vec(G_k)ᵀ`` with row-major vec
  (:class:`SampleTarget`, matrix-free, streamed over the sample axis in chunks and
  optionally sharded over several devices), or
* a small explicit ``(mn, mn)`` matrix with its ``(m, n)`` (:class:`DenseTarget`),
  e.g. an exact Hessian block; every matrix-free result has this dense twin.

Both expose the same primitives:

* ``contract_left(B) = E[G B Gᵀ] = R(Σ) vec(B)`` (m×m) and
  ``contract_right(A) = E[Gᵀ A G] = R(Σ)ᵀ vec(A)`` (n×n), the rearranged operator of
  Van Loan–Pitsianis;
* ``second_moments() = (E[G Gᵀ], E[Gᵀ G])`` (Shampoo's ``L`` and ``R``);
* ``rotated_diagonal(Qa, Qb) = diag(QᵀΣQ)`` for ``Q = Qa ⊗ Qb``;
* ``trace_product(S) = tr(S Σ) = E[⟨G, S G⟩]`` for any structure ``S``;
* ``trace``, ``frobenius_norm`` (from the samples' Gram matrix) and ``eigh`` (the
  non-zero eigenpairs, computed on the smaller of the sample space and the
  parameter space, so memory never exceeds the data's).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from ._validation import NonFiniteError, check_finite, check_float_dtype
from .structures import Structure

__all__ = ["Target", "SampleTarget", "DenseTarget", "DampedTarget", "Spectrum", "as_target"]

_CHUNK_BYTES = 1 << 27  # 128 MiB of samples per chunk by default
_MIN_CHUNK = 32  # ... but at least this many samples, so large layers keep large products


@dataclasses.dataclass(frozen=True)
class Spectrum:
    """Non-zero eigenpairs of a target, in descending order.

    Attributes:
        values: ``(r,)`` eigenvalues (``r`` = numerical rank of ``Σ`` without damping).
        vectors: ``(r, m, n)`` orthonormal eigenvectors as matrices, or None.
        dim: ``mn``, so that ``dim - r`` eigenvalues equal ``floor``.
        floor: the eigenvalue on the orthogonal complement of ``vectors`` (0, or the
            damping ``λ`` of a :meth:`Target.damped` target).
    """

    values: jax.Array
    vectors: jax.Array | None
    dim: int
    floor: float = 0.0

    @property
    def rank(self) -> int:
        return int(self.values.shape[0])


class Target:
    """The matrix ``Σ`` (``mn × mn``) that the estimators approximate."""

    shape: tuple[int, int]
    dtype: np.dtype

    @property
    def dim(self) -> int:
        m, n = self.shape
        return m * n

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
        return self.contract_left(jnp.eye(self.shape[1], dtype=self.dtype))

    def right_moment(self) -> jax.Array:
        """``R = E[Gᵀ G] = contract_right(I)`` (n×n)."""
        return self.contract_right(jnp.eye(self.shape[0], dtype=self.dtype))

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

    def eigh(self, vectors: bool = False) -> Spectrum:
        """Non-zero eigenvalues (and optionally eigenvectors), descending."""
        raise NotImplementedError

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
        self.shape = base.shape
        self.dtype = base.dtype

    def contract_left(self, b):
        m = self.shape[0]
        return self.base.contract_left(b) + self.damping * jnp.trace(b) * jnp.eye(
            m, dtype=self.dtype
        )

    def contract_right(self, a):
        n = self.shape[1]
        return self.base.contract_right(a) + self.damping * jnp.trace(a) * jnp.eye(
            n, dtype=self.dtype
        )

    def second_moments(self):
        m, n = self.shape
        left, right = self.base.second_moments()
        return (
            left + self.damping * n * jnp.eye(m, dtype=self.dtype),
            right + self.damping * m * jnp.eye(n, dtype=self.dtype),
        )

    def left_moment(self):
        m, n = self.shape
        return self.base.left_moment() + self.damping * n * jnp.eye(m, dtype=self.dtype)

    def right_moment(self):
        m, n = self.shape
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

    def eigh(self, vectors: bool = False) -> Spectrum:
        spec = self.base.eigh(vectors)
        return Spectrum(
            spec.values + self.damping, spec.vectors, spec.dim, spec.floor + self.damping
        )

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


# --------------------------------------------------------------------------------------
# Jitted per-chunk kernels. G: (c, m, n) samples, w: (c,) weights (zero for padding).
# --------------------------------------------------------------------------------------


@jax.jit
def _k_stats(g, w):
    finite = jnp.all(jnp.isfinite(g), axis=(1, 2))
    sq = jnp.sum(jnp.where(jnp.isfinite(g), g, 0.0) ** 2, axis=(1, 2))
    return (
        finite,
        jnp.sum(w * sq),
        jnp.einsum("k,kij->ij", w, jnp.where(finite[:, None, None], g, 0)),
    )


@jax.jit
def _k_left(g, w, b):
    gb = jnp.matmul(g, b)  # one (c·m, n) × (n, n) product
    return jnp.einsum("kil,kml->im", gb * w[:, None, None], g)


@jax.jit
def _k_right(g, w, a):
    ag = jnp.matmul(a, g)  # (m, m) × (c, m, n)
    return jnp.einsum("kil,kij->jl", ag * w[:, None, None], g)


@jax.jit
def _k_left_moment(g, w):
    """``Σ_k w_k G_k G_kᵀ`` as one ``(m, c·n) × (c·n, m)`` product."""
    c, m, n = g.shape
    h = jnp.transpose(g, (1, 0, 2))  # (m, c, n)
    return h.reshape(m, c * n) @ (h * w[None, :, None]).reshape(m, c * n).T


@jax.jit
def _k_right_moment(g, w):
    """``Σ_k w_k G_kᵀ G_k`` as one ``(n, c·m) × (c·m, n)`` product (no transpose needed)."""
    c, m, n = g.shape
    return g.reshape(c * m, n).T @ (g * w[:, None, None]).reshape(c * m, n)


@jax.jit
def _k_moments(g, w):
    return _k_left_moment(g, w), _k_right_moment(g, w)


@jax.jit
def _k_rotdiag(g, w, qa, qb):
    p = qa.T @ g @ qb
    return jnp.einsum("k,kij->ij", w, p * p)


@jax.jit
def _k_diag(g, w):
    return jnp.einsum("k,kij->ij", w, g * g)


@jax.jit
def _k_trace_product(g, w, s):
    return jnp.einsum("k,kij,kij->", w, g, s.matvec(g))


@jax.jit
def _k_gram(ga, gb):
    return ga.reshape(ga.shape[0], -1) @ gb.reshape(gb.shape[0], -1).T


@jax.jit
def _k_frob_block(ga, wa, gb, wb):
    k = _k_gram(ga, gb)
    return jnp.einsum("k,kl,l->", wa, k * k, wb)


@jax.jit
def _k_cov(g, w):
    x = g.reshape(g.shape[0], -1)
    return x.T @ (x * w[:, None])


@jax.jit
def _k_combine(g, coef):
    return jnp.einsum("kr,kij->rij", coef, g)


class SampleTarget(Target):
    """``Σ = Σ_k w_k vec(G_k) vec(G_k)ᵀ`` from per-example matrices, matrix-free.

    Args:
        samples: ``(N, m, n)`` array (NumPy, JAX, or an ``xarray.DataArray`` with dims
            ``(sample, row, col)``, possibly lazy and larger than memory). A DataArray
            with one more dim between ``sample`` and ``row`` (e.g. ``class`` for exact
            Gauss–Newton pseudo-gradients, ``mc`` for sampled labels) is a bag of
            ``N·K`` samples, each inheriting its example's weight; so is a 4-D array
            ``(N, K, m, n)``. A DataArray may carry
            its weights as a ``weight`` coordinate along ``sample``.
        weights: ``(N,)`` weights, default ``1/N``. Negative weights are allowed.
        center: subtract the weighted mean: ``Σ_k w_k (g_k − ḡ)(g_k − ḡ)ᵀ`` with
            ``ḡ = Σ w_k g_k / Σ w_k``, implemented as one extra sample ``ḡ`` of weight
            ``−Σ w_k``.
        chunk_size: samples per streamed chunk (default: ~128 MiB of samples).
        shard: shard each chunk over all local JAX devices along the sample axis
            (default: when more than one device is present).
        validate: check every sample for NaN/Inf once, at construction.
    """

    def __init__(
        self,
        samples,
        weights=None,
        *,
        center: bool = False,
        chunk_size: int | None = None,
        shard: bool | None = None,
        validate: bool = True,
    ):
        self._source = _make_source(samples, weights)
        self.shape = self._source.shape
        self.dtype = self._source.dtype
        self.num_samples = self._source.num_samples
        m, n = self.shape
        self._devices = jax.local_devices()
        self.shard = len(self._devices) > 1 if shard is None else bool(shard)
        ndev = len(self._devices) if self.shard else 1
        if chunk_size is None:
            chunk_size = max(_MIN_CHUNK, _CHUNK_BYTES // (m * n * self.dtype.itemsize))
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be a positive integer; got {chunk_size}")
        self.chunk_size = int(math.ceil(min(int(chunk_size), self.num_samples) / ndev) * ndev)
        if self.shard:
            mesh = jax.sharding.Mesh(np.array(self._devices), ("sample",))
            self._sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("sample"))
        self._extra: tuple[jax.Array, jax.Array] | None = None
        self._trace = None
        self._cache: dict = {}
        if validate or center:
            self._first_pass(center)

    # -- streaming ---------------------------------------------------------------
    def _put(self, x):
        return jax.device_put(x, self._sharding) if self.shard else x

    @property
    def num_chunks(self) -> int:
        """Number of blocks streamed per pass (the centering sample is its own block)."""
        regular = -(-self.num_samples // self.chunk_size)
        return regular + (1 if self._extra is not None else 0)

    def chunk(self, i: int) -> tuple[int, jax.Array, jax.Array]:
        """Block ``i`` as ``(start, G, w)``, padded to ``chunk_size`` with zero weights."""
        regular = -(-self.num_samples // self.chunk_size)
        if i == regular and self._extra is not None:
            return -1, self._extra[0], self._extra[1]
        c = self.chunk_size
        start = i * c
        g, w = self._source.read(start, min(start + c, self.num_samples))
        pad = c - g.shape[0]
        if pad:
            g = jnp.concatenate([g, jnp.zeros((pad, *g.shape[1:]), g.dtype)])
            w = jnp.concatenate([w, jnp.zeros((pad,), w.dtype)])
        return start, self._put(g), self._put(w)

    def chunks(self):
        """Yield every block ``(start, G, w)`` of one pass over the samples."""
        for i in range(self.num_chunks):
            yield self.chunk(i)

    def _reduce(self, kernel, *args):
        total = None
        for _, g, w in self.chunks():
            part = kernel(g, w, *args)
            total = part if total is None else jax.tree_util.tree_map(jnp.add, total, part)
        return total

    def _first_pass(self, center: bool) -> None:
        trace = 0.0
        mean = None
        for start, g, w in self.chunks():
            finite, tr, s = _k_stats(g, w)
            finite = np.asarray(finite)
            if not finite.all():
                bad = np.flatnonzero(~finite)
                bad = bad[bad < self.num_samples - start]
                if bad.size:
                    raise NonFiniteError(
                        f"samples contain NaN or Inf: first at sample index "
                        f"{self._source.sample_index(start + int(bad[0]))} "
                        f"({bad.size} offending sample(s) in the chunk starting at "
                        f"{self._source.sample_index(start)})."
                    )
            trace = trace + tr
            mean = s if mean is None else mean + s
        if center:
            total_w = self._source.weight_sum()
            if total_w == 0:
                raise ValueError("center=True needs weights with a non-zero sum.")
            gbar = (mean / total_w)[None]
            self._extra = (gbar, jnp.asarray([-total_w], self.dtype))
            trace = trace - total_w * jnp.sum(gbar * gbar)
        self._trace = jnp.asarray(trace, self.dtype)

    # -- primitives ----------------------------------------------------------------
    def contract_left(self, b):
        return self._reduce(_k_left, jnp.asarray(b, self.dtype))

    def contract_right(self, a):
        return self._reduce(_k_right, jnp.asarray(a, self.dtype))

    def second_moments(self):
        return self._reduce(_k_moments)

    def left_moment(self):
        return self._reduce(_k_left_moment)

    def right_moment(self):
        return self._reduce(_k_right_moment)

    def rotated_diagonal(self, qa, qb):
        if qa is None and qb is None:
            return self._reduce(_k_diag)
        m, n = self.shape
        qa = jnp.eye(m, dtype=self.dtype) if qa is None else jnp.asarray(qa, self.dtype)
        qb = jnp.eye(n, dtype=self.dtype) if qb is None else jnp.asarray(qb, self.dtype)
        return self._reduce(_k_rotdiag, qa, qb)

    def trace(self):
        if self._trace is None:
            self._first_pass(center=False)
        return self._trace

    def trace_product(self, s: Structure):
        if s.shape != self.shape:
            raise ValueError(f"structure of shape {s.shape} does not match target {self.shape}")
        return self._reduce(_k_trace_product, s)

    def frobenius_norm(self):
        """``‖Σ‖_F = sqrt(Σ_kl w_k w_l ⟨G_k, G_l⟩²)``, from blocks of the Gram matrix.

        Streams over pairs of chunks (``O(num_chunks²)`` reads), never storing the Gram.
        Cached: a target is immutable.
        """
        if "frobenius" not in self._cache:
            self._cache["frobenius"] = self._frobenius_norm()
        return self._cache["frobenius"]

    def _frobenius_norm(self):
        total = 0.0
        for i in range(self.num_chunks):
            _, ga, wa = self.chunk(i)
            for j in range(i, self.num_chunks):
                _, gb, wb = (i, ga, wa) if j == i else self.chunk(j)
                total = total + (1.0 if i == j else 2.0) * _k_frob_block(ga, wa, gb, wb)
        return jnp.sqrt(jnp.maximum(total, 0.0))

    def gram(self) -> tuple[jax.Array, jax.Array]:
        """The Gram matrix ``K_kl = ⟨G_k, G_l⟩`` over all blocks (padding included) and weights.

        Streams over block pairs ``i ≤ j`` (two chunks in memory at a time) and fills the
        symmetric result on the host, so the samples are never held twice.
        """
        sizes = [self.chunk_size] * (self.num_chunks - (self._extra is not None))
        if self._extra is not None:
            sizes.append(1)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        out = np.zeros((offsets[-1], offsets[-1]), dtype=self.dtype)
        ws = []
        for i in range(self.num_chunks):
            _, ga, wa = self.chunk(i)
            ws.append(wa)
            for j in range(i, self.num_chunks):
                _, gb, _ = (None, ga, None) if j == i else self.chunk(j)
                block = np.asarray(_k_gram(ga, gb))
                out[offsets[i] : offsets[i + 1], offsets[j] : offsets[j + 1]] = block
                out[offsets[j] : offsets[j + 1], offsets[i] : offsets[i + 1]] = block.T
        return jnp.asarray(out), jnp.concatenate(ws)

    def eigh(self, vectors: bool = False) -> Spectrum:
        """Non-zero eigenpairs, on the smaller of sample space and parameter space (cached)."""
        key = ("eigh", True) if ("eigh", True) in self._cache else ("eigh", vectors)
        if key not in self._cache:
            self._cache[key] = self._eigh(vectors)
        return self._cache[key]

    def _eigh(self, vectors: bool) -> Spectrum:
        m, n = self.shape
        d = m * n
        if self.num_chunks * self.chunk_size <= d:
            return self._eigh_sample_space(vectors)
        cov = self._reduce(_k_cov)
        vals, vecs = jnp.linalg.eigh(0.5 * (cov + cov.T))
        vecs = vecs.T.reshape(d, m, n) if vectors else None
        vals, vecs = _truncate_rank(vals, vecs, d, self.dtype, d)
        return Spectrum(vals, vecs, d)

    def _eigh_sample_space(self, vectors: bool) -> Spectrum:
        """Eigenpairs of ``Σ = Xᵀ W X`` from the Gram ``K = X Xᵀ`` (any sign of weights).

        ``K = U κ Uᵀ`` gives ``X = U √κ Pᵀ`` with orthonormal ``P``, so
        ``Σ = P (√κ Uᵀ W U √κ) Pᵀ``: the eigenvalues are those of the small symmetric
        middle matrix ``M = Z μ Zᵀ``, the eigenvectors ``P Z = Xᵀ U κ^{-1/2} Z``.
        """
        m, n = self.shape
        d = m * n
        k, w = self.gram()
        kappa, u = jnp.linalg.eigh(0.5 * (k + k.T))
        keep = np.asarray(kappa > 10 * k.shape[0] * jnp.finfo(self.dtype).eps * jnp.max(kappa))
        u, s = u[:, keep], jnp.sqrt(kappa[keep])
        mid = (s[:, None] * (u.T * w[None, :]) @ u) * s[None, :]
        mu, z = jnp.linalg.eigh(0.5 * (mid + mid.T))
        vecs = None
        if vectors:
            coef = (u / s[None, :]) @ z  # (blocks' rows, r): padding rows have K = 0
            vecs, pos = None, 0
            for _, g, _ in self.chunks():
                part = _k_combine(g, coef[pos : pos + g.shape[0]])
                vecs = part if vecs is None else vecs + part
                pos += g.shape[0]
        vals, vecs = _truncate_rank(mu, vecs, d, self.dtype, k.shape[0])
        return Spectrum(vals, vecs, d)

    def to_dense(self):
        return self._reduce(_k_cov)


class DenseTarget(Target):
    """An explicit symmetric ``(mn, mn)`` matrix with its factor shape ``(m, n)``.

    Row ``i·n + j`` of the matrix belongs to entry ``(i, j)`` of an ``m×n`` matrix
    (row-major vec), exactly as for :class:`SampleTarget`.
    """

    def __init__(self, matrix, shape: tuple[int, int], *, check_symmetric: bool = True):
        check_float_dtype(getattr(matrix, "dtype", np.float64), "dense target")
        mat = jnp.asarray(matrix)
        m, n = (int(s) for s in shape)
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
        self.shape = (m, n)
        self.dtype = np.dtype(self.matrix.dtype)

    def _blocks(self):
        m, n = self.shape
        return self.matrix.reshape(m, n, m, n)

    def contract_left(self, b):
        return jnp.einsum("ijkl,jl->ik", self._blocks(), jnp.asarray(b, self.dtype))

    def contract_right(self, a):
        return jnp.einsum("ijkl,ik->jl", self._blocks(), jnp.asarray(a, self.dtype))

    def rotated_diagonal(self, qa, qb):
        m, n = self.shape
        qa = jnp.eye(m, dtype=self.dtype) if qa is None else jnp.asarray(qa, self.dtype)
        qb = jnp.eye(n, dtype=self.dtype) if qb is None else jnp.asarray(qb, self.dtype)
        rot = jnp.einsum("ijkl,ia,jb,kc,ld->abcd", self._blocks(), qa, qb, qa, qb)
        return jnp.einsum("abab->ab", rot)

    def trace(self):
        return jnp.trace(self.matrix)

    def trace_product(self, s: Structure):
        m, n = self.shape
        cols = self.matrix.reshape(m * n, m, n)  # row k of Σ = Σ e_k (symmetric)
        return jnp.trace(s.matvec(cols).reshape(m * n, m * n))

    def frobenius_norm(self):
        return jnp.linalg.norm(self.matrix)

    def eigh(self, vectors: bool = False) -> Spectrum:
        m, n = self.shape
        d = m * n
        vals, vecs = jnp.linalg.eigh(self.matrix)
        vecs = vecs.T.reshape(d, m, n) if vectors else None
        vals, vecs = _truncate_rank(vals, vecs, d, self.dtype, d)
        return Spectrum(vals, vecs, d)

    def to_dense(self):
        return self.matrix


# --------------------------------------------------------------------------------------
# Sample sources: where chunks are read from.
# --------------------------------------------------------------------------------------


class _ArraySource:
    """In-memory NumPy or JAX samples."""

    in_memory = True

    def __init__(self, samples, weights):
        dt = check_float_dtype(samples.dtype, "samples")
        if samples.ndim == 4:  # (N, K, m, n): K pseudo-samples per example share its weight
            n_ex, k = samples.shape[:2]
            if weights is not None:
                weights = (
                    np.repeat(np.asarray(weights), k) if np.shape(weights) == (n_ex,) else weights
                )
            elif n_ex:
                weights = np.full(n_ex * k, 1.0 / n_ex)
            samples = samples.reshape(n_ex * k, *samples.shape[2:])
        if samples.ndim != 3:
            raise ValueError(
                f"samples must have shape (N, m, n) (N per-example m×n matrices); got "
                f"{samples.ndim}-d array of shape {tuple(samples.shape)}"
            )
        n_samples, m, n = samples.shape
        if n_samples == 0:
            raise ValueError("samples is empty (N = 0): at least one sample is needed.")
        if m == 0 or n == 0:
            raise ValueError(f"samples have an empty matrix shape {(m, n)}")
        self.samples = jnp.asarray(samples)
        self.dtype = np.dtype(self.samples.dtype) if dt.kind == "f" else dt
        self.shape = (int(m), int(n))
        self.num_samples = int(n_samples)
        self.weights = check_weights(weights, self.num_samples, self.dtype)

    def read(self, start, stop):
        if start == 0 and stop == self.num_samples:  # one chunk: no copy
            return self.samples, self.weights
        return self.samples[start:stop], self.weights[start:stop]

    def sample_index(self, i):
        return i

    def weight_sum(self):
        return float(jnp.sum(self.weights))


class _DataArraySource:
    """An ``xarray.DataArray`` (possibly lazy / Zarr-backed), read one chunk at a time."""

    in_memory = False

    def __init__(self, da, weights):
        dims = tuple(da.dims)
        if len(dims) not in (3, 4) or dims[0] != "sample":
            raise ValueError(
                "a DataArray of samples must have dims (sample, row, col) or "
                f"(sample, <inner>, row, col); got {dims}"
            )
        check_float_dtype(da.dtype, f"DataArray {da.name!r}")
        self.da = da
        self.inner = int(da.shape[1]) if da.ndim == 4 else 1
        self.examples = int(da.shape[0])
        if self.examples == 0:
            raise ValueError(f"DataArray {da.name!r} has no samples (sample dim is empty).")
        self.shape = (int(da.shape[-2]), int(da.shape[-1]))
        self.dtype = np.dtype(jnp.zeros((), da.dtype).dtype)
        self.num_samples = self.examples * self.inner
        if weights is None and "weight" in da.coords:
            weights = np.asarray(da.coords["weight"].values)
        w = check_weights(weights, self.examples, self.dtype)
        self.weights = jnp.repeat(w, self.inner) if self.inner > 1 else w

    def read(self, start, stop):
        e0, e1 = start // self.inner, -(-stop // self.inner)
        block = np.asarray(self.da.isel(sample=slice(e0, e1)).values)
        block = block.reshape(-1, *self.shape)
        off = start - e0 * self.inner
        return jnp.asarray(block[off : off + stop - start]), self.weights[start:stop]

    def sample_index(self, i):
        return i // self.inner if self.inner == 1 else (i // self.inner, i % self.inner)

    def weight_sum(self):
        return float(jnp.sum(self.weights))


def check_weights(weights, count, dtype):
    if weights is None:
        return jnp.full((count,), 1.0 / count, dtype=dtype)
    w = np.asarray(weights)
    if w.shape != (count,):
        raise ValueError(f"weights must have shape (N,) = ({count},); got {w.shape}")
    check_float_dtype(w.dtype if w.dtype.kind == "f" else np.float64, "weights")
    if w.dtype.kind not in "fiu":
        raise TypeError(f"weights must be real numbers; got dtype {w.dtype}")
    check_finite(w.astype(np.float64), "weights")
    return jnp.asarray(w, dtype=dtype)


def _make_source(samples, weights):
    try:
        import xarray as xr
    except ImportError:  # pragma: no cover - xarray is a dependency
        xr = None
    if xr is not None and isinstance(samples, xr.DataArray):
        return _DataArraySource(samples, weights)
    if not hasattr(samples, "shape") or not hasattr(samples, "dtype"):
        samples = np.asarray(samples)
    return _ArraySource(samples, weights)


def as_target(
    samples,
    weights=None,
    *,
    center: bool = False,
    chunk_size: int | None = None,
    shape: tuple[int, int] | None = None,
) -> Target:
    """Turn user input into a :class:`Target`.

    Args:
        samples: a :class:`Target` (returned as is), an ``(N, m, n)`` array or
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
