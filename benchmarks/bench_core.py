#!/usr/bin/env python
"""Benchmark the core of precond_lab: every estimator and metric, in one run.

Two kinds of size (``--sizes``):

* ``dense:MxNxS`` — small enough that the explicit ``(mn, mn)`` matrix ``Σ`` fits: each
  matrix-free call is timed against a straightforward dense NumPy implementation of
  the same quantity (``ratio = matrix-free seconds / dense seconds``; < 1 means the
  matrix-free path is faster), and the two results are compared (``agreement``).
* ``large:MxNxS`` — matrix-free only: achieved GFLOP/s from analytic flop counts (see
  ``FLOP_MODEL`` below, also written to the JSON) as a fraction of the throughput of a
  plain jitted ``jnp.matmul`` measured in the same run.

``M x N`` is the matrix shape ``(m, n)`` of a per-example gradient, ``S`` the number of
examples. Samples are synthetic K-FAC-like gradients ``G_k = Σ_r δ_{k,r} a_{k,r}ᵀ``
(``R`` weight-sharing positions, correlated Gaussian ``δ``, ``a``) so that ``kfac`` runs
on the same layer as the other estimators.

Examples::

    python benchmarks/bench_core.py                 # default CPU run (~10 min on 2 cores)
    python benchmarks/bench_core.py --quick --out /tmp/x.json   # smoke run, < 30 s
    python benchmarks/bench_core.py --gpu-sizes     # accelerator preset (2048², N=4096)
    python benchmarks/bench_core.py --sizes dense:16x16x128,large:256x256x512

Timing: warm-up (compilation) calls are excluded — at ``dense`` sizes one full call, at
``large`` sizes one call on a one-chunk subset of the samples, which compiles the same
per-chunk kernels; then up to ``--repeats`` calls (fewer once ``--budget`` seconds per
item are spent), each ended by ``jax.block_until_ready``; the median is reported with
all repeats. Each item also records the number of XLA compilations inside the timed
calls (should be 0) and of device→host fetches per call (host syncs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from _machine import (  # noqa: E402
    device_memory,
    load_average,
    machine_info,
    matmul_throughput,
    peak_rss_bytes,
    result_path,
    time_call,
)

FLOP_MODEL = {
    "P (one pass)": (
        "P = 2·N·m·n·(m+n): contract_left(B) = E[G B Gᵀ] is G·B (2mn² per sample) then "
        "(GB)·Gᵀ (2m²n); contract_right, second_moments (GGᵀ and GᵀG), "
        "rotated_diagonal (Qaᵀ G Qb) and Kronecker matvec (L G Rᵀ) cost the same."
    ),
    "eig(k)": "9·k³ for a symmetric eigendecomposition with vectors (Golub–Van Loan).",
    "gram_pairs": (
        "frobenius_norm: C(C+1)/2 chunk pairs × 2c²·mn (C chunks of c samples; diagonal "
        "blocks once, off-diagonal blocks once each)."
    ),
    "gram_full": "eigh's Gram matrix: all C² blocks, 2·Np²·mn with Np = C·c (padded N).",
    "eigh_sample_space": "gram_full + 2·eig(Np) (Gram and middle matrix); + 2·Np·r·mn for "
    "eigenvectors (r = rank, counted as min(Np, mn)).",
    "frobenius_optimal": "2·P per Lanczos iteration (one contract_left + one contract_right).",
    "power_iteration(s)": "(2s+1)·P (s left+right passes, one more left pass for the scale).",
    "shampoo": "P + 11·(m³+n³) (second moments, then eig + 2k³ product for each root).",
    "shampoo_squared": "P.",
    "kl_optimal": "2·P per flip-flop sweep + 11·(m³+n³) per sweep (SPD inverses via eigh).",
    "one_sided_kl": "P (contract_left(I) multiplies by the identity: a full G·I product).",
    "kfac": "2·N·R·(m²+n²).",
    "eigencorrected": "2·P + 9·(m³+n³) (Shampoo statistics, eigh, rotated diagonal).",
    "diagonal": "2·N·m·n (memory-bound: gbytes_per_s = N·m·n·itemsize / seconds).",
    "cosine_similarity / relative_frobenius_error": "gram_pairs + P (+2Nmn); warm: P.",
    "kl_divergence forward": "P + 9(m³+n³) + eigh_sample_space (values); warm: P + 9(m³+n³).",
    "kl_divergence reverse": "eigh_sample_space (vectors) + (r/N)·P (quadratic forms S·v) "
    "+ 9(m³+n³); warm: (r/N)·P + 9(m³+n³).",
    "von_neumann_divergence": "P + 9(m³+n³) + eigh_sample_space (values); warm: P + 9(m³+n³).",
    "spectrum": "eigh_sample_space (values); warm: cached, ~0.",
}


# --------------------------------------------------------------------------------------
# Problems (synthetic samples) and sizes.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Problem:
    kind: str  # "dense" or "large"
    m: int
    n: int
    num: int  # N, number of examples
    share: int  # R, weight-sharing positions
    dtype: Any
    g: jax.Array  # (N, m, n)
    acts: jax.Array  # (N, R, n)
    backs: jax.Array  # (N, R, m)
    damping: float
    chunk: int  # samples per chunk (library default unless --chunk-size)
    chunks: int
    g_np: np.ndarray | None = None
    acts_np: np.ndarray | None = None
    backs_np: np.ndarray | None = None
    approx: Any = None  # the structure the metrics score (kl_optimal's result)

    @property
    def size(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "m": self.m,
            "n": self.n,
            "N": self.num,
            "R": self.share,
            "dtype": np.dtype(self.dtype).name,
            "chunk_size": self.chunk,
            "num_chunks": self.chunks,
            "samples_bytes": self.num * self.m * self.n * np.dtype(self.dtype).itemsize,
        }

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.m}x{self.n}x{self.num}"


def parse_sizes(text: str) -> list[tuple[str, int, int, int]]:
    """``"dense:32x32x256,large:512x512x1024"`` → [(kind, m, n, N), …]."""
    out = []
    for tok in text.replace(" ", ",").split(","):
        if not tok:
            continue
        kind, _, dims = tok.partition(":")
        if kind not in ("dense", "large") or dims.count("x") != 2:
            raise argparse.ArgumentTypeError(
                f"bad size {tok!r}: expected dense:MxNxS or large:MxNxS (e.g. large:512x512x1024)"
            )
        m, n, s = (int(v) for v in dims.split("x"))
        out.append((kind, m, n, s))
    return out


def make_problem(kind, m, n, num, share, dtype, seed, chunk_size) -> Problem:
    from precond_lab.targets import SampleTarget

    # NumPy's generator: jax.random's threefry kernels take seconds to compile on CPU.
    rng = np.random.default_rng(seed)
    npdt = np.dtype(dtype)
    mix_a = np.eye(n) + 0.5 * rng.standard_normal((n, n)) / math.sqrt(n)
    mix_d = np.eye(m) + 0.5 * rng.standard_normal((m, m)) / math.sqrt(m)
    mix_a = (np.arange(1, n + 1) ** -0.5)[:, None] * mix_a  # decaying, correlated scales
    mix_d = (np.arange(1, m + 1) ** -0.5)[:, None] * mix_d
    acts = jnp.asarray(rng.standard_normal((num, share, n), npdt) @ mix_a.astype(npdt))
    backs = jnp.asarray(rng.standard_normal((num, share, m), npdt) @ mix_d.astype(npdt))
    g = jax.jit(lambda d, a: jnp.einsum("kri,krj->kij", d, a))(backs, acts)
    trace = float(jax.jit(lambda x: jnp.sum(x * x))(g)) / num
    damping = 1e-2 * trace / (m * n)  # 1% of the mean eigenvalue of Σ
    t = SampleTarget(g, chunk_size=chunk_size, validate=False)
    prob = Problem(
        kind, m, n, num, share, dtype, g, acts, backs, damping, t.chunk_size, t.num_chunks
    )
    if kind == "dense":
        prob.g_np, prob.acts_np, prob.backs_np = (np.asarray(x) for x in (g, acts, backs))
    jax.block_until_ready(g)
    return prob


def subset(prob: Problem) -> Problem:
    """The first chunk's worth of samples: same chunk shape, so the same compiled kernels."""
    k = min(prob.chunk, prob.num)
    return dataclasses.replace(
        prob,
        num=k,
        g=prob.g[:k],
        acts=prob.acts[:k],
        backs=prob.backs[:k],
        chunks=1,
        g_np=None,
        acts_np=None,
        backs_np=None,
    )


# --------------------------------------------------------------------------------------
# Flop counts (FLOP_MODEL).
# --------------------------------------------------------------------------------------


def _pass(p: Problem) -> float:
    return 2.0 * p.num * p.m * p.n * (p.m + p.n)


def _eig(k: int) -> float:
    return 9.0 * k**3


def _gram_pairs(p: Problem) -> float:
    c, nc = p.chunk, p.chunks
    return float(c) * c * p.m * p.n * nc * (nc + 1)


def _eigh_target(p: Problem, vectors: bool) -> tuple[float, int]:
    """Flops of ``Target.eigh`` and the rank ``r`` counted (min(Np, mn))."""
    mn = p.m * p.n
    npad = p.chunk * p.chunks
    if npad <= mn:
        r = npad
        flops = 2.0 * npad**2 * mn + 2 * _eig(npad)
        if vectors:
            flops += 2.0 * npad * r * mn
    else:
        r = mn
        flops = 2.0 * npad * mn**2 + _eig(mn)
    return flops, r


def _factor_eigs(p: Problem) -> float:
    return _eig(p.m) + _eig(p.n)


# --------------------------------------------------------------------------------------
# Dense NumPy implementations (straightforward, in the benchmark dtype).
# --------------------------------------------------------------------------------------


def d_sigma(g: np.ndarray) -> np.ndarray:
    """``Σ = (1/N) Σ_k vec(G_k) vec(G_k)ᵀ`` as one product (reference.target_matrix loops)."""
    x = g.reshape(g.shape[0], -1)
    return x.T @ (x / g.shape[0])


def d_rearrange(sigma, m, n):
    """Vectorised Van Loan–Pitsianis rearrangement (reference.rearrange loops, float64)."""
    return sigma.reshape(m, n, m, n).transpose(0, 2, 1, 3).reshape(m * m, n * n)


def d_stats(sigma, m, n):
    from precond_lab import reference

    return reference.shampoo_statistics(sigma, m, n)


def d_psd_sqrt(a):
    w, q = np.linalg.eigh(0.5 * (a + a.T))
    return (q * np.sqrt(np.clip(w, 0, None))) @ q.T


def d_frobenius_optimal(p: Problem):
    r = d_rearrange(d_sigma(p.g_np), p.m, p.n)
    u, s, vt = np.linalg.svd(r, full_matrices=False)
    a = np.sqrt(s[0]) * u[:, 0].reshape(p.m, p.m)
    b = np.sqrt(s[0]) * vt[0].reshape(p.n, p.n)
    return a, b, 1.0


def d_power_iteration(p: Problem, steps: int):
    m, n = p.m, p.n
    r = d_rearrange(d_sigma(p.g_np), m, n)
    dt = r.dtype
    a = np.eye(m, dtype=dt).reshape(-1) / np.sqrt(m)
    b = np.eye(n, dtype=dt).reshape(-1) / np.sqrt(n)
    for _ in range(steps):
        a_new = r @ b
        a_new /= np.linalg.norm(a_new)
        b = r.T @ a
        b /= np.linalg.norm(b)
        a = a_new
    return a.reshape(m, m), b.reshape(n, n), float(a @ (r @ b))


def d_shampoo(p: Problem):
    left, right = d_stats(d_sigma(p.g_np), p.m, p.n)
    return d_psd_sqrt(left), d_psd_sqrt(right), 1.0


def d_shampoo_squared(p: Problem):
    sigma = d_sigma(p.g_np)
    left, right = d_stats(sigma, p.m, p.n)
    return left, right, 1.0 / np.trace(sigma)


def d_kl_optimal(p: Problem, iters: int):
    m, n, lam = p.m, p.n, p.damping
    blocks = d_sigma(p.g_np).reshape(m, n, m, n)
    dt = blocks.dtype
    eye_m, eye_n = np.eye(m, dtype=dt), np.eye(n, dtype=dt)
    left, right = eye_m, eye_n
    right_inv = np.linalg.inv(right)
    for _ in range(iters):
        left = (np.einsum("ijkl,jl->ik", blocks, right_inv) + lam * np.trace(right_inv) * eye_m) / n
        left_inv = np.linalg.inv(0.5 * (left + left.T))
        right = (np.einsum("ijkl,ik->jl", blocks, left_inv) + lam * np.trace(left_inv) * eye_n) / m
        c = np.trace(right) / n
        right, left = right / c, left * c
        right_inv = np.linalg.inv(0.5 * (right + right.T))
    return left, right, 1.0


def d_one_sided_kl(p: Problem):
    left, _ = d_stats(d_sigma(p.g_np), p.m, p.n)
    return (
        left + p.damping * p.n * np.eye(p.m, dtype=left.dtype),
        np.eye(p.n, dtype=left.dtype),
        (1.0 / p.n),
    )


def d_kfac(p: Problem):
    d = p.backs_np.reshape(-1, p.m)
    a = p.acts_np.reshape(-1, p.n)
    return d.T @ d / p.num, a.T @ a / (p.num * p.share), 1.0


def d_eigencorrected(p: Problem):
    sigma = d_sigma(p.g_np)
    left, right = d_stats(sigma, p.m, p.n)
    qa = np.linalg.eigh(0.5 * (left + left.T))[1]
    qb = np.linalg.eigh(0.5 * (right + right.T))[1]
    q = np.kron(qa, qb)
    return q, np.einsum("ij,ij->j", q, sigma @ q)  # diag(QᵀΣQ) without forming QᵀΣQ


def d_diagonal(p: Problem):
    return np.diag(d_sigma(p.g_np)).copy()


def _approx_dense(p: Problem) -> np.ndarray:
    s = p.approx
    return float(s.scale) * np.kron(np.asarray(s.left), np.asarray(s.right))


def _dense_metric(fn_name):
    def run(p: Problem):
        from precond_lab import reference

        sigma = d_sigma(p.g_np)
        s = _approx_dense(p)
        eye = np.eye(sigma.shape[0], dtype=sigma.dtype)
        lam = p.damping
        if fn_name == "cosine":
            return reference.cosine_similarity(sigma, s)
        if fn_name == "relfrob":
            return reference.relative_frobenius_error(sigma, s)
        if fn_name == "kl_forward":
            return reference.kl_divergence(sigma + lam * eye, s + lam * eye)
        if fn_name == "kl_reverse":
            return reference.kl_divergence(s + lam * eye, sigma + lam * eye)
        if fn_name == "vn":
            return reference.von_neumann_divergence(sigma, s)
        if fn_name == "spectrum":
            return np.sort(np.linalg.eigvalsh(sigma))[::-1]
        raise ValueError(fn_name)

    return run


# --------------------------------------------------------------------------------------
# Items.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Item:
    name: str
    group: str  # "estimator" | "metric" | "metric (warm target)"
    run: Callable[[Problem], Any]  # the matrix-free call
    flops: Callable[[Problem, Any], tuple[float, str]]
    dense: Callable[[Problem], Any] | None = None
    dense_impl: str | None = None
    params: dict = dataclasses.field(default_factory=dict)
    memory: Callable[[Problem], str] | None = None
    bound: str = "compute"
    warm_full: bool = False  # warm up on the full input even at large sizes (cheap items)


def _iters(res) -> int:
    return int(res.info.iterations) if getattr(res, "info", None) is not None else 0


def estimator_items(p: Problem, cfg) -> list[Item]:
    from precond_lab import estimators as est

    dense_iters = p.kind == "dense"
    frob_max = None if dense_iters else cfg.large_iters
    kl_max = None if dense_iters else cfg.large_iters
    steps = cfg.dense_power_steps if dense_iters else cfg.large_power_steps
    m, n = p.m, p.n
    cubic = m**3 + n**3
    items = [
        Item(
            "frobenius_optimal",
            "estimator",
            lambda q: est.frobenius_optimal(
                q.g, **({} if frob_max is None else {"max_iter": frob_max})
            ),
            lambda q, r: (2 * _iters(r) * _pass(q), f"2·P·iterations ({_iters(r)})"),
            d_frobenius_optimal,
            "bench: Σ = Xᵀ(X/N) (one product), vectorised rearrangement, np.linalg.svd "
            "(full SVD of the m²×n² rearrangement; reference.frobenius_optimal does the same "
            "with a Python-loop rearrange in float64)",
            {"max_iter": frob_max or 200, "tol": "default"},
        )
    ]
    for s in steps:
        items.append(
            Item(
                f"power_iteration(steps={s})",
                "estimator",
                lambda q, s=s: est.power_iteration(q.g, s),
                lambda q, r, s=s: ((2 * s + 1) * _pass(q), f"(2·{s}+1)·P"),
                lambda q, s=s: d_power_iteration(q, s),
                "bench: Σ, vectorised rearrangement, matrix-vector power steps (mirrors "
                "reference.power_iteration, which upcasts to float64)",
                {"steps": s},
            )
        )
    items += [
        Item(
            "shampoo",
            "estimator",
            lambda q: est.shampoo(q.g),
            lambda q, r: (_pass(q) + 11 * cubic, "P + 11(m³+n³)"),
            d_shampoo,
            "bench: Σ, reference.shampoo_statistics (partial traces), np.linalg.eigh roots",
        ),
        Item(
            "shampoo_squared",
            "estimator",
            lambda q: est.shampoo_squared(q.g),
            lambda q, r: (_pass(q), "P"),
            d_shampoo_squared,
            "bench: Σ, reference.shampoo_statistics, np.trace",
        ),
        Item(
            "kl_optimal",
            "estimator",
            lambda q: est.kl_optimal(
                q.g, damping=q.damping, **({} if kl_max is None else {"max_iter": kl_max})
            ),
            lambda q, r: (
                _iters(r) * (2 * _pass(q) + 11 * cubic) + 11 * n**3,
                f"iterations ({_iters(r)})·(2P + 11(m³+n³))",
            ),
            None,  # set below: needs the matrix-free iteration count
            "bench: dense flip-flop on the explicit Σ blocks (np.einsum + np.linalg.inv), as "
            "reference.kl_flip_flop but in the benchmark dtype and with the SAME number of "
            "sweeps as the matrix-free fit",
            {"damping": "1e-2·tr(Σ)/(mn)", "max_iter": kl_max or 500, "tol": "default"},
        ),
        Item(
            "one_sided_kl",
            "estimator",
            lambda q: est.one_sided_kl(q.g, damping=q.damping),
            lambda q, r: (_pass(q), "P"),
            d_one_sided_kl,
            "bench: Σ, reference.shampoo_statistics",
            {"side": "left", "damping": "1e-2·tr(Σ)/(mn)"},
        ),
        Item(
            "kfac",
            "estimator",
            lambda q: est.kfac(q.acts, q.backs),
            lambda q, r: (2.0 * q.num * q.share * (m * m + n * n), "2·N·R·(m²+n²)"),
            d_kfac,
            "bench: two NumPy products (reference.kfac loops over examples and positions)",
            {"variant": "expand", "R": p.share},
            warm_full=True,  # not chunked: a subset would compile other shapes
        ),
        Item(
            "eigencorrected",
            "estimator",
            lambda q: est.eigencorrected(q.g),
            lambda q, r: (2 * _pass(q) + 9 * cubic, "2P + 9(m³+n³)"),
            d_eigencorrected,
            "bench: Σ, reference.shampoo_statistics, np.linalg.eigh, Q = kron(Qa, Qb), "
            "diag(QᵀΣQ) as colsum(Q ∘ ΣQ) (reference.eigencorrected forms QᵀΣQ)",
            {"basis": "shampoo"},
        ),
        Item(
            "diagonal",
            "estimator",
            lambda q: est.diagonal(q.g),
            lambda q, r: (2.0 * q.num * m * n, "2Nmn (memory-bound)"),
            d_diagonal,
            "bench: Σ, np.diag",
            bound="memory",
        ),
    ]
    items += bregman_estimator_items(p)
    return items + registered_without_item(items)


def d_bregman_optimal(p: Problem, q: float):
    """Dense twin: scipy minimisation of B_q(Σ+λI, L⊗R) on the explicit Σ (float64)."""
    from precond_lab import reference

    left, right = reference.bregman_optimal(
        d_sigma(p.g_np).astype(np.float64), p.m, p.n, q, damping=p.damping
    )
    return left, right, 1.0


def bregman_estimator_items(p: Problem) -> list[Item]:
    """The trace-power Bregman fits at q = 0, ½, 1, 2 (damped like kl_optimal)."""
    from precond_lab import estimators as est

    cubic = p.m**3 + p.n**3
    return [
        Item(
            f"bregman_optimal(q={q:g})",
            "estimator",
            lambda g, q=q: est.bregman_optimal(g.g, q, damping=g.damping),
            lambda g, r: (
                _iters(r) * (2 * _pass(g) + 11 * cubic),
                f"iterations ({_iters(r)})·(2P + 11(m³+n³))",
            ),
            (lambda g, q=q: d_bregman_optimal(g, q)) if p.kind == "dense" else None,
            "bench: reference.bregman_optimal (scipy BFGS + Newton polish on the explicit B_q)",
            {"q": q, "damping": "1e-2·tr(Σ)/(mn)", "tol": "default"},
        )
        for q in (0.0, 0.5, 1.0, 2.0)
    ]


def bregman_metric_items(p: Problem) -> list[Item]:
    """``bregman_divergence`` and the held-out metrics (source = first half of the samples,
    held-out = second half; the approximation is the kl_optimal result)."""
    from precond_lab import heldout
    from precond_lab import metrics as met
    from precond_lab.targets import SampleTarget

    half = p.num // 2
    mn = p.m * p.n
    rank = min(half, mn)
    scales = 2.0 * half * mn * rank  # one pass of rank directional scales over N/2 samples

    def split(q: Problem):
        return SampleTarget(q.g[:half]), SampleTarget(q.g[half:])

    def dense_breg(q: Problem):
        from precond_lab import reference

        sigma = d_sigma(q.g_np).astype(np.float64)
        eye = np.eye(sigma.shape[0])
        return reference.bregman_divergence(sigma + q.damping * eye, _approx_dense(q), 0.5)

    return [
        Item(
            "bregman_divergence(q=0.5)",
            "metric",
            lambda q: met.bregman_divergence(q.g, q.approx, 0.5, damping=q.damping),
            lambda q, r: (
                _pass(q) + _factor_eigs(q) + _eigh_target(q, False)[0],
                "P + 9(m³+n³) + eigh_sample_space",
            ),
            dense_breg if p.kind == "dense" else None,
            "bench: reference.bregman_divergence (scipy eigh of Σ+λI and S)",
            {"q": 0.5, "damping": p.damping, "approx": "kl_optimal result (Kronecker)"},
        ),
        Item(
            "heldout_scale_error",
            "held-out",
            lambda q: heldout.heldout_scale_error(*split(q)),
            lambda q, r: (scales, "eigh(source, vectors) + 2·(N/2)·mn·r"),
            params={"split": "first / second half"},
        ),
        Item(
            "heldout_gain_error",
            "held-out",
            lambda q: heldout.heldout_gain_error(*split(q), q.approx),
            lambda q, r: (
                scales + 2.0 * rank * (p.m**2 * p.n + p.m * p.n**2),
                "eigh(source) + 2·(N/2)·mn·r + r·2(m²n + mn²)",
            ),
            params={"exponent": -0.5, "approx": "kl_optimal result"},
        ),
        Item(
            "recovery_error",
            "held-out",
            lambda q: heldout.recovery_error(est_few(q), q.approx),
            lambda q, r: (2.0 * (p.m**3 + p.n**3), "factor eigs + m³ + n³"),
            params={"few": "shampoo_squared of the first 40 samples"},
        ),
        Item(
            "subspace_overlap(k≤64)",
            "held-out",
            lambda q: heldout.subspace_overlap(split(q)[0], q.approx, 64),
            lambda q, r: (2.0 * 64 * (p.m**2 * p.n + p.m * p.n**2), "eigh(source) + 64·2(m²n+mn²)"),
            params={"k_max": 64},
        ),
    ]


def est_few(q: Problem):
    from precond_lab import estimators as est

    return est.shampoo_squared(q.g[:40])


def registered_without_item(items: list[Item]) -> list[Item]:
    """Generic items for registered estimators that have no hand-written item above.

    The registry (``precond_lab.estimators.ESTIMATORS``) is the list of estimators: a new
    one is timed here from its representative spec, without a flop model or dense twin
    until someone writes them.
    """
    from precond_lab import estimators as est
    from precond_lab.targets import SampleTarget

    covered = {it.name.split("(")[0] for it in items}
    extra = []
    for spec in est.ESTIMATORS.values():
        if spec.name in covered or spec.needs_kfac_inputs:
            continue
        extra.append(
            Item(
                spec.example,
                "estimator",
                lambda q, e=spec.example: est.build(e, SampleTarget(q.g)),
                lambda q, r: (float("nan"), "no flop model (registry entry)"),
                None,
                None,
            )
        )
    return extra


def metric_items(p: Problem, cfg, warm: bool) -> list[Item]:
    from precond_lab import metrics as met
    from precond_lab.targets import SampleTarget

    mn = p.m * p.n
    cubic_eigs = _factor_eigs(p)
    lam = p.damping
    state: dict = {}

    def tgt(q: Problem):
        if not warm:
            return q.g
        key = id(q.g)
        if key not in state:
            state[key] = SampleTarget(q.g)
        return state[key]

    def ev(q, vectors):
        return _eigh_target(q, vectors)

    def cold_or_warm(cold, warm_):
        return warm_ if warm else cold

    gram_mem = "Gram Np² floats; SampleTarget.gram() holds copies of all chunks at once"
    defs = [
        (
            "cosine_similarity",
            lambda q: met.cosine_similarity(tgt(q), q.approx),
            lambda q, r: cold_or_warm(
                (_gram_pairs(q) + _pass(q) + 2 * q.num * mn, "gram_pairs + P"), (_pass(q), "P")
            ),
            "cosine",
            "bench: Σ, S = scale·kron(L, R), reference.cosine_similarity",
            {},
            None,
        ),
        (
            "relative_frobenius_error",
            lambda q: met.relative_frobenius_error(tgt(q), q.approx),
            lambda q, r: cold_or_warm(
                (_gram_pairs(q) + _pass(q) + 2 * q.num * mn, "gram_pairs + P"), (_pass(q), "P")
            ),
            "relfrob",
            "bench: Σ, S, reference.relative_frobenius_error",
            {},
            None,
        ),
        (
            "kl_divergence(forward)",
            lambda q: met.kl_divergence(
                tgt(q), q.approx, damping=q.damping, approx_damping=q.damping
            ),
            lambda q, r: cold_or_warm(
                (
                    _pass(q) + cubic_eigs + ev(q, False)[0],
                    "P + 9(m³+n³) + eigh_sample_space",
                ),
                (_pass(q) + cubic_eigs, "P + 9(m³+n³)"),
            ),
            "kl_forward",
            "bench: Σ+λI, S+λI, reference.kl_divergence (slogdet + solve)",
            {"damping": lam},
            gram_mem,
        ),
        (
            "kl_divergence(reverse)",
            lambda q: met.kl_divergence(
                tgt(q), q.approx, damping=q.damping, approx_damping=q.damping, direction="reverse"
            ),
            lambda q, r: cold_or_warm(
                (
                    ev(q, True)[0] + ev(q, True)[1] / q.num * _pass(q) + cubic_eigs,
                    "eigh_sample_space(vectors) + (r/N)·P + 9(m³+n³)",
                ),
                (ev(q, True)[1] / q.num * _pass(q) + cubic_eigs, "(r/N)·P + 9(m³+n³)"),
            ),
            "kl_reverse",
            "bench: reference.kl_divergence(S+λI, Σ+λI)",
            {"damping": lam},
            "eigenvectors r·mn floats, plus S·V of the same size; " + gram_mem,
        ),
        (
            "von_neumann_divergence",
            lambda q: met.von_neumann_divergence(tgt(q), q.approx),
            lambda q, r: cold_or_warm(
                (_pass(q) + cubic_eigs + ev(q, False)[0], "P + 9(m³+n³) + eigh_sample_space"),
                (_pass(q) + cubic_eigs, "P + 9(m³+n³)"),
            ),
            "vn",
            "bench: Σ, S, reference.von_neumann_divergence (scipy eigh ×2, logm)",
            {"damping": 0.0},
            gram_mem,
        ),
        (
            "spectrum",
            lambda q: met.spectrum(tgt(q)),
            lambda q, r: cold_or_warm((ev(q, False)[0], "eigh_sample_space"), (0.0, "cached")),
            "spectrum",
            "bench: Σ, np.linalg.eigvalsh",
            {},
            gram_mem,
        ),
    ]
    items = []
    for name, run, flops, dkey, dimpl, params, mem in defs:
        items.append(
            Item(
                name,
                "metric (warm target)" if warm else "metric",
                run,
                flops,
                None if warm else _dense_metric(dkey),
                None if warm else dimpl,
                {
                    **params,
                    "approx": "kl_optimal result (Kronecker)",
                    "target": "prebuilt SampleTarget, caches warm" if warm else "samples G",
                },
                (lambda q, mem=mem: mem) if mem else None,
            )
        )
    return items


# --------------------------------------------------------------------------------------
# Agreement between matrix-free and dense results (untimed).
# --------------------------------------------------------------------------------------


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def agreement(item: Item, p: Problem, mf, dense) -> float | None:
    try:
        if item.group.startswith("metric"):
            if item.name == "spectrum":
                return _rel(mf, dense)
            return _rel(float(mf), float(dense))
        mat = np.asarray(mf.to_dense(), np.float64)
        if item.name == "eigencorrected":
            q, d = dense
            ref = (q * d) @ q.T
        elif item.name == "diagonal":
            ref = np.diag(dense)
        else:
            left, right, scale = dense
            ref = float(scale) * np.kron(left, right)
        return _rel(mat, ref)
    except Exception as exc:  # pragma: no cover - diagnostics only
        return f"n/a ({type(exc).__name__}: {exc})"


# --------------------------------------------------------------------------------------
# Driver.
# --------------------------------------------------------------------------------------


def _mem_snapshot() -> dict[str, Any]:
    out = {"peak_rss_bytes_process": peak_rss_bytes()}
    dm = device_memory()
    if dm:
        out["device_peak_bytes"] = dm.get("peak_bytes_in_use")
    return out


def _estimate_extra_bytes(item: Item, p: Problem) -> int:
    """Rough extra memory beyond the samples, to skip items that cannot fit."""
    isz = np.dtype(p.dtype).itemsize
    data = p.num * p.m * p.n * isz
    if item.name in ("kl_divergence(reverse)",) and item.group == "metric":
        return 3 * data  # eigenvectors, S·V, chunk copies in gram()
    if item.name in ("kl_divergence(forward)", "von_neumann_divergence", "spectrum") and (
        item.group == "metric"
    ):
        return data  # gram() copies every chunk
    if item.name == "kl_divergence(reverse)":
        return 2 * data
    return 4 * p.chunk * p.m * p.n * isz


def run_item(item: Item, p: Problem, cfg, ref_gflops: float, log) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "name": item.name,
        "group": item.group,
        "size": p.size,
        "params": item.params,
    }
    limit = _memory_limit()
    need = p.size["samples_bytes"] + _estimate_extra_bytes(item, p)
    if limit is not None and need > 0.9 * limit:
        rec["skipped"] = f"estimated memory {need / 2**30:.1f} GiB > 90% of {limit / 2**30:.1f} GiB"
        log(f"  {item.name:34s} skipped: {rec['skipped']}")
        return rec
    is_large = p.kind == "large"
    warm = (lambda: item.run(subset(p))) if is_large and not item.warm_full else 1
    reps = cfg.large_repeats if is_large else cfg.repeats
    budget = cfg.large_budget if is_large else cfg.budget
    t0 = time.perf_counter()
    try:
        timing = time_call(lambda: item.run(p), warmup=warm, repeats=reps, budget_s=budget)
    except Exception as exc:
        rec["error"] = f"{type(exc).__name__}: {exc}"
        log(f"  {item.name:34s} ERROR {rec['error']}")
        return rec
    rec.update(timing.as_dict())
    res = timing.result
    if hasattr(res, "info") and res.info is not None:
        rec["iterations"] = int(res.info.iterations)
        rec["converged"] = bool(res.info.converged)
        rec["seconds_per_iteration"] = timing.median / max(1, int(res.info.iterations))
    flops, formula = item.flops(p, res)
    rec["flops"] = flops
    rec["flops_formula"] = formula
    rec["gflops"] = flops / timing.median / 1e9 if flops else None
    rec["fraction_of_matmul"] = (rec["gflops"] / ref_gflops) if (flops and ref_gflops) else None
    if item.bound == "memory":
        rec["bound"] = "memory"
        rec["gbytes_per_s"] = p.size["samples_bytes"] / timing.median / 1e9
    rec["memory"] = {
        "samples_bytes": p.size["samples_bytes"],
        "chunk_bytes": p.chunk * p.m * p.n * np.dtype(p.dtype).itemsize,
        **({"note": item.memory(p)} if item.memory else {}),
        **_mem_snapshot(),
    }
    if item.name == "kl_optimal" and item.group == "estimator":
        p.approx = res  # scored by the metrics
        item.dense = lambda q, k=int(res.info.iterations): d_kl_optimal(q, k)
    if p.kind == "dense" and item.dense is not None:
        dtiming = time_call(
            lambda: item.dense(p), warmup=1, repeats=cfg.repeats, budget_s=cfg.budget
        )
        rec["dense_seconds"] = dtiming.median
        rec["dense_seconds_all"] = dtiming.all
        rec["dense_impl"] = item.dense_impl
        rec["ratio_vs_dense"] = timing.median / dtiming.median
        rec["agreement_rel_diff"] = agreement(item, p, res, dtiming.result)
    rec["wall_seconds_item"] = time.perf_counter() - t0
    rec["load_average_1_5_15"] = load_average()
    ratio = rec.get("ratio_vs_dense")
    log(
        f"  {item.name:34s} {timing.median:9.4f}s x{len(timing.all)}"
        + (f"  dense {rec['dense_seconds']:8.4f}s  ratio {ratio:7.3f}" if ratio else "")
        + (f"  {rec['gflops']:8.2f} GF/s  {rec['fraction_of_matmul']:.2f}×mm" if flops else "")
        + (f"  it={rec['iterations']}" if "iterations" in rec else "")
        + (f"  compiles={timing.compiles}" if timing.compiles else "")
    )
    return rec


def _memory_limit() -> int | None:
    dm = device_memory()
    if dm and dm.get("bytes_limit"):
        return dm["bytes_limit"]
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--sizes",
        type=parse_sizes,
        default=None,
        help="comma-separated dense:MxNxS / large:MxNxS "
        "(default dense:32x32x256,large:512x512x1024)",
    )
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run (< 30 s)")
    ap.add_argument(
        "--gpu-sizes",
        action="store_true",
        help="accelerator preset: dense:32x32x256,large:2048x2048x4096",
    )
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/core-…)")
    ap.add_argument("--repeats", type=int, default=5, help="max timed repeats at dense sizes")
    ap.add_argument("--budget", type=float, default=5.0, help="seconds per item at dense sizes")
    ap.add_argument("--large-repeats", type=int, default=3, help="max repeats at large sizes")
    ap.add_argument(
        "--large-budget",
        type=float,
        default=15.0,
        help="stop repeating a large item once it has used this many seconds",
    )
    ap.add_argument(
        "--large-iters",
        type=int,
        default=None,
        help="max_iter of frobenius_optimal / kl_optimal at large sizes "
        "(default 1 on CPU, 5 on accelerators)",
    )
    ap.add_argument(
        "--large-power-steps",
        default=None,
        help="power_iteration steps at large sizes, e.g. '1,5' (default '1' on CPU, '1,5' else)",
    )
    ap.add_argument("--dense-power-steps", default="1,5")
    ap.add_argument(
        "--large-warm-metrics",
        choices=["on", "off", "auto"],
        default="auto",
        help="also time metrics on a prebuilt target at large sizes (auto: off on CPU)",
    )
    ap.add_argument("--share", type=int, default=4, help="weight-sharing positions R")
    ap.add_argument("--chunk-size", type=int, default=None, help="samples per chunk")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default=None, help="comma-separated item names to run")
    return ap


def main(argv=None) -> int:
    cfg = build_parser().parse_args(argv)
    if cfg.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.dtype(cfg.dtype)
    on_cpu = jax.devices()[0].platform == "cpu"
    if cfg.quick:
        # the same shapes at both kinds: the large pass reuses the compiled kernels
        sizes = cfg.sizes or [("dense", 8, 8, 32), ("large", 8, 8, 32)]
        cfg.repeats, cfg.budget, cfg.large_repeats, cfg.large_budget = 2, 0.5, 2, 0.5
    elif cfg.gpu_sizes:
        sizes = cfg.sizes or [("dense", 32, 32, 256), ("large", 2048, 2048, 4096)]
    else:
        sizes = cfg.sizes or [("dense", 32, 32, 256), ("large", 512, 512, 1024)]
    if cfg.large_iters is None:
        cfg.large_iters = 2 if cfg.quick else (1 if on_cpu else 5)
    if cfg.large_power_steps is None:
        cfg.large_power_steps = "1,2" if cfg.quick else ("1" if on_cpu else "1,5")
    cfg.large_power_steps = [int(s) for s in str(cfg.large_power_steps).split(",") if s]
    cfg.dense_power_steps = [int(s) for s in str(cfg.dense_power_steps).split(",") if s]
    warm_large = cfg.large_warm_metrics == "on" or (cfg.large_warm_metrics == "auto" and not on_cpu)
    only = set(cfg.only.split(",")) if cfg.only else None

    out = cfg.out or result_path(os.path.join(os.path.dirname(__file__), "results"), "core")
    if os.path.dirname(out):
        os.makedirs(os.path.dirname(out), exist_ok=True)
    log = _logger()
    t_start = time.perf_counter()
    doc: dict[str, Any] = {
        "benchmark": "precond_lab core (bench_core.py)",
        "machine": machine_info(),
        "config": {
            "dtype": cfg.dtype,
            "sizes": [f"{k}:{m}x{n}x{s}" for k, m, n, s in sizes],
            "share_R": cfg.share,
            "repeats": cfg.repeats,
            "budget_s": cfg.budget,
            "large_repeats": cfg.large_repeats,
            "large_budget_s": cfg.large_budget,
            "large_iters": cfg.large_iters,
            "large_power_steps": cfg.large_power_steps,
            "dense_power_steps": cfg.dense_power_steps,
            "large_warm_metrics": warm_large,
            "chunk_size": cfg.chunk_size,
            "quick": cfg.quick,
            "matmul_precision": str(jax.config.jax_default_matmul_precision),
            "warmup": "dense sizes: one full untimed call; large sizes: one untimed call on "
            "a one-chunk subset (same chunk shape, same compiled kernels; eager ops whose "
            "shape depends on N, e.g. eigh of the N×N Gram, may still compile in the timed "
            "call: see compiles_during_timed)",
            "ratio_vs_dense": "matrix-free seconds / dense NumPy seconds (< 1: matrix-free "
            "faster); dense times include forming Σ from G and S from its factors",
            "fraction_of_matmul": "achieved GFLOP/s / GFLOP/s of the matmul_reference",
        },
        "flop_model": FLOP_MODEL,
        "matmul": [],
        "items": [],
    }

    def save():
        doc["total_wall_seconds"] = time.perf_counter() - t_start
        with open(out, "w") as f:
            json.dump(doc, f, indent=1, default=_jsonable)

    # Matmul yardstick: a tall product like G·B of one chunk at the largest size, and a
    # square one; measured at the start and again at the end of the run.
    big = max(sizes, key=lambda s: s[1] * s[2] * s[3])
    chunk_big = cfg.chunk_size or _default_chunk(big, dtype)
    tall = (min(chunk_big, big[3]) * big[1], big[2])
    square = 256 if cfg.quick else (2048 if on_cpu else 8192)

    def measure_matmul(tag):
        for name, sa, sb in (
            ("tall (chunk·m, n) @ (n, n)", tall, (tall[1], tall[1])),
            ("square", (square, square), (square, square)),
        ):
            r = matmul_throughput(sa, sb, dtype, repeats=5, budget_s=5.0 if not cfg.quick else 0.2)
            r.update({"name": name, "when": tag})
            doc["matmul"].append(r)
            log(f"matmul {name:28s} {sa}@{sb}: {r['gflops']:.1f} GF/s ({tag})")

    log(f"device {jax.devices()[0].device_kind}, {cfg.dtype}, sizes {doc['config']['sizes']}")
    measure_matmul("start")
    ref_gflops = float(
        np.median([r["gflops"] for r in doc["matmul"] if r["name"].startswith("tall")])
    )
    doc["matmul_reference"] = {"name": "tall (chunk·m, n) @ (n, n)", "gflops": ref_gflops}
    save()

    for kind, m, n, s in sizes:
        t0 = time.perf_counter()
        p = make_problem(kind, m, n, s, cfg.share, dtype, cfg.seed, cfg.chunk_size)
        log(
            f"\n== {p.label} (R={p.share}, chunk {p.chunk} × {p.chunks}, damping {p.damping:.3g},"
            f" data {time.perf_counter() - t0:.1f}s)"
        )
        if kind == "dense":
            dt = time_call(lambda p=p: d_sigma(p.g_np), warmup=1, repeats=cfg.repeats)
            doc["items"].append(
                {
                    "name": "dense: form Σ",
                    "group": "dense baseline",
                    "size": p.size,
                    **dt.as_dict(),
                    "dense_impl": "x.T @ (x / N) in NumPy",
                }
            )
        items = estimator_items(p, cfg) + metric_items(p, cfg, warm=False)
        items += bregman_metric_items(p)
        if kind == "dense" or warm_large:
            items += metric_items(p, cfg, warm=True)
        for item in items:
            wanted = only is None or item.name in only or item.name.split("(")[0] in only
            if not wanted and item.name != "kl_optimal":  # the metrics need its result
                continue
            if item.group.startswith(("metric", "held-out")) and p.approx is None:
                log(f"  {item.name}: skipped (no kl_optimal result to score)")
                continue
            doc["items"].append(run_item(item, p, cfg, ref_gflops, log))
            save()
        del p
    measure_matmul("end")
    finalize_reference(doc)
    doc["machine"]["load_average_end"] = load_average()
    save()
    log(f"\nwrote {out} ({time.perf_counter() - t_start:.0f}s)")
    return 0


def finalize_reference(doc: dict) -> None:
    """Re-base ``fraction_of_matmul`` on the mean of the start and end matmul measurements.

    On a shared machine the yardstick drifts with the load; the start-only value is kept
    as ``fraction_of_matmul_start``.
    """
    tall = [r["gflops"] for r in doc["matmul"] if r["name"].startswith("tall")]
    ref = doc["matmul_reference"]
    start = ref.get("gflops_start", ref["gflops"])
    ref.update(
        gflops_start=start,
        gflops_start_end=tall,
        gflops=float(np.mean(tall)),
        how="mean of the tall product's median GFLOP/s at the start and the end of the run",
    )
    for it in doc["items"]:
        if it.get("gflops"):
            it.setdefault("fraction_of_matmul_start", it["gflops"] / start)
            it["fraction_of_matmul"] = it["gflops"] / ref["gflops"]


def _default_chunk(size, dtype) -> int:
    from precond_lab import targets

    _, m, n, _ = size
    return max(1, targets._CHUNK_BYTES // (m * n * np.dtype(dtype).itemsize))


def _jsonable(x):
    if isinstance(x, (np.generic,)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def _logger():
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:7.1f}s] {msg}" if msg.strip() else msg, flush=True)

    return log


if __name__ == "__main__":
    sys.exit(main())
