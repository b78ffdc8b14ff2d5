"""Targets from per-example matrices ``G: (N, m, n)``, streamed in chunks."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from .._validation import NonFiniteError, check_float_dtype, check_target_scale, first_nonfinite
from ..structures import Diagonal, EigenKronecker, Kronecker, Structure
from . import _host
from ._base import Spectrum, Target, _truncate_rank, bucket, check_weights
from ._distributed import allgather_counts, global_samples, to_host
from ._gram import Gram
from ._kernels import (
    _k_apply,
    _k_combine,
    _k_cov,
    _k_diag,
    _k_frob_block,
    _k_gram,
    _k_left,
    _k_left_moment,
    _k_moments,
    _k_norms,
    _k_right,
    _k_right_moment,
    _k_rotdiag,
    _k_stats,
    _k_trace_product,
)

__all__ = ["SampleTarget", "EXECUTORS"]

_CHUNK_BYTES = 1 << 27  # 128 MiB of samples per chunk by default (JAX executor)
_HOST_CHUNK_BYTES = 1 << 25  # 32 MiB views on the NumPy executor: temporaries stay small
_MIN_CHUNK = 32  # ... but at least this many samples, so large layers keep large products
_GRAM_BYTES = 1 << 31  # keep the Gram matrix in memory up to 2 GiB

#: ``executor=`` choices: ``auto`` (NumPy/BLAS for host samples on JAX's CPU backend,
#: unsharded; JAX otherwise), ``numpy`` or ``jax``.
EXECUTORS = ("auto", "numpy", "jax")

# the JAX kernels by name; the NumPy twin of each is ``_host.h_<name>``
_JAX_KERNELS = {
    "norms": _k_norms,
    "stats": _k_stats,
    "left_moment": _k_left_moment,
    "right_moment": _k_right_moment,
    "moments": _k_moments,
    "contract_left": _k_left,
    "contract_right": _k_right,
    "rotdiag": _k_rotdiag,
    "diag": _k_diag,
    "cov": _k_cov,
    "gram": _k_gram,
    "frob_block": _k_frob_block,
    "combine": _k_combine,
    "apply": _k_apply,
}


def _add(a, b):
    return a + b


class SampleTarget(Target):
    """``Σ = Σ_k w_k vec(G_k) vec(G_k)ᵀ`` from per-example matrices, matrix-free.

    Two executors run the same primitives: on JAX's CPU backend, samples held in host
    memory are computed by NumPy/SciPy's BLAS on zero-copy chunk views (``numpy``; XLA's
    CPU matmuls run the long contractions of these passes 1.3–1.7× slower); device arrays,
    accelerators and sharded targets run jitted JAX kernels (``jax``). ``executor``
    records the choice.

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
        chunk_size: samples per streamed chunk (default: ~128 MiB of samples on the JAX
            executor, ~32 MiB on the NumPy one).
        shard: shard each chunk over all local JAX devices along the sample axis
            (default: when more than one device is present; implies ``executor="jax"``).
        validate: check every sample for NaN/Inf and ``tr Σ`` for overflow, underflow
            and an all-zero target. The check is folded into the first pass over the
            samples (a dot product per sample; NaN/Inf propagate into it), so invalid
            samples raise at the first primitive used, naming the first bad sample.
        executor: one of ``EXECUTORS``.
        process_local: ``samples`` (an array) and ``weights`` are this process's share
            of the samples in a multi-process run (``jax.distributed.initialize``
            first): the samples axis is sharded over every device of every process (one
            block per pass), each pass reduces across processes, and every result is
            the global one, on every process. Default weights are ``1/N`` for the
            global ``N``; a NaN is reported by the process that holds it, with its
            global index.
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
        executor: str = "auto",
        process_local: bool = False,
    ):
        if not isinstance(center, (bool, np.bool_)):
            raise TypeError(f"center must be True or False; got {center!r}")
        self._multi = bool(process_local)
        if self._multi:
            self._source = _ProcessShareSource(samples, weights, validate)
            shard, executor = False, "jax"  # the global arrays are sharded already
        else:
            self._source = _make_source(samples, weights)
        self.matrix_shape = self._source.shape
        self.dtype = self._source.dtype
        self.num_samples = self._source.num_samples
        m, n = self.matrix_shape
        self._devices = jax.local_devices()
        self.shard = len(self._devices) > 1 if shard is None else bool(shard)
        self.executor = self._choose_executor(executor)
        host = self.executor == "numpy"
        ndev = len(self._devices) if self.shard else 1
        if chunk_size is None:
            per = _HOST_CHUNK_BYTES if host else _CHUNK_BYTES
            chunk_size = max(_MIN_CHUNK, per // (m * n * self.dtype.itemsize))
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be a positive integer; got {chunk_size}")
        if self._multi:  # one block: the global arrays
            self.chunk_size = self._source.rows
        elif host:  # views of any length: nothing compiles, nothing is padded
            self.chunk_size = min(int(chunk_size), self.num_samples)
        else:
            size = min(int(chunk_size), bucket(self.num_samples))  # a new N: no recompile
            self.chunk_size = int(math.ceil(size / ndev) * ndev)
        if self.shard:
            mesh = jax.sharding.Mesh(np.array(self._devices), ("sample",))
            self._sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("sample"))
        self._extra: tuple | None = None
        self._trace = None
        self._checked = not validate  # the NaN/Inf and scale checks are done
        self._cache: dict = {}
        if center:
            self._first_pass(center)

    def _choose_executor(self, executor: str) -> str:
        if executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {EXECUTORS}; got {executor!r}")
        if executor == "jax":
            return "jax"
        if executor == "numpy":
            if self.shard:
                raise ValueError("executor='numpy' cannot shard; use executor='jax'")
            return "numpy"
        return "numpy" if _host.host_blas() and not self.shard else "jax"

    # -- streaming ---------------------------------------------------------------
    def _put(self, x):
        return jax.device_put(x, self._sharding) if self.shard else x

    @property
    def num_chunks(self) -> int:
        """Number of blocks streamed per pass (the centering sample is its own block)."""
        return self._regular_chunks() + (1 if self._extra is not None else 0)

    def _regular_chunks(self) -> int:
        return 1 if self._multi else -(-self.num_samples // self.chunk_size)

    def _host(self, x):
        """A result on the global block as a host array (gathered across processes)."""
        return to_host(x) if self._multi else np.asarray(x)

    def _part(self, start: int, part):
        """One block's contribution, ready to add: on the host in a multi-process run
        (the global block gathered, the centering block local), computed (JAX) or as
        is (NumPy) otherwise."""
        if self._multi:
            return to_host(part) if start >= 0 else jax.tree_util.tree_map(np.asarray, part)
        if self.executor == "jax":  # finish this chunk before the next is read: JAX
            return jax.block_until_ready(part)  # dispatch would hold every chunk at once
        return part

    def chunk(self, i: int) -> tuple[int, jax.Array, jax.Array]:
        """Block ``i`` as ``(start, G, w)``: on the JAX executor padded to ``chunk_size``
        with zero weights, on the NumPy executor a host view (the last one shorter)."""
        if i == self._regular_chunks() and self._extra is not None:
            return -1, self._extra[0], self._extra[1]
        c = self.chunk_size
        start = i * c
        stop = min(start + c, self.num_samples)
        if self.executor == "numpy":
            return (start, *self._source.read_host(start, stop, self.dtype))
        if self._multi:
            return 0, self._source.g, self._source.w
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

    def _pass(self):
        """The blocks of one pass; the first complete pass also runs the sample checks."""
        checking = not self._checked
        total = 0.0
        norms = self._kernel("norms")
        for start, g, w in self.chunks():
            if checking:
                sq, tr = norms(g, w)
                self._check_norms(start, self._host(sq))
                total += float(self._host(tr))
            yield start, g, w
        if checking:
            self._finish_check(total)

    def _check_norms(self, start: int, sq) -> None:
        """Raise for the first sample of a block whose ``‖G_k‖²`` is not finite."""
        if self._multi:  # each process checked its own share at construction
            sq = np.asarray(sq)[np.asarray(self._source.real_rows)]
            if np.all(np.isfinite(sq)):
                return
            raise NonFiniteError(  # pragma: no cover - finite samples with an overflow
                f"SampleTarget: ‖G‖² overflows {self.dtype.name} although the samples are "
                "finite: rescale the samples or use float64."
            )
        sq = np.asarray(sq)[: max(0, self.num_samples - start)]
        bad = np.flatnonzero(~np.isfinite(sq))
        if not bad.size:
            return
        first = start + int(bad[0])
        where = self._source.sample_index(first)
        g, _ = self._source.read_host(first, first + 1, self.dtype)
        if first_nonfinite(g) is not None:
            raise NonFiniteError(
                f"samples contain NaN or Inf: first at sample index {where} ({bad.size} "
                f"offending sample(s) in the block starting at "
                f"{self._source.sample_index(start)})."
            )
        raise NonFiniteError(
            f"SampleTarget: ‖G‖² of sample {where} overflows {self.dtype.name} although the "
            "sample is finite: rescale the samples (e.g. divide by their largest magnitude; "
            "the fits are scale-equivariant) or use float64."
        )

    def _finish_check(self, trace: float, center: bool = False) -> None:
        """``tr Σ`` is known: check its scale (overflow, underflow, zero) and keep it."""
        if np.isfinite(trace) and abs(trace) > float(np.finfo(self.dtype).max):
            trace = float("inf")  # accumulated in float64, but Σ lives at self.dtype
        nonzero = not center and trace == 0 and self._any_nonzero()
        check_target_scale(float(trace), self.dtype, nonzero, "SampleTarget")
        self._trace = jnp.asarray(trace, self.dtype)
        self._checked = True

    def _any_nonzero(self) -> bool:
        if self._multi:
            return bool(self._host(jnp.any(self._source.g != 0)))
        for start, g, w in self.chunks():
            if start >= 0 and bool(np.any(np.asarray(g) != 0) and np.any(np.asarray(w) != 0)):
                return True
        return False

    def _kernel(self, name: str):
        return getattr(_host, "h_" + name) if self.executor == "numpy" else _JAX_KERNELS[name]

    def _arg(self, x):
        """A small operand (a factor, a basis) in the executor's array type."""
        if self.executor == "numpy":
            return np.asarray(x, self.dtype)
        return jnp.asarray(x, self.dtype)

    def _out(self, x):
        return jax.tree_util.tree_map(lambda a: jnp.asarray(a, self.dtype), x)

    def _reduce(self, name, *args):
        kernel = self._kernel(name)
        args = tuple(self._arg(a) for a in args)
        total = None
        for start, g, w in self._pass():
            part = self._part(start, kernel(g, w, *args))
            total = part if total is None else jax.tree_util.tree_map(_add, total, part)
        return self._out(total)

    def _first_pass(self, center: bool) -> None:
        """One pass for ``tr Σ`` (and the weighted mean, to center), with the checks."""
        stats = self._kernel("stats")
        trace, mean = 0.0, None
        for start, g, w in self.chunks():
            sq, tr, s = stats(g, w)
            self._check_norms(start, self._host(sq))
            trace += float(self._host(tr))
            s = self._part(start, s)
            mean = s if mean is None else mean + s
        if center:
            total_w = self._source.weight_sum()
            if total_w == 0:
                raise ValueError("center=True needs weights with a non-zero sum.")
            gbar = (mean / total_w)[None]
            self._extra = (gbar, self._arg(np.asarray([-total_w])))
            trace = trace - total_w * float(np.sum(np.asarray(gbar, np.float64) ** 2))
        self._finish_check(trace, center)

    # -- primitives ----------------------------------------------------------------
    def contract_left(self, b):
        return self._reduce("contract_left", b)

    def contract_right(self, a):
        return self._reduce("contract_right", a)

    def second_moments(self):
        return self._reduce("moments")

    def left_moment(self):
        return self._reduce("left_moment")

    def right_moment(self):
        return self._reduce("right_moment")

    def _basis_args(self, qa, qb):
        if qa is None and qb is None:
            return None
        m, n = self.matrix_shape
        return (
            np.eye(m, dtype=self.dtype) if qa is None else self._arg(qa),
            np.eye(n, dtype=self.dtype) if qb is None else self._arg(qb),
        )

    def rotated_diagonal(self, qa, qb):
        return self.rotated_diagonals([(qa, qb)])[0]

    def rotated_diagonals(self, bases):
        """``diag(QᵀΣQ)`` for every ``(qa, qb)`` in ``bases`` from one pass over the samples."""
        args = [self._basis_args(qa, qb) for qa, qb in bases]
        diag, rotdiag = self._kernel("diag"), self._kernel("rotdiag")
        totals = [None] * len(args)
        for start, g, w in self._pass():
            for i, qs in enumerate(args):
                part = self._part(start, diag(g, w) if qs is None else rotdiag(g, w, *qs))
                totals[i] = part if totals[i] is None else totals[i] + part
        return [self._out(t) for t in totals]

    def trace(self):
        if self._trace is None:
            self._first_pass(center=False)
        return self._trace

    def trace_product(self, s: Structure):
        """``⟨Σ, S⟩``: for a Kronecker ``S = c·A ⊗ B`` it is ``c·⟨contract_right(A), B⟩``,
        for an eigen form ``⟨rotated_diagonal(Q), D⟩``; any other structure is applied
        to every sample."""
        if s.matrix_shape != self.matrix_shape:
            raise ValueError(
                f"structure of matrix_shape {s.matrix_shape} does not match the target's "
                f"{self.matrix_shape}"
            )
        if isinstance(s, Kronecker):
            return s.scale * jnp.vdot(self.contract_right(s.left), s.right)
        if isinstance(s, EigenKronecker):
            return jnp.vdot(self.rotated_diagonal(s.left_basis, s.right_basis), s.values)
        if isinstance(s, Diagonal):
            return jnp.vdot(self.rotated_diagonal(None, None), s.values)
        total = None
        for start, g, w in self._pass():
            part = self._part(start, _k_trace_product(jnp.asarray(g), jnp.asarray(w), s))
            total = part if total is None else total + part
        return self._out(total)

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

    def _gram_rows(self) -> int:
        """Rows of the Gram matrix: the samples (NumPy) or the padded chunks (JAX)."""
        if self.executor == "numpy":
            return self.num_samples
        return self._regular_chunks() * self.chunk_size

    def _gram_fits(self) -> bool:
        return self._gram_rows() ** 2 * self.dtype.itemsize <= _GRAM_BYTES

    def _frobenius_streamed(self):
        self.trace()  # the checks, before any block product
        frob_block = self._kernel("frob_block")
        total = 0.0
        for i in range(self.num_chunks):
            _, ga, wa = self.chunk(i)
            for j in range(i, self.num_chunks):
                _, gb, wb = (i, ga, wa) if j == i else self.chunk(j)
                total += (1.0 if i == j else 2.0) * float(frob_block(ga, wa, gb, wb))
        return jnp.sqrt(jnp.maximum(jnp.asarray(total, self.dtype), 0.0))

    def gram(self) -> Gram:
        """The weighted Gram matrix of the samples, once (cached).

        In-memory samples on the NumPy executor: one ``X Xᵀ`` (``syrk``). Otherwise block
        pairs ``i ≤ j`` (two chunks in memory at a time; on the JAX executor, padding
        rows have weight 0) fill the symmetric host array. Its diagonal
        holds every ``‖G_k‖²``, so it also runs the sample checks when no pass has yet.
        Centering is part of the weighting (``Gram``), not an extra sample.
        """
        if "gram" not in self._cache:
            if self.executor == "numpy" and self._source.in_memory:
                x, w = self._source.read_host(0, self.num_samples, self.dtype)
                k = _host.h_gram(x, x)
            else:
                k, w = self._block_gram()
            if not self._checked:
                real = self.num_samples
                diag = np.diagonal(k)[:real]
                self._check_norms(0, diag)
                self._finish_check(float(np.dot(w[:real], diag)))
            self._cache["gram"] = Gram(k, w, self._extra is not None)
        return self._cache["gram"]

    def _block_gram(self):
        """The Gram matrix and weights from block pairs ``i ≤ j`` of the regular chunks."""
        rows = self._gram_rows()
        out = np.empty((rows, rows), dtype=self.dtype)
        ws = np.zeros(rows, dtype=self.dtype)
        gram = self._kernel("gram")
        for i in range(self._regular_chunks()):
            si, ga, wa = self.chunk(i)
            ws[si : si + len(wa)] = self._host(wa)
            for j in range(i, self._regular_chunks()):
                sj, gb, _ = (si, ga, wa) if j == i else self.chunk(j)
                block = self._host(gram(ga, gb))
                out[si : si + len(ga), sj : sj + len(gb)] = block
                out[sj : sj + len(gb), si : si + len(ga)] = block.T
        return out, ws

    def _sample_space(self) -> bool:
        m, n = self.matrix_shape
        return self._gram_rows() <= m * n

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
                combine = self._kernel("combine")
                coef = self._arg(coef)
                for start, g, _ in self.chunks():
                    if start < 0:
                        continue
                    part = self._part(start, combine(g, coef[start : start + g.shape[0]]))
                    vecs = part if vecs is None else vecs + part
                vecs = self._out(vecs)
            return Spectrum(jnp.asarray(mu, self.dtype), vecs, d)
        cov = self._reduce("cov")
        vals, vecs = jnp.linalg.eigh(0.5 * (cov + cov.T))
        vecs = vecs.T.reshape(d, m, n) if vectors else None
        vals, vecs = _truncate_rank(vals, vecs, d, self.dtype, d)
        return Spectrum(vals, vecs, d)

    def _apply_matrices(self, x):  # Σ vec(X) = Σ_k w_k G_k ⟨G_k, X⟩, one streamed pass
        return self._reduce("apply", x)

    def to_dense(self):
        return self._reduce("cov")


# --------------------------------------------------------------------------------------
# Sample sources: where chunks are read from.
# --------------------------------------------------------------------------------------


class _Source:
    """What both sample sources share: their weights as a host array (cached)."""

    weights: jax.Array
    _host_w: np.ndarray | None = None

    def host_weights(self, dtype):
        if self._host_w is None or self._host_w.dtype != dtype:
            self._host_w = np.asarray(self.weights, dtype)
        return self._host_w


class _ArraySource(_Source):
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
        # (the device copy of host samples is made only when the JAX executor asks)
        self.host = samples if isinstance(samples, np.ndarray) else None
        self._device = None if self.host is not None else jnp.asarray(samples)
        self.dtype = np.dtype(jax.dtypes.canonicalize_dtype(dt))
        self.shape = (int(m), int(n))
        self.num_samples = int(n_samples)
        self.weights = check_weights(weights, self.num_samples, self.dtype)

    @property
    def samples(self) -> jax.Array:
        """The samples as a JAX array (for host input: one device copy, made on first use)."""
        if self._device is None:
            self._device = jax.device_put(self.host.astype(self.dtype, copy=False))
        return self._device

    def read_host(self, start, stop, dtype):
        """Samples ``[start, stop)`` and their weights as host arrays (views when possible)."""
        if self.host is None:  # a JAX array: its host copy (zero-copy on the CPU backend)
            self.host = np.asarray(self.samples)
        if self.host.dtype != dtype:
            self.host = self.host.astype(dtype)
        return self.host[start:stop], self.host_weights(dtype)[start:stop]

    def read(self, start, stop):
        if start == 0 and stop == self.num_samples:  # one chunk: no copy
            return self.samples, self.weights
        return self.samples[start:stop], self.weights[start:stop]

    def read_padded(self, start, stop, size):
        """Samples ``[start, stop)`` zero-padded to ``size`` rows, from the host array."""
        if start == 0 and stop == size == self.num_samples:
            return self.samples, self.weights
        host_w = self.host_weights(self.dtype)
        if stop - start == size:  # a full chunk: one copy, straight from the view
            g = self.host[start:stop].astype(self.dtype, copy=False)
            return jax.device_put(g), jax.device_put(host_w[start:stop])
        g = np.zeros((size, *self.shape), self.dtype)
        g[: stop - start] = self.host[start:stop]
        w = np.zeros(size, self.dtype)
        w[: stop - start] = host_w[start:stop]
        return jax.device_put(g), jax.device_put(w)

    def sample_index(self, i):
        return i

    def weight_sum(self):
        return float(jnp.sum(self.weights))


class _DataArraySource(_Source):
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

    def read_host(self, start, stop, dtype):
        """Samples ``[start, stop)`` (of the flattened ``N·K`` bag) and their weights, read
        from the DataArray into host memory."""
        e0, e1 = start // self.inner, -(-stop // self.inner)
        block = np.asarray(self.da.isel(sample=slice(e0, e1)).values, dtype)
        block = block.reshape(-1, *self.shape)
        off = start - e0 * self.inner
        return block[off : off + stop - start], self.host_weights(dtype)[start:stop]

    def read(self, start, stop):
        g, _ = self.read_host(start, stop, self.dtype)
        return jnp.asarray(g), self.weights[start:stop]

    def sample_index(self, i):
        return i // self.inner if self.inner == 1 else (i // self.inner, i % self.inner)

    def weight_sum(self):
        return float(jnp.sum(self.weights))


class _ProcessShareSource:
    """This process's share of the samples in a multi-process run, as global arrays.

    Every share is padded to one length (zero weight) and the global ``(rows, m, n)``
    array is sharded over all devices of all processes (``global_samples``).
    """

    in_memory = True
    host = None

    def __init__(self, samples, weights, validate: bool):
        samples = np.asarray(samples)
        examples = int(samples.shape[0]) if samples.ndim else 0
        counts = allgather_counts(examples)
        pid = jax.process_index()
        if weights is None:  # 1/N for the global N
            weights = np.full(examples, 1.0 / max(int(counts.sum()), 1))
        local = _ArraySource(samples, weights)
        inner = local.num_samples // max(examples, 1)
        offset = int(counts[:pid].sum()) * inner
        if validate:  # every process learns of a bad sample anywhere, and all raise alike
            found = first_nonfinite(local.read_host(0, local.num_samples, local.dtype)[0])
            firsts = allgather_counts(-1 if found is None else found[0] + offset)
            if np.any(firsts >= 0):
                where = int(firsts[firsts >= 0].min())
                holder = int(np.flatnonzero(firsts == where)[0])
                raise NonFiniteError(
                    f"samples contain NaN or Inf: first at sample index {where} (global "
                    f"index; in process {holder}'s share)."
                )
        self.shape, self.dtype = local.shape, local.dtype
        g, w = local.read_host(0, local.num_samples, local.dtype)
        (self.g, self.w), starts = global_samples((g, w), local.num_samples)
        self.rows = int(self.g.shape[0])
        self.real_rows = np.concatenate(
            [np.arange(s, s + int(c) * inner) for s, c in zip(starts, counts, strict=True)]
        )
        self.num_samples = int(counts.sum()) * inner
        self._total_w = float(to_host(jnp.sum(self.w)))

    def sample_index(self, i):
        return i

    def weight_sum(self):
        return self._total_w


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
