"""Targets from per-example matrices ``G: (N, m, n)``, streamed in chunks."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from .._validation import NonFiniteError, check_float_dtype, check_target_scale
from ..structures import Structure
from ._base import Spectrum, Target, _truncate_rank, bucket, check_weights
from ._gram import Gram
from ._kernels import (
    _k_combine,
    _k_cov,
    _k_diag,
    _k_frob_block,
    _k_gram,
    _k_left,
    _k_left_moment,
    _k_moments,
    _k_right,
    _k_right_moment,
    _k_rotdiag,
    _k_stats,
    _k_trace_product,
)

__all__ = ["SampleTarget"]

_CHUNK_BYTES = 1 << 27  # 128 MiB of samples per chunk by default
_MIN_CHUNK = 32  # ... but at least this many samples, so large layers keep large products
_GRAM_BYTES = 1 << 31  # keep the Gram matrix in memory up to 2 GiB


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
        self.matrix_shape = self._source.shape
        self.dtype = self._source.dtype
        self.num_samples = self._source.num_samples
        m, n = self.matrix_shape
        self._devices = jax.local_devices()
        self.shard = len(self._devices) > 1 if shard is None else bool(shard)
        ndev = len(self._devices) if self.shard else 1
        if chunk_size is None:
            chunk_size = max(_MIN_CHUNK, _CHUNK_BYTES // (m * n * self.dtype.itemsize))
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be a positive integer; got {chunk_size}")
        size = min(int(chunk_size), bucket(self.num_samples))  # a new N reuses compiled kernels
        self.chunk_size = int(math.ceil(size / ndev) * ndev)
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
        stop = min(start + c, self.num_samples)
        if getattr(self._source, "host", None) is not None:  # host slice + pad: no compile
            g, w = self._source.read_padded(start, stop, c)
            return start, self._put(g), self._put(w)
        g, w = self._source.read(start, stop)
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
        nonzero = mean is not None and bool(jnp.any(mean != 0))
        check_target_scale(float(trace), self.dtype, nonzero and not center, "SampleTarget")
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
        m, n = self.matrix_shape
        qa = jnp.eye(m, dtype=self.dtype) if qa is None else jnp.asarray(qa, self.dtype)
        qb = jnp.eye(n, dtype=self.dtype) if qb is None else jnp.asarray(qb, self.dtype)
        return self._reduce(_k_rotdiag, qa, qb)

    def rotated_diagonals(self, bases):
        """``diag(QᵀΣQ)`` for every ``(qa, qb)`` in ``bases`` from one pass over the samples."""
        m, n = self.matrix_shape
        eye_m, eye_n = jnp.eye(m, dtype=self.dtype), jnp.eye(n, dtype=self.dtype)
        args = [
            None
            if qa is None and qb is None
            else (
                eye_m if qa is None else jnp.asarray(qa, self.dtype),
                eye_n if qb is None else jnp.asarray(qb, self.dtype),
            )
            for qa, qb in bases
        ]
        totals = [None] * len(args)
        for _, g, w in self.chunks():
            for i, qs in enumerate(args):
                part = _k_diag(g, w) if qs is None else _k_rotdiag(g, w, *qs)
                totals[i] = part if totals[i] is None else totals[i] + part
        return totals

    def trace(self):
        if self._trace is None:
            self._first_pass(center=False)
        return self._trace

    def trace_product(self, s: Structure):
        if s.matrix_shape != self.matrix_shape:
            raise ValueError(
                f"structure of matrix_shape {s.matrix_shape} does not match the target's "
                f"{self.matrix_shape}"
            )
        return self._reduce(_k_trace_product, s)

    def frobenius_norm(self):
        """``‖Σ‖_F``: from the cached Gram matrix when it fits in ``_GRAM_BYTES``, else
        streamed over pairs of chunks (``O(num_chunks²)`` reads, never storing the Gram).
        Cached: a target is immutable."""
        if "frobenius" not in self._cache:
            if self._gram_fits():
                sq = self.gram().frobenius_sq()
                self._cache["frobenius"] = jnp.asarray(np.sqrt(max(sq, 0.0)), self.dtype)
            else:
                self._cache["frobenius"] = self._frobenius_streamed()
        return self._cache["frobenius"]

    def _gram_fits(self) -> bool:
        rows = self._regular_chunks() * self.chunk_size
        return rows * rows * self.dtype.itemsize <= _GRAM_BYTES

    def _regular_chunks(self) -> int:
        return -(-self.num_samples // self.chunk_size)

    def _frobenius_streamed(self):
        total = 0.0
        for i in range(self.num_chunks):
            _, ga, wa = self.chunk(i)
            for j in range(i, self.num_chunks):
                _, gb, wb = (i, ga, wa) if j == i else self.chunk(j)
                total = total + (1.0 if i == j else 2.0) * _k_frob_block(ga, wa, gb, wb)
        return jnp.sqrt(jnp.maximum(total, 0.0))

    def gram(self) -> Gram:
        """The weighted Gram matrix of the samples (padding rows included, weight 0), once.

        Streams over block pairs ``i ≤ j`` (two chunks in memory at a time) and fills the
        symmetric host array, so the samples are never held twice. Centering is part of
        the weighting (``Gram``), not an extra sample.
        """
        if "gram" not in self._cache:
            chunks = self._regular_chunks()
            c = self.chunk_size
            out = np.empty((chunks * c, chunks * c), dtype=self.dtype)
            ws = []
            for i in range(chunks):
                _, ga, wa = self.chunk(i)
                ws.append(np.asarray(wa))
                for j in range(i, chunks):
                    _, gb, _ = (None, ga, None) if j == i else self.chunk(j)
                    block = np.asarray(_k_gram(ga, gb))
                    out[i * c : (i + 1) * c, j * c : (j + 1) * c] = block
                    out[j * c : (j + 1) * c, i * c : (i + 1) * c] = block.T
            self._cache["gram"] = Gram(out, np.concatenate(ws), self._extra is not None)
        return self._cache["gram"]

    def _sample_space(self) -> bool:
        m, n = self.matrix_shape
        return self._regular_chunks() * self.chunk_size <= m * n

    def eigh(self, vectors: bool = False) -> Spectrum:
        """Non-zero eigenpairs, on the smaller of sample space and parameter space (cached;
        eigenvalues only unless ``vectors``)."""
        key = ("eigh", True) if ("eigh", True) in self._cache else ("eigh", vectors)
        if key not in self._cache:
            self._cache[key] = self._eigh(vectors)
        return self._cache[key]

    def _eigh(self, vectors: bool) -> Spectrum:
        m, n = self.matrix_shape
        d = m * n
        if self._sample_space():
            mu, coef = self.gram().spectrum(vectors)
            vecs = None
            if vectors:
                coef = jnp.asarray(coef, self.dtype)
                vecs, c = None, self.chunk_size
                for i in range(self._regular_chunks()):
                    _, g, _ = self.chunk(i)
                    part = _k_combine(g, coef[i * c : (i + 1) * c])
                    vecs = part if vecs is None else vecs + part
            return Spectrum(jnp.asarray(mu, self.dtype), vecs, d)
        cov = self._reduce(_k_cov)
        vals, vecs = jnp.linalg.eigh(0.5 * (cov + cov.T))
        vecs = vecs.T.reshape(d, m, n) if vectors else None
        vals, vecs = _truncate_rank(vals, vecs, d, self.dtype, d)
        return Spectrum(vals, vecs, d)

    def _apply_matrices(self, x):  # Σ vec(X) = Σ_k w_k G_k ⟨G_k, X⟩, one streamed pass
        x = jnp.asarray(x, self.dtype)
        total = jnp.zeros(x.shape, self.dtype)
        for _, g, w in self.chunks():
            coef = jnp.einsum("kmn,...mn->k...", g, x) * w.reshape(-1, *(1,) * (x.ndim - 2))
            total = total + jnp.einsum("k...,kmn->...mn", coef, g)
        return total

    def to_dense(self):
        return self._reduce(_k_cov)


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
        # NumPy input stays on the host too: chunks are sliced and padded there, so a new
        # N (or a new chunk start) compiles nothing
        self.host = samples if isinstance(samples, np.ndarray) else None
        self.samples = jax.device_put(samples) if self.host is not None else jnp.asarray(samples)
        self.dtype = np.dtype(self.samples.dtype) if dt.kind == "f" else dt
        self.shape = (int(m), int(n))
        self.num_samples = int(n_samples)
        self.weights = check_weights(weights, self.num_samples, self.dtype)
        self._host_w = None

    def read(self, start, stop):
        if start == 0 and stop == self.num_samples:  # one chunk: no copy
            return self.samples, self.weights
        return self.samples[start:stop], self.weights[start:stop]

    def read_padded(self, start, stop, size):
        """Samples ``[start, stop)`` zero-padded to ``size`` rows, from the host array."""
        if start == 0 and stop == size == self.num_samples:
            return self.samples, self.weights
        if self._host_w is None:
            self._host_w = np.asarray(self.weights)
        g = np.zeros((size, *self.shape), self.dtype)
        g[: stop - start] = self.host[start:stop]
        w = np.zeros(size, self.dtype)
        w[: stop - start] = self._host_w[start:stop]
        return jax.device_put(g), jax.device_put(w)

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
        empty = [d for d, size in da.sizes.items() if size == 0]
        if empty:
            raise ValueError(f"DataArray {da.name!r} has empty dim(s) {empty}: {dict(da.sizes)}")
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
