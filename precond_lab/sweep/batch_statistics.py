"""Mini-batch gradient statistics ``B·ḡḡᵀ`` against the Gauss–Newton matrix, exactly.

A batch statistic is ``Σ_p w_p s_p s_pᵀ`` with ``s = C f``: ``f`` the ``S = N·k`` label
draws of ``N`` examples (``k = 1``: real labels; ``k`` sampled labels each), and ``C`` how
each batch sums them (scaled by ``1/√B``). Its Frobenius inner products with
``H_GN = Σ_q v_q y_q y_qᵀ`` (``y``: exact GGN pseudo-samples) follow from the Gram
matrices ``f fᵀ`` and ``f yᵀ``, computed once: no ``mn × mn`` matrix is formed. Three
statistics per batch size (P3's Section 4):

* ``resampled``: ``M`` batches of ``B`` examples drawn with replacement, each example with
  one of its draws at random (``draw_batches``), ``(1/M) Σ_j B ḡ_j ḡ_jᵀ``;
* ``groups``: consecutive groups of ``B`` examples, separately per draw
  (``group_operator``, the capture's ``batch`` target for real labels);
* ``expected``: the ``M → ∞`` limit ``E[ggᵀ] + (B − 1) E[g]E[g]ᵀ`` (``expected_operator``).
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

__all__ = [
    "LabelDraws",
    "batch_statistics",
    "draw_batches",
    "expected_operator",
    "group_operator",
    "kronecker_factors",
]


def kronecker_factors(s: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shampoo's ``L = Σ_p w_p s_p s_pᵀ`` and ``R = Σ_p w_p s_pᵀ s_p`` (``w ≥ 0``), float64,
    as two matrix products."""
    p, m, n = s.shape
    sw = s * np.sqrt(np.asarray(w, s.dtype))[:, None, None]
    a = sw.transpose(1, 0, 2).reshape(m, p * n)
    b = sw.reshape(p * m, n)
    return (a @ a.T).astype(np.float64), (b.T @ b).astype(np.float64)


def draw_batches(n: int, k: int, bsz: int, num: int, rng: np.random.Generator) -> np.ndarray:
    """``(num, B)`` draw indices (``example·k + draw``): ``num`` batches of ``B`` examples
    drawn with replacement, each with one of its ``k`` label draws at random."""
    return rng.integers(0, n, size=(num, bsz)) * k + rng.integers(0, k, size=(num, bsz))


def group_operator(n: int, k: int, bsz: int):
    """``(C, w)`` of consecutive groups of ``B`` examples, separately for each draw."""
    nb = n // bsz
    rows = np.repeat(np.arange(nb * k), bsz)  # row j·k + d: group j, draw d
    group, draw = np.divmod(np.arange(nb * k), k)
    cols = ((group[:, None] * bsz + np.arange(bsz)[None, :]) * k + draw[:, None]).ravel()
    data = np.full(rows.size, 1.0 / np.sqrt(bsz))
    c = sparse.csr_array((data, (rows, cols)), shape=(nb * k, n * k))
    return c, np.full(nb * k, 1.0 / (nb * k))


def expected_operator(n: int, k: int, bsz: int):
    """``(C, w)`` of ``E[ggᵀ] + (B − 1) E[g]E[g]ᵀ``: every draw (weight ``1/S``) and the mean
    (weight ``B − 1``)."""
    s = n * k
    c = sparse.vstack([sparse.eye_array(s), sparse.csr_array(np.full((1, s), 1.0 / s))])
    return c, np.concatenate([np.full(s, 1.0 / s), [bsz - 1.0]])


class LabelDraws:
    """The label draws of one (step, layer) and the exact GGN they are scored against.

    Args:
        draws: ``(N, k, m, n)`` per-example gradients, ``k`` label draws each.
        ggn_samples: ``(P, m, n)`` exact GGN pseudo-samples; ggn_weights: their ``(P,)``
            weights (``H_GN = Σ_q v_q vec(y_q) vec(y_q)ᵀ``).
        center: remove the draws' mean (sampled labels: ``E_y[g | x] = 0`` holds exactly
            for the model's own labels; the draws' Monte-Carlo mean would add a spurious
            ``(B − 1)ḡḡᵀ``).
    """

    def __init__(self, draws, ggn_samples, ggn_weights, center: bool = False):
        draws = np.asarray(draws)
        if draws.ndim != 4 or np.asarray(ggn_samples).shape[1:] != draws.shape[2:]:
            raise ValueError(
                f"LabelDraws: draws must be (N, k, m, n) and ggn_samples (P, m, n) of the same "
                f"(m, n); got {draws.shape} and {np.asarray(ggn_samples).shape}"
            )
        self.n, self.k = draws.shape[:2]
        self.shape = draws.shape[2:]
        f = draws.reshape(self.n * self.k, -1).astype(np.float64)
        if center:
            f = f - f.mean(axis=0)
        self.f = np.ascontiguousarray(f, np.float32)
        self.y = np.asarray(ggn_samples).reshape(len(ggn_samples), -1).astype(np.float32)
        self.kff = (self.f @ self.f.T).astype(np.float64)
        self.kfg = (self.f @ self.y.T).astype(np.float64)
        self.wg = np.asarray(ggn_weights, np.float64)
        kgg = (self.y @ self.y.T).astype(np.float64)
        self.ggn_norm2 = float(self.wg @ (kgg * kgg) @ self.wg)
        s = self.f.shape[0]
        self.mean = self.f.mean(axis=0).reshape(self.shape)
        self.base = kronecker_factors(self.f.reshape(s, *self.shape), np.full(s, 1.0 / s))

    def cosine(self, c, w) -> float:
        """Frobenius cosine of ``Σ_p w_p (Cf)_p (Cf)_pᵀ`` with ``H_GN`` (``C`` dense or sparse)."""
        c = sparse.csr_array(c)
        kss = c @ (c @ self.kff).T
        ksg = c @ self.kfg
        inner = float(w @ (ksg * ksg) @ self.wg)
        return inner / np.sqrt(float(w @ (kss * kss) @ w) * self.ggn_norm2)

    def factors(self, c, w) -> tuple[np.ndarray, np.ndarray]:
        """Shampoo's ``(L, R)`` of the statistic."""
        c = sparse.csr_array(c, dtype=np.float32)
        return kronecker_factors((c @ self.f).reshape(c.shape[0], *self.shape), w)

    def resampled(self, idx: np.ndarray) -> tuple[float, tuple[np.ndarray, np.ndarray]]:
        """``(cosine with H_GN, Shampoo factors)`` of ``(1/M) Σ_j s_j s_jᵀ``,
        ``s_j = Σ_b f_{idx[j, b]}/√B`` (``idx`` from ``draw_batches``)."""
        m, bsz = idx.shape
        data = np.full(idx.size, 1.0 / np.sqrt(bsz), np.float32)
        c = sparse.csr_array((data, idx.ravel(), np.arange(0, idx.size + 1, bsz)),
                             shape=(m, self.n * self.k))  # fmt: skip
        s = c @ self.f  # repeated draws add up
        w = np.full(m, 1.0 / m)
        ksg, kss = (s @ self.y.T).astype(np.float64), (s @ s.T).astype(np.float64)
        cos = float(w @ (ksg * ksg) @ self.wg) / np.sqrt(
            float(w @ (kss * kss) @ w) * self.ggn_norm2
        )
        return cos, kronecker_factors(s.reshape(m, *self.shape), w)


def batch_statistics(
    draws: LabelDraws, bsz: int, num_batches: int, rng: np.random.Generator, repeats: int = 1
) -> dict:
    """``{scheme: (cosine of the statistic with H_GN, Shampoo's (L, R))}`` for the
    ``"groups"`` and ``"expected"`` statistics and a list of ``repeats`` independent
    ``"resampled"`` ones."""
    if int(bsz) < 1 or int(num_batches) < 1 or int(repeats) < 1:
        raise ValueError(
            f"batch_statistics: batch size, num_batches and repeats must be ≥ 1; got {bsz}, "
            f"{num_batches}, {repeats}"
        )
    c, w = group_operator(draws.n, draws.k, bsz)
    out = {"groups": (draws.cosine(c, w), draws.factors(c, w))}
    lb, rb = draws.base
    gm = draws.mean.astype(np.float64)  # closed form: no (S + 1)-sample products
    c, w = expected_operator(draws.n, draws.k, bsz)
    out["expected"] = (draws.cosine(c, w), (lb + (bsz - 1) * gm @ gm.T, rb + (bsz - 1) * gm.T @ gm))
    out["resampled"] = [
        draws.resampled(draw_batches(draws.n, draws.k, bsz, num_batches, rng))
        for _ in range(int(repeats))
    ]
    return out
