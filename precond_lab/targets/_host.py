"""Per-chunk kernels on host (NumPy) samples ``G: (c, m, n)`` with weights ``w: (c,)``.

The twins of ``._kernels`` for samples that live in host memory on JAX's CPU backend.
There XLA's CPU matmuls (Eigen) run long contractions 1.3–1.7× slower than the BLAS that
NumPy and SciPy link (the Gram ``X Xᵀ`` of 1024 samples of 256² ran 0.77 s against
0.44 s), so each kernel is a few large BLAS calls on zero-copy views of the chunk:

* sums ``Σ_k w_k X_k Y_kᵀ`` (m × m) take one row-stacked copy per 8 MiB sub-block and one
  ``(m, B·n)(B·n, m)`` product (``syrk`` when ``X = Y`` and the weights are equal);
* sums ``Σ_k w_k X_kᵀ Y_k`` (n × n) are one ``(c·m, n)ᵀ (c·m, n)`` product (``syrk`` when
  ``X = Y`` and the weights are equal);
* right multiplications are one tall ``(c·m, n) × (n, n)`` product;
* validation is a dot product per sample (NaN/Inf propagate into it), folded into the
  first pass a target makes.

Every kernel returns a host array; ``SampleTarget`` converts at its boundary.
"""

from __future__ import annotations

import jax
import numpy as np

__all__ = [
    "host_blas",
    "h_norms",
    "h_stats",
    "h_combine",
    "h_contract_left",
    "h_contract_right",
    "h_cov",
    "h_diag",
    "h_frob_block",
    "h_gram",
    "h_left_moment",
    "h_moments",
    "h_right_moment",
    "h_rotdiag",
    "h_apply",
]


def host_blas() -> bool:
    """True on JAX's CPU backend, where these kernels beat XLA's long contractions."""
    return all(d.platform == "cpu" for d in jax.local_devices())


def _uniform(w) -> float | None:
    """The common weight of a chunk, or None when the weights differ."""
    return float(w[0]) if w.size and np.all(w == w[0]) else None


_BLOCK_BYTES = 1 << 23  # sub-blocks of 8 MiB: a few large BLAS calls per chunk


def _block(x) -> int:
    """Samples per sub-block: about ``_BLOCK_BYTES`` of them, at least one."""
    return max(1, _BLOCK_BYTES // (x.shape[1] * x.shape[2] * x.itemsize))


def _by_blocks(fn, g, w, *args):
    """``Σ fn(g_b, w_b, *args)`` over sub-blocks: temporaries stay sub-block sized."""
    step = _block(g)
    if g.shape[0] <= step:
        return fn(g, w, *args)
    total = None
    for s in range(0, g.shape[0], step):
        part = fn(g[s : s + step], w[s : s + step], *args)
        total = part if total is None else total + part
    return total


def _left_sum(x, y, w) -> np.ndarray:
    """``Σ_k w_k X_k Y_kᵀ`` (m × m) over one sub-block (``_by_blocks`` splits a chunk).

    The block is copied once into the row-stacked layout ``[X_1 … X_B]`` (m × B·n, the
    weights folded into the copy of ``Y``) for one ``(m, B·n)(B·n, m)`` product (a
    ``syrk`` when ``X = Y`` with equal weights). Few large BLAS calls keep the pass near
    the matmul rate on a loaded machine, where one call per sample is not.
    """
    m = x.shape[1]
    h = np.ascontiguousarray(x.transpose(1, 0, 2)).reshape(m, -1)
    common = _uniform(w)
    if y is x and common is not None:
        return common * (h @ h.T)  # NumPy's matmul runs syrk for A @ A.T
    weights = common if common is not None else w[None, :, None]
    return h @ (y.transpose(1, 0, 2) * weights).reshape(m, -1).T


def _right_sum(x, y, w) -> np.ndarray:
    """``Σ_k w_k X_kᵀ Y_k`` (n × n) as one ``(c·m, n)ᵀ (c·m, n)`` product."""
    n = x.shape[2]
    x2 = x.reshape(-1, n)
    common = _uniform(w)
    if common is not None:
        if y is x:
            return common * (x2.T @ x2)  # NumPy's matmul runs syrk for A.T @ A
        return common * (x2.T @ y.reshape(-1, n))
    return x2.T @ (y * w[:, None, None]).reshape(-1, n)


def h_norms(g, w):
    """``(‖G_k‖² per sample, Σ_k w_k ‖G_k‖²)``; a NaN/Inf sample gives a non-finite norm."""
    x = g.reshape(g.shape[0], -1)
    sq = np.einsum("ij,ij->i", x, x)
    return sq, np.dot(w, sq)


def h_stats(g, w):
    """``h_norms`` and the weighted sum ``Σ_k w_k G_k``."""
    c, m, n = g.shape
    return (*h_norms(g, w), (w @ g.reshape(c, -1)).reshape(m, n))


def h_left_moment(g, w):
    return _by_blocks(lambda gb, wb: _left_sum(gb, gb, wb), g, w)


def h_right_moment(g, w):
    if _uniform(w) is not None:  # one syrk over the whole chunk, no temporary
        return _right_sum(g, g, w)
    return _by_blocks(lambda gb, wb: _right_sum(gb, gb, wb), g, w)


def h_moments(g, w):
    return h_left_moment(g, w), h_right_moment(g, w)


def _contract_left(g, w, b):
    c, m, n = g.shape
    gb = (g.reshape(-1, n) @ b).reshape(c, m, n)
    return _left_sum(gb, g, w)


def h_contract_left(g, w, b):
    """``Σ_k w_k G_k B G_kᵀ``: per sub-block one tall product ``G B``, then the sums."""
    return _by_blocks(_contract_left, g, w, b)


def h_contract_right(g, w, a):
    """``Σ_k w_k G_kᵀ A G_k``: per sub-block ``A G_k``, then one ``(B·m, n)ᵀ`` product."""
    return _by_blocks(lambda gb, wb: _right_sum(gb, np.matmul(a, gb), wb), g, w)


def _rotdiag(g, w, qa, qb):
    c, m, n = g.shape
    p = np.matmul(qa.T, (g.reshape(-1, n) @ qb).reshape(c, m, n))
    np.square(p, out=p)
    return (w @ p.reshape(c, -1)).reshape(m, n)


def h_rotdiag(g, w, qa, qb):
    """``Σ_k w_k (Q_aᵀ G_k Q_b)²`` (elementwise square), by sub-blocks."""
    return _by_blocks(_rotdiag, g, w, qa, qb)


def _diag(g, w):
    c, m, n = g.shape
    return (w @ np.square(g.reshape(c, -1))).reshape(m, n)


def h_diag(g, w):
    return _by_blocks(_diag, g, w)


def h_gram(ga, gb):
    """``K_kl = ⟨G_k, G_l⟩`` (``syrk`` when both blocks are the same array)."""
    xa = ga.reshape(ga.shape[0], -1)
    xb = xa if gb is ga else gb.reshape(gb.shape[0], -1)
    return xa @ xb.T


def h_frob_block(ga, wa, gb, wb):
    """``Σ_kl wa_k wb_l ⟨G_k, G_l⟩²`` over two blocks: their share of ``‖Σ‖_F²``."""
    k = h_gram(ga, gb)
    return wa @ (k * k) @ wb


def h_cov(g, w):
    """``Σ_k w_k vec(G_k) vec(G_k)ᵀ`` (mn × mn; references and tiny layers)."""
    x = g.reshape(g.shape[0], -1)
    common = _uniform(w)
    if common is not None:
        return common * (x.T @ x)
    return x.T @ (x * w[:, None])


def h_combine(g, coef):
    """``Σ_k coef_kr G_k`` for each column ``r``: ``(r, m, n)``."""
    c, m, n = g.shape
    return (coef.T @ g.reshape(c, -1)).reshape(-1, m, n)


def h_apply(g, w, x):
    """``Σ_k w_k G_k ⟨G_k, X⟩`` for a batch ``X`` of shape ``(…, m, n)``."""
    c, m, n = g.shape
    flat = x.reshape(-1, m * n)
    gx = g.reshape(c, -1)
    coef = (gx @ flat.T) * w[:, None]  # (c, r)
    return (coef.T @ gx).reshape(x.shape)
