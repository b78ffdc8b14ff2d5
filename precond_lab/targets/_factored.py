"""Targets whose samples are given by factors: ``G_k = Σ_t u_kt v_ktᵀ`` (``T`` terms).

A dense layer's per-example gradient is rank one, ``G = δ aᵀ`` (``T = 1``); so is each
exact Gauss–Newton pseudo-gradient per (example, class); with weight sharing over ``T``
positions it is a sum of ``T`` rank-one terms. Writing ``U_k`` (``T × m``) and ``V_k``
(``T × n``) for the factors, ``G_k = U_kᵀ V_k`` and every primitive has a form that never
builds ``G``:

* ``G B Gᵀ = U_kᵀ (V_k B V_kᵀ) U_k`` — contractions and moments cost
  ``T(m² + n²) + T²(m + n)`` per sample instead of ``mn(m + n)``;
* ``(QaᵀGQb)_ij = Σ_t (U_k Qa)_ti (V_k Qb)_tj`` — the rotated diagonal costs
  ``T(m² + n²) + T²·mn``;
* ``⟨G_k, G_l⟩ = Σ_ts (U_k U_lᵀ)_ts (V_k V_lᵀ)_ts`` — the Gram matrix costs
  ``T²(m + n)`` per pair instead of ``mn``.

A cost model (``plan``) compares each factored form with rebuilding ``G`` chunk by
chunk and running the dense kernel, and picks the cheaper; the choice is recorded in
``FactoredTarget.plan``. All passes run as one jitted ``lax.scan`` over chunks of the
(zero-weight padded, bucketed) sample axis, so a new ``N`` in the same bucket does not
recompile.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from .._validation import NonFiniteError, check_float_dtype, check_target_scale
from ..structures import Kronecker, Structure
from ._base import Spectrum, Target, _truncate_rank, bucket, check_weights
from ._distributed import allgather_counts, global_samples, to_host
from ._gram import Gram
from ._host import h_gram, host_blas
from ._kernels import (
    _k_combine,
    _k_cov,
    _k_diag,
    _k_gram,
    _k_left,
    _k_left_moment,
    _k_right,
    _k_right_moment,
    _k_rotdiag,
    _k_trace_product,
)

__all__ = ["FactoredTarget", "plan", "PRIMITIVES"]

_CHUNK_BYTES = 1 << 27  # temporaries per chunk
_GRAM_BYTES = 1 << 31  # keep the Gram matrix in memory up to 2 GiB

#: The primitives with a factored and a dense form.
PRIMITIVES = (
    "contract",
    "moments",
    "rotated_diagonal",
    "trace_product",
    "trace",
    "gram",
    "eigenvectors",
)


def _costs(terms: int, m: int, n: int, rank: int) -> dict[str, tuple[float, float]]:
    """``(factored, dense)`` flops per sample (per pair of samples for the Gram)."""
    t = float(terms)
    mn = float(m) * n
    side = float(m) * m + float(n) * n
    build = t * mn  # rebuilding G from its factors
    return {
        "contract": (t * side + t * t * (m + n), build + mn * (m + n)),
        "moments": (t * side + 2 * t * t * (m + n), build + mn * (m + n)),
        "rotated_diagonal": (t * side + t * t * (mn + m + n), build + mn * (m + n + 1)),
        "trace_product": (t * side + 2 * t * t * (m + n), build + mn * (m + n)),
        "trace": (t * t * (m + n + 1), build + mn),
        # the dense form rebuilds each block of G for every block pair and multiplies
        # blocks (no syrk off the diagonal): measured ≈ 2 mn per pair (512², N=1024, T=16:
        # factored 3.2 s, dense form 5.2 s, where mn alone priced the dense form cheaper)
        "gram": (t * t * (m + n + 1), 2 * mn),
        "eigenvectors": (rank * t * mn, build + rank * mn),
    }


def plan(terms: int, m: int, n: int, rank: int = 1, mode: str = "auto") -> dict[str, str]:
    """``{primitive: "factored" | "dense"}``: the cheaper form of each primitive.

    ``mode="factored"`` or ``"dense"`` forces one form everywhere (for tests and
    benchmarks).
    """
    if mode not in ("auto", "factored", "dense"):
        raise ValueError(f"mode must be 'auto', 'factored' or 'dense'; got {mode!r}")
    if mode != "auto":
        return dict.fromkeys(PRIMITIVES, mode)
    return {
        name: "factored" if fac <= dense else "dense"
        for name, (fac, dense) in _costs(terms, m, n, rank).items()
    }


# --------------------------------------------------------------------------------------
# Factored per-chunk kernels. u: (c, T, m), v: (c, T, n), w: (c,).
# --------------------------------------------------------------------------------------


def _build(u, v):
    return jnp.einsum("ktm,ktn->kmn", u, v)


def _f_contract(u, v, w, b):
    """``Σ_k w_k U_kᵀ (V_k B V_kᵀ) U_k`` (m×m, ``u`` on the result's side)."""
    mid = jnp.einsum("ktl,ksl->kts", jnp.einsum("ktn,nl->ktl", v, b), v) * w[:, None, None]
    y = jnp.einsum("kts,ksm->ktm", mid, u)
    return jnp.einsum("kti,ktj->ij", u, y)


def _f_moment(u, v, w):
    mid = jnp.einsum("ktn,ksn->kts", v, v) * w[:, None, None]
    return jnp.einsum("kti,ktj->ij", u, jnp.einsum("kts,ksm->ktm", mid, u))


def _f_moments(u, v, w):
    return _f_moment(u, v, w), _f_moment(v, u, w)


def _f_rotdiag(u, v, w, qa, qb):
    return _f_diag(jnp.einsum("ktm,mi->kti", u, qa), jnp.einsum("ktn,nj->ktj", v, qb), w)


def _f_diag(u, v, w):
    if u.shape[1] == 1:  # T = 1: diag = Σ w u² ⊗ v²
        return jnp.einsum("ki,kj->ij", u[:, 0] ** 2, v[:, 0] ** 2 * w[:, None])
    x = u[:, :, None, :] * u[:, None, :, :]
    y = v[:, :, None, :] * v[:, None, :, :] * w[:, None, None, None]
    return jnp.einsum("ktsi,ktsj->ij", x, y)


def _f_trace_kron(u, v, w, s):
    p = jnp.einsum("ktm,ksm->kts", jnp.einsum("ktm,mi->kti", u, s.left), u)
    q = jnp.einsum("ktn,ksn->kts", jnp.einsum("ktn,nj->ktj", v, s.right), v)
    return s.scale * jnp.einsum("k,kts,kts->", w, p, q)


def _f_trace(u, v, w):
    return jnp.einsum(
        "k,kts,kts->", w, jnp.einsum("ktm,ksm->kts", u, u), jnp.einsum("ktn,ksn->kts", v, v)
    )


def _f_gram(ua, va, ub, vb):
    if ua.shape[1] == 1:
        return (ua[:, 0] @ ub[:, 0].T) * (va[:, 0] @ vb[:, 0].T)
    gu = jnp.einsum("ktm,lsm->ktls", ua, ub)
    return jnp.einsum("ktls,ktls->kl", gu, jnp.einsum("ktn,lsn->ktls", va, vb))


def _f_combine(u, v, coef):
    return jnp.einsum("rktm,ktn->rmn", jnp.einsum("kr,ktm->rktm", coef, u), v)


# Dense forms: rebuild G, then the SampleTarget kernels.
def _d_contract_left(u, v, w, b):
    return _k_left(_build(u, v), w, b)


def _d_contract_right(u, v, w, a):
    return _k_right(_build(u, v), w, a)


def _d_moments(u, v, w):
    g = _build(u, v)
    return _k_left_moment(g, w), _k_right_moment(g, w)


def _d_rotdiag(u, v, w, qa, qb):
    return _k_rotdiag(_build(u, v), w, qa, qb)


def _d_diag(u, v, w):
    return _k_diag(_build(u, v), w)


def _d_rotdiags(u, v, w, qas, qbs):
    """``_d_rotdiag`` for a stack of bases, rebuilding ``G`` once (bases in sequence:
    one rotated copy of the chunk at a time)."""
    g = _build(u, v)
    return jax.lax.map(lambda q: _k_rotdiag(g, w, *q), (qas, qbs))


def _d_trace_product(u, v, w, s):
    return _k_trace_product(_build(u, v), w, s)


def _d_trace(u, v, w):
    g = _build(u, v)
    return jnp.einsum("k,kij,kij->", w, g, g)


def _d_gram(ua, va, ub, vb):
    return _k_gram(_build(ua, va), _build(ub, vb))


def _d_combine(u, v, coef):
    return _k_combine(_build(u, v), coef)


def _d_cov(u, v, w):
    return _k_cov(_build(u, v), w)


def _d_mean(u, v, w):
    return jnp.einsum("k,kmn->mn", w, _build(u, v))


@functools.partial(jax.jit, static_argnames=("kernel", "chunks"))
def _scan(kernel, chunks, u, v, w, *args):
    """``Σ_chunks kernel(u_c, v_c, w_c, *args)`` as one ``lax.scan`` over the sample axis
    (reshapes, no copies); ``w`` may carry trailing axes (eigenvector coefficients)."""
    if chunks == 1:
        return kernel(u, v, w, *args)
    c = u.shape[0] // chunks
    xs = tuple(x.reshape(chunks, c, *x.shape[1:]) for x in (u, v, w))
    init = jax.tree_util.tree_map(
        lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(kernel, *(x[0] for x in xs), *args)
    )

    def body(acc, x):
        return jax.tree_util.tree_map(jnp.add, acc, kernel(*x, *args)), None

    return jax.lax.scan(body, init, xs)[0]


_gram_block = jax.jit(_f_gram)
_gram_block_dense = jax.jit(_d_gram)


def _largest_divisor(count: int, limit: int) -> int:
    """The largest divisor of ``count`` that is at most ``max(1, limit)``."""
    limit = max(1, min(count, limit))
    for d in range(limit, 0, -1):
        if count % d == 0:
            return d
    return 1  # pragma: no cover


def _padded(x, count: int, dtype) -> np.ndarray:
    out = np.zeros((count, *x.shape[1:]), dtype)
    out[: x.shape[0]] = np.asarray(x)
    return out


def _as_factors(x, name: str) -> np.ndarray:
    x = np.asarray(getattr(x, "values", x)) if not isinstance(x, jax.Array) else x
    check_float_dtype(x.dtype, name)
    if x.ndim == 2:  # (N, m): T = 1
        x = x[:, None, :]
    if x.ndim not in (3, 4):
        raise ValueError(
            f"{name} factors must have shape (N, m), (N, T, m) or (N, K, T, m); got "
            f"{x.ndim}-d array of shape {tuple(x.shape)}"
        )
    return x


class FactoredTarget(Target):
    """``Σ = Σ_k w_k vec(G_k) vec(G_k)ᵀ`` with ``G_k = Σ_t left[k, t] right[k, t]ᵀ``.

    Args:
        left: ``(N, T, m)`` left factors (e.g. a dense layer's back-propagated ``δ``),
            ``(N, m)`` for ``T = 1``, or ``(N, K, T, m)`` with a class / Monte-Carlo axis
            ``K``: a bag of ``N·K`` samples, each inheriting its example's weight.
        right: ``(N, T, n)`` right factors (the layer's inputs ``a``), shaped like ``left``.
        weights: ``(N,)`` per-example weights, default ``1/N``; negative weights allowed.
        center: subtract the weighted mean ``ḡ = Σ w_k G_k / Σ w_k`` (a dense ``m × n``
            term applied as a correction; in the Gram matrix, part of the weighting).
        mode: ``"auto"`` (the cost model's choice per primitive), ``"factored"`` or
            ``"dense"`` (rebuild ``G`` chunk by chunk) everywhere.
        validate: check the factors and weights once, at construction, as
            ``SampleTarget`` does: NaN/Inf (naming the first bad sample), a sample whose
            ``‖G_k‖²`` overflows the dtype although its factors are finite, and ``tr Σ``
            for overflow, underflow and an all-zero target (a dead layer) — with the same
            error classes and messages. One ``T²(m + n)`` product per sample.
        process_local: the factors (and weights) are this process's share of the
            samples, in a multi-process run (``jax.distributed.initialize`` first): the
            samples axis is sharded over every device of every process and each result
            is the global one, on every process. Default weights are ``1/N`` for the
            global ``N``; a NaN is reported by the process that holds it.

    Attributes:
        plan: ``{primitive: "factored" | "dense"}`` chosen by the cost model.
        terms: ``T``; ``num_samples``: ``N·K``.
    """

    def __init__(
        self,
        left,
        right,
        weights=None,
        *,
        center: bool = False,
        mode: str = "auto",
        validate: bool = True,
        process_local: bool = False,
    ):
        if not isinstance(center, (bool, np.bool_)):
            raise TypeError(f"center must be True or False; got {center!r}")
        u, v = _as_factors(left, "left"), _as_factors(right, "right")
        if u.shape[:-1] != v.shape[:-1]:
            raise ValueError(
                f"left and right factors must agree on every axis but the last; got "
                f"{tuple(u.shape)} and {tuple(v.shape)}"
            )
        examples = int(u.shape[0])
        if examples == 0:
            raise ValueError("factors are empty (N = 0): at least one sample is needed.")
        dtype = np.dtype(jnp.result_type(u.dtype, v.dtype))
        self._multi = bool(process_local)
        total_examples = int(allgather_counts(examples).sum()) if self._multi else examples
        w = (
            np.full(examples, 1.0 / total_examples, dtype)
            if weights is None
            else np.asarray(check_weights(weights, examples, dtype))
        )
        self.inner = int(u.shape[1]) if u.ndim == 4 else 1
        if u.ndim == 4:  # (N, K, T, ·): K pseudo-samples per example share its weight
            u, v = u.reshape(-1, *u.shape[2:]), v.reshape(-1, *v.shape[2:])
            w = np.repeat(w, self.inner)
        self.num_samples, self.terms, m = (int(s) for s in u.shape)
        n = int(v.shape[-1])
        if self.terms == 0:
            raise ValueError(
                f"factors have T = 0 terms (left {tuple(u.shape)}): each sample G_k = "
                "Σ_t u_kt v_ktᵀ needs at least one term; a (N, m) and (N, n) pair is T = 1."
            )
        if m == 0 or n == 0:
            raise ValueError(f"factors give an empty matrix shape {(m, n)}")
        self.matrix_shape = (m, n)
        self.dtype = dtype
        if validate:
            self._validate(u, v)
        u, v, w = (np.asarray(x, dtype) for x in (u, v, w))
        if self._multi:  # every process's share, padded alike, sharded over all devices
            (self.u, self.v, self.w), _ = global_samples((u, v, w), self.num_samples)
            self.num_samples = int(allgather_counts(self.num_samples).sum())
            self._host_w = to_host(self.w)
        else:  # zero-weight padding to a bucketed count, on the host (no per-N compilation)
            padded = bucket(self.num_samples)
            self.u, self.v, self.w = (jnp.asarray(_padded(x, padded, dtype)) for x in (u, v, w))
            self._host_w = _padded(w, padded, dtype)
        self.plan = plan(self.terms, m, n, rank=min(self.padded, m * n), mode=mode)
        self.mode = mode
        self._cache: dict = {}
        self._mean = None
        if center:
            total = float(np.sum(self._host_w, dtype=np.float64))
            if total == 0:
                raise ValueError("center=True needs weights with a non-zero sum.")
            mean = self._scan(_d_mean, self._chunks("dense"), self.u, self.v, self.w)
            self._mean = (mean / total, total)
        if validate:
            self._check_scale(u, v, w)

    def _apply_matrices(self, x):  # Σ vec(X) = Σ_k w_k G_k ⟨G_k, X⟩, G_k = Σ_t u_kt v_ktᵀ
        x = jnp.asarray(x, self.dtype)
        coef = jnp.einsum("ktm,...mn,ktn->k...", self.u, x, self.v)
        coef = coef * self.w.reshape(-1, *(1,) * (x.ndim - 2))
        out = jnp.einsum("k...,ktm,ktn->...mn", coef, self.u, self.v)
        if self._mean is not None:  # centered: minus (Σ_k w_k) μ ⟨μ, X⟩
            mean, total = self._mean
            out = out - total * jnp.einsum("mn,...mn->...", mean, x)[..., None, None] * mean
        return out

    # -- plumbing ------------------------------------------------------------------
    @property
    def padded(self) -> int:
        """Samples including the zero-weight padding (a bucketed count)."""
        return int(self.u.shape[0])

    def _validate(self, u, v) -> None:
        for name, x in (("left", u), ("right", v)):
            bad = np.flatnonzero(~np.all(np.isfinite(np.asarray(x)), axis=(1, 2)))
            if bad.size:
                raise NonFiniteError(
                    f"{name} factors contain NaN or Inf: first at sample index "
                    f"{self._index(int(bad[0]))} ({bad.size} offending sample(s))."
                )

    def _check_scale(self, u, v, w) -> None:
        """``‖G_k‖²`` finite for every sample and ``tr Σ`` neither overflowing, underflowing
        nor zero (``check_target_scale``, as ``SampleTarget``'s first pass)."""
        u, v = np.asarray(u, self.dtype), np.asarray(v, self.dtype)
        with np.errstate(over="ignore", invalid="ignore", under="ignore"):
            if self.terms == 1:
                sq = np.sum(u[:, 0] * u[:, 0], axis=1) * np.sum(v[:, 0] * v[:, 0], axis=1)
            else:
                sq = np.einsum("kts,kts->k", u @ u.transpose(0, 2, 1), v @ v.transpose(0, 2, 1))
        bad = np.flatnonzero(~np.isfinite(sq))
        if bad.size:
            raise NonFiniteError(
                f"FactoredTarget: ‖G‖² of sample {self._index(int(bad[0]))} overflows "
                f"{self.dtype.name} although its factors are finite ({bad.size} such "
                "sample(s)): rescale the factors (e.g. divide each by its largest magnitude; "
                "the fits are scale-equivariant) or use float64."
            )
        trace = float(self.trace())  # at the target's dtype, cached: what every metric uses
        nonzero = False
        if self._mean is None and trace == 0:
            live = np.any(u != 0, axis=(1, 2)) & np.any(v != 0, axis=(1, 2)) & (w != 0)
            nonzero = bool(np.any(live))
        check_target_scale(trace, self.dtype, nonzero, "FactoredTarget")

    def _index(self, i: int):
        return i if self.inner == 1 else (i // self.inner, i % self.inner)

    def _per_sample_bytes(self, form: str, primitive: str = "") -> int:
        """Bytes of temporaries per sample: a rebuilt ``G`` (dense), the ``T²`` products
        of the factored rotated diagonal, or the ``T × T`` middles of the others."""
        m, n = self.matrix_shape
        t = self.terms
        if form == "dense":
            size = m * n
        elif primitive == "rotated_diagonal":
            size = t * t * (m + n) + t * (m + n)
        else:
            size = t * (m + n) + t * t
        return 3 * size * self.dtype.itemsize

    def _chunks(self, form: str, primitive: str = "") -> int:
        per = self._per_sample_bytes(form, primitive)
        return self.padded // _largest_divisor(self.padded, _CHUNK_BYTES // per)

    def _pass(self, primitive: str, kernel, *args):
        chunks = self._chunks(self.plan[primitive], primitive)
        return self._scan(kernel, chunks, self.u, self.v, self.w, *args)

    def _put(self, x):
        """Per-sample rows (``(padded, ...)``) laid out like the samples."""
        if not self._multi:
            return x
        return jax.device_put(np.asarray(x), self.w.sharding)

    def _scan(self, kernel, chunks, *arrays):
        """``_scan``; across processes in one piece, the result brought to the host."""
        if not self._multi:
            return _scan(kernel, chunks, *arrays)
        return jax.tree_util.tree_map(jnp.asarray, to_host(_scan(kernel, 1, *arrays)))

    def _form(self, primitive: str) -> str:
        return self.plan[primitive]

    def _mean_term(self, fn):
        """``−W·fn(ḡ)`` for the centering correction (0 without centering)."""
        if self._mean is None:
            return None
        mean, total = self._mean
        return fn(mean[None], jnp.asarray([-total], self.dtype))

    def _corrected(self, value, fn):
        corr = self._mean_term(fn)
        return value if corr is None else jax.tree_util.tree_map(jnp.add, value, corr)

    # -- primitives ----------------------------------------------------------------
    def contract_left(self, b):
        b = jnp.asarray(b, self.dtype)
        if self._form("contract") == "factored":
            out = self._scan(_f_contract, self._chunks("factored"), self.u, self.v, self.w, b)
        else:
            out = self._pass("contract", _d_contract_left, b)
        return self._corrected(out, lambda g, w: _k_left(g, w, b))

    def contract_right(self, a):
        a = jnp.asarray(a, self.dtype)
        if self._form("contract") == "factored":
            out = self._scan(_f_contract, self._chunks("factored"), self.v, self.u, self.w, a)
        else:
            out = self._pass("contract", _d_contract_right, a)
        return self._corrected(out, lambda g, w: _k_right(g, w, a))

    def second_moments(self):
        kernel = _f_moments if self._form("moments") == "factored" else _d_moments
        out = self._pass("moments", kernel)
        return self._corrected(out, lambda g, w: (_k_left_moment(g, w), _k_right_moment(g, w)))

    def left_moment(self):
        if self._form("moments") == "factored":
            out = self._scan(_f_moment, self._chunks("factored"), self.u, self.v, self.w)
            return self._corrected(out, _k_left_moment)
        return self.second_moments()[0]

    def right_moment(self):
        if self._form("moments") == "factored":
            out = self._scan(_f_moment, self._chunks("factored"), self.v, self.u, self.w)
            return self._corrected(out, _k_right_moment)
        return self.second_moments()[1]

    def rotated_diagonal(self, qa, qb):
        factored = self._form("rotated_diagonal") == "factored"
        if qa is None and qb is None:
            out = self._pass("rotated_diagonal", _f_diag if factored else _d_diag)
            return self._corrected(out, _k_diag)
        m, n = self.matrix_shape
        qa = jnp.eye(m, dtype=self.dtype) if qa is None else jnp.asarray(qa, self.dtype)
        qb = jnp.eye(n, dtype=self.dtype) if qb is None else jnp.asarray(qb, self.dtype)
        out = self._pass("rotated_diagonal", _f_rotdiag if factored else _d_rotdiag, qa, qb)
        return self._corrected(out, lambda g, w: _k_rotdiag(g, w, qa, qb))

    def rotated_diagonals(self, bases):
        """``rotated_diagonal`` for several bases; where the plan rebuilds ``G``, one pass
        rebuilds each chunk once for all of them."""
        bases = list(bases)
        if self._form("rotated_diagonal") == "factored" or len(bases) < 2:
            return super().rotated_diagonals(bases)
        m, n = self.matrix_shape
        eye_m, eye_n = jnp.eye(m, dtype=self.dtype), jnp.eye(n, dtype=self.dtype)
        qas = jnp.stack([eye_m if qa is None else jnp.asarray(qa, self.dtype) for qa, _ in bases])
        qbs = jnp.stack([eye_n if qb is None else jnp.asarray(qb, self.dtype) for _, qb in bases])
        out = self._pass("rotated_diagonal", _d_rotdiags, qas, qbs)
        out = self._corrected(
            out, lambda g, w: jax.lax.map(lambda q: _k_rotdiag(g, w, *q), (qas, qbs))
        )
        return [out[i] for i in range(len(bases))]

    def trace(self):
        if "trace" not in self._cache:
            kernel = _f_trace if self._form("trace") == "factored" else _d_trace
            out = self._pass("trace", kernel)
            self._cache["trace"] = self._corrected(out, lambda g, w: jnp.sum(w[0] * g * g))
        return self._cache["trace"]

    def trace_product(self, s: Structure):
        if s.matrix_shape != self.matrix_shape:
            raise ValueError(
                f"structure of matrix_shape {s.matrix_shape} does not match the target's "
                f"{self.matrix_shape}"
            )
        if isinstance(s, Kronecker) and self._form("trace_product") == "factored":
            out = self._pass("trace_product", _f_trace_kron, s)
        elif not isinstance(s, Kronecker) and self._form("rotated_diagonal") == "factored":
            e = s.eigen()  # tr(SΣ) = Σ D ∘ diag(QᵀΣQ): the factored rotated diagonal
            qa, qb = (None, None) if not hasattr(e, "left_basis") else (e.left_basis, e.right_basis)
            return jnp.sum(e.values * self.rotated_diagonal(qa, qb))
        else:
            out = self._pass("trace_product", _d_trace_product, s)
        return self._corrected(out, lambda g, w: _k_trace_product(g, w, s))

    # -- Gram, norm, spectrum --------------------------------------------------------
    def _gram_blocks(self):
        """Yield ``(i, j, K_ij)`` for square blocks ``i ≤ j`` of the Gram matrix."""
        factored = self._form("gram") == "factored"
        per = self.terms**2 * self.dtype.itemsize * 2 if factored else 1
        size = _largest_divisor(self.padded, int(np.sqrt(_CHUNK_BYTES / per)))
        if not factored:  # two rebuilt blocks of G in memory
            m, n = self.matrix_shape
            size = _largest_divisor(self.padded, _CHUNK_BYTES // (2 * m * n * self.dtype.itemsize))
        if not factored and not self._multi and host_blas():
            m, n = self.matrix_shape  # blocks of one chunk of G: fewer, larger products
            big = _largest_divisor(self.padded, _CHUNK_BYTES // (m * n * self.dtype.itemsize))
            yield from self._host_dense_gram_blocks(big)
            return
        kernel = _gram_block if factored else _gram_block_dense
        if self._multi:  # one block across processes, brought to every host
            yield 0, 0, to_host(kernel(self.u, self.v, self.u, self.v))
            return
        blocks = self.padded // size
        for i in range(blocks):
            ua, va = self.u[i * size : (i + 1) * size], self.v[i * size : (i + 1) * size]
            for j in range(i, blocks):
                ub, vb = self.u[j * size : (j + 1) * size], self.v[j * size : (j + 1) * size]
                yield i * size, j * size, np.asarray(kernel(ua, va, ub, vb))

    def _host_dense_gram_blocks(self, size: int):
        """The dense-form Gram blocks on JAX's CPU backend: each block of ``G`` rebuilt by
        one batched BLAS product ``(c, m, T)(c, T, n)`` and multiplied by NumPy's BLAS
        (``syrk`` on the diagonal), which runs this long contraction far faster than XLA."""
        u, v = np.asarray(self.u), np.asarray(self.v)

        def build(i):
            return np.matmul(u[i : i + size].transpose(0, 2, 1), v[i : i + size])

        for i in range(0, self.padded, size):
            ga = build(i)
            for j in range(i, self.padded, size):
                yield i, j, h_gram(ga, ga if j == i else build(j))

    def _gram_fits(self) -> bool:
        return self.padded**2 * self.dtype.itemsize <= _GRAM_BYTES

    def gram(self) -> Gram:
        """The weighted Gram matrix of the samples (padding included), computed once."""
        if "gram" not in self._cache:
            out = np.empty((self.padded, self.padded), dtype=self.dtype)
            for i, j, block in self._gram_blocks():
                c = block.shape[0]
                out[i : i + c, j : j + c] = block
                if i != j:
                    out[j : j + c, i : i + c] = block.T
            self._cache["gram"] = Gram(out, self._host_w, self._mean is not None)
        return self._cache["gram"]

    def frobenius_norm(self):
        """``‖Σ‖_F`` from the cached Gram matrix (or streamed over its blocks when it
        does not fit in memory)."""
        if "frobenius" not in self._cache:
            if self._gram_fits():
                sq = self.gram().frobenius_sq()
            else:
                sq = self._frobenius_sq_streamed()
            self._cache["frobenius"] = jnp.asarray(np.sqrt(max(sq, 0.0)), self.dtype)
        return self._cache["frobenius"]

    def _frobenius_sq_streamed(self) -> float:
        w = np.asarray(self._host_w, np.float64)
        sq, a = 0.0, np.zeros_like(w)
        for i, j, block in self._gram_blocks():
            c = block.shape[0]
            k = block.astype(np.float64)
            wi, wj = w[i : i + c], w[j : j + c]
            sq += (1.0 if i == j else 2.0) * float(wi @ (k * k) @ wj)
            a[i : i + c] += k @ wj
            if i != j:
                a[j : j + c] += k.T @ wi
        if self._mean is not None:
            total = self._mean[1]
            sq += -2.0 * float(np.dot(w * a, a)) / total + (float(w @ a) / total) ** 2
        return sq

    def _sample_space(self) -> bool:
        return self.padded <= self.dim

    def eigh(self, vectors: bool = False) -> Spectrum:
        """Non-zero eigenpairs (cached; eigenvalues only unless ``vectors``)."""
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
                vecs = self._combine(jnp.asarray(coef, self.dtype))
            return Spectrum(jnp.asarray(mu, self.dtype), vecs, d)
        cov = self.to_dense()
        vals, vecs = jnp.linalg.eigh(0.5 * (cov + cov.T))
        vecs = vecs.T.reshape(d, m, n) if vectors else None
        vals, vecs = _truncate_rank(vals, vecs, d, self.dtype, d)
        return Spectrum(vals, vecs, d)

    def _combine(self, coef):
        """``Σ_k coef_kr G_k`` (``(r, m, n)``), scanned over chunks of samples."""
        m, n = self.matrix_shape
        factored = self._form("eigenvectors") == "factored"
        per = coef.shape[1] * (self.terms * max(m, n) if factored else 1) + m * n
        chunk = _largest_divisor(self.padded, _CHUNK_BYTES // (2 * per * self.dtype.itemsize))
        kernel = _f_combine if factored else _d_combine
        return self._scan(kernel, self.padded // chunk, self.u, self.v, self._put(coef))

    def to_dense(self):
        cov = self._scan(_d_cov, self._chunks("dense"), self.u, self.v, self.w)
        return self._corrected(cov, _k_cov)
