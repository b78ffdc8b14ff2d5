"""Root-free specifics of P2: the batch-size factor ``B``, the initialisation ``s₀``, IF-Shampoo
driven by other curvature (K-FAC) and the cost of one IF-Shampoo update."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._validation import check_number
from ._estimators import ESTIMATORS

__all__ = [
    "batch_size_response",
    "initialisation_response",
    "if_shampoo_step_scale",
    "step_scale_levels",
    "KfacIfShampoo",
    "kfac_if_shampoo",
    "IF_TIMING_OPS",
    "if_shampoo_timings",
]


def batch_size_response(
    samples,
    batch_sizes: Sequence[int],
    *,
    steps: int = 200,
    beta2: float = 0.05,
    scale_by_batch: bool = True,
    seed: int = 0,
) -> dict[int, float]:
    """Stationary level of RF-RMSProp's ``s`` when fed mini-batch means of size ``B``.

    Mini-batches are drawn with replacement from ``samples`` (``(N, m, n)``); for
    zero-mean per-example gradients (sampled labels) ``E[B ḡ⊙ḡ] = E[g⊙g]``, so with
    ``scale_by_batch`` the level is independent of ``B``; without it, it falls like
    ``1/B`` and so would the effective learning rate of ``g/(s+λ)``.

    Returns:
        ``{B: mean over entries and the last half of the steps of s}``.
    """
    x = jnp.asarray(samples)
    rng = np.random.default_rng(seed)
    out = {}
    for bsz in batch_sizes:
        idx = rng.integers(0, x.shape[0], size=(steps, int(bsz)))
        means = x[idx].mean(axis=1)
        est = ESTIMATORS["rf_rmsprop"](
            beta2=beta2, batch_size=int(bsz), s0=0.0, scale_by_batch=scale_by_batch
        )
        state = est.init(means[0])
        levels = []
        for t in range(1, steps):
            state = est.update(state, means[t])
            if t >= steps // 2:
                levels.append(float(jnp.mean(state.s)))
        out[int(bsz)] = float(np.mean(levels))
    return out


def initialisation_response(
    gradients,
    s0_values: Sequence[float],
    *,
    beta2: float = 0.01,
    damping: float = 1e-8,
    batch_size: int = 1,
) -> dict[float, np.ndarray]:
    """Norm of the RF-RMSProp step ``‖g_t/(s_t + λ)‖`` per step for each ``s₀``.

    With ``s₀ = 0`` the first steps divide by ``β₂·B·g² + λ`` and are huge (``≈ 1/(β₂Bg)``);
    ``s₀ = 1`` keeps them near ``‖g‖`` — why P2 calls ``s₀ = 1`` essential.

    Args:
        gradients: ``(T, m, n)`` gradients.
        s0_values: initial values to compare.
        beta2: RF-RMSProp hyper-parameters.
        damping: RF-RMSProp hyper-parameters.
        batch_size: RF-RMSProp hyper-parameters.

    Returns:
        ``{s₀: (T,) step norms}``.
    """
    x = jnp.asarray(gradients)
    out = {}
    for s0 in s0_values:
        est = ESTIMATORS["rf_rmsprop"](beta2=beta2, batch_size=batch_size, s0=float(s0))
        state = est.init(x[0])
        norms = [float(jnp.linalg.norm(x[0] / (state.s + damping)))]
        for t in range(1, x.shape[0]):
            state = est.update(state, x[t])
            norms.append(float(jnp.linalg.norm(x[t] / (state.s + damping))))
        out[float(s0)] = np.asarray(norms)
    return out


def _batch_means(samples, batch_size: int, steps: int, seed: int):
    x = jnp.asarray(samples)
    idx = np.random.default_rng(seed).integers(0, x.shape[0], size=(steps, int(batch_size)))
    return x[jnp.asarray(idx)].mean(axis=1)


def if_shampoo_step_scale(
    samples,
    batch_size: int,
    *,
    scale_by_batch: bool = True,
    steps: int = 200,
    damping: float = 0.0,
    beta2: float = 0.1,
    alpha2: float = 0.5,
    seed: int = 0,
) -> float:
    """Stationary step scale of IF-Shampoo fed mini-batch means of size ``B``.

    The step scale is the mean eigenvalue of ``CCᵀ ⊗ KKᵀ`` (``tr(CCᵀ) tr(KKᵀ)/(mn)``),
    averaged over the last half of ``steps`` updates; with ``scale_by_batch`` the estimator
    gets ``batch_size=B`` (P2's ``B`` factor), else ``1``.

    Raises:
        ValueError: ``batch_size`` < 1, ``steps`` < 2 or ``damping`` < 0.
    """
    bsz = check_number(batch_size, "batch_size", low=1, integer=True)
    steps = check_number(steps, "steps", low=2, integer=True)
    damping = check_number(damping, "damping", low=0.0)
    means = _batch_means(samples, bsz, steps, seed)
    est = ESTIMATORS["if_shampoo"](
        beta2=beta2, alpha2=alpha2, damping=damping, batch_size=bsz if scale_by_batch else 1
    )
    state = est.init(means[0])
    m, n = means.shape[1:]
    vals = []
    for t in range(1, steps):
        state = est.update(state, means[t])
        if t >= steps // 2:
            c, k = state.c, state.k
            vals.append(float(jnp.sum(c * c) * jnp.sum(k * k)) / (m * n))
    return float(np.mean(vals))


def step_scale_levels(
    samples,
    batch_sizes: Sequence[int],
    *,
    steps: int = 200,
    damping: float = 0.0,
    rf_beta2: float = 0.05,
    seed: int = 0,
):
    """The (RF-RMSProp, IF-Shampoo) × (with, without ``B``) stationary step scales per ``B``.

    RF-RMSProp's is ``1/(s̄ + λ)`` (``s̄`` from ``batch_size_response``), IF-Shampoo's
    ``if_shampoo_step_scale``; both see mini-batch means drawn with ``seed``.

    Returns:
        A DataArray on ``(rf_method, b_scaling, batch_size)``, ``rf_method`` in
        ``("rf_rmsprop", "if_shampoo")``, ``b_scaling`` in ``("with_B", "without_B")``.
    """
    import xarray as xr

    damping = check_number(damping, "damping", low=0.0)
    if len(batch_sizes) == 0:
        raise ValueError("batch_sizes must name at least one batch size")
    bs = [check_number(b, "batch_sizes", low=1, integer=True) for b in batch_sizes]
    out = np.zeros((2, 2, len(bs)))
    for js, scale in enumerate((True, False)):
        lev = batch_size_response(
            samples, bs, steps=steps, beta2=rf_beta2, scale_by_batch=scale, seed=seed
        )
        out[0, js] = [1.0 / (lev[b] + damping) for b in bs]
        out[1, js] = [
            if_shampoo_step_scale(
                samples, b, scale_by_batch=scale, steps=steps, damping=damping, seed=seed
            )
            for b in bs
        ]
    coords = {"rf_method": ["rf_rmsprop", "if_shampoo"], "b_scaling": ["with_B", "without_B"],
              "batch_size": bs}  # fmt: skip
    return xr.DataArray(out, coords=coords, dims=list(coords))


class KfacIfShampoo(NamedTuple):
    """IF-Shampoo driven by K-FAC factors: its inverse ``left ⊗ right`` (``CCᵀ``, ``KKᵀ``),
    the last residual ``‖m_C‖`` and the K-FAC factors ``a_out = E[δδᵀ]``, ``a_in = E[aaᵀ]``."""

    left: np.ndarray
    right: np.ndarray
    residual: float
    a_out: np.ndarray
    a_in: np.ndarray


def kfac_if_shampoo(
    activations, backprops, *, damping: float, steps: int = 400, beta2: float = 0.1
) -> KfacIfShampoo:
    """IF-Shampoo's multiplicative, inverse-free update driven by K-FAC factors (P2-29).

    ``m_C = [tr(KᵀA_inK)·CᵀA_outC + λ tr(KᵀK)·CᵀC − n I]/(2n)`` (and symmetrically for
    ``K``), ``C ← C(I − β₂ m_C/max(1, ‖m_C‖))``: A.9 of P2 with ``E[G KKᵀ Gᵀ]`` replaced by
    its K-FAC form ``tr(KᵀA_inK) A_out``. Its fixed point ``CCᵀ ⊗ KKᵀ`` is the inverse of
    the damped K-FAC fixed point (``reference.kfac_damped_flip_flop``).

    Args:
        activations: ``(N, n)`` layer inputs ``a``; backprops: ``(N, m)`` output gradients
            ``δ`` (``G = δaᵀ``).
        damping: ``λ ≥ 0``. steps: updates from ``C = I, K = I``. beta2: step size.
    """
    damping = check_number(damping, "damping", low=0.0)
    steps = check_number(steps, "steps", low=1, integer=True)
    beta2 = check_number(beta2, "beta2", low=0.0, low_open=True)
    acts, backs = np.asarray(activations, np.float32), np.asarray(backprops, np.float32)
    if acts.ndim != 2 or backs.ndim != 2 or acts.shape[0] != backs.shape[0]:
        raise ValueError(
            f"activations (N, n) and backprops (N, m) must share N; got {acts.shape}, {backs.shape}"
        )
    a_out = jnp.asarray(backs.T @ backs / backs.shape[0], jnp.float32)
    a_in = jnp.asarray(acts.T @ acts / acts.shape[0], jnp.float32)
    m, n, lam = a_out.shape[0], a_in.shape[0], damping

    @jax.jit
    def step(c, k):
        tk, tc = jnp.trace(k.T @ a_in @ k), jnp.trace(c.T @ a_out @ c)
        mc = (tk * c.T @ a_out @ c + lam * jnp.sum(k * k) * c.T @ c - n * jnp.eye(m)) / (2 * n)
        mk = (tc * k.T @ a_in @ k + lam * jnp.sum(c * c) * k.T @ k - m * jnp.eye(n)) / (2 * m)
        lc = beta2 / jnp.maximum(1.0, jnp.linalg.norm(mc))
        lk = beta2 / jnp.maximum(1.0, jnp.linalg.norm(mk))
        return c @ (jnp.eye(m) - lc * mc), k @ (jnp.eye(n) - lk * mk), jnp.linalg.norm(mc)

    c, k, res = jnp.eye(m), jnp.eye(n), np.nan
    for _ in range(steps):
        c, k, r = step(c, k)
        res = float(r)
    f64 = functools.partial(np.asarray, dtype=np.float64)
    return KfacIfShampoo(f64(c @ c.T), f64(k @ k.T), res, f64(a_out), f64(a_in))


#: The operations ``if_shampoo_timings`` times (per size, interleaved).
IF_TIMING_OPS = ("eigh_f32", "if_update_bf16", "if_update_f32", "matmul_bf16", "matmul_f32")


def if_shampoo_timings(sizes: Sequence[int], repeats: int = 7, *, seed: int = 0):
    """Seconds per call of one IF-Shampoo update (bf16, f32), one f32 ``eigh`` and one
    matmul (bf16, f32) on ``d×d`` matrices, per size, in interleaved rounds
    (``precond_lab.timing.interleaved``: compilation in the warm-up, rotated order).

    Returns:
        A DataArray on ``(size, timing_op, timing_round)`` (``timing_op``:
        ``IF_TIMING_OPS``).

    Raises:
        ValueError: no sizes, a size < 1, or ``repeats`` < 5.
    """
    import xarray as xr

    from .. import timing

    if len(sizes) == 0:
        raise ValueError("sizes must name at least one size")
    sizes = [check_number(d, "sizes", low=1, integer=True) for d in sizes]
    repeats = check_number(repeats, "repeats", low=5, integer=True)
    est = ESTIMATORS["if_shampoo"](damping=1e-3, batch_size=32)
    eigh, mm = jax.jit(jnp.linalg.eigh), jax.jit(lambda a, b: a @ b)
    rng = np.random.default_rng(seed)
    out = np.zeros((len(sizes), len(IF_TIMING_OPS), repeats))
    for i, d in enumerate(sizes):
        a = rng.standard_normal((d, d)).astype(np.float32)
        s = jnp.asarray(a @ a.T / d + np.eye(d, dtype=np.float32))
        g = jnp.asarray(rng.standard_normal((d, d)).astype(np.float32) / d)
        args = {"eigh_f32": (eigh, s)}
        for dt, tag in ((jnp.bfloat16, "bf16"), (jnp.float32, "f32")):
            args[f"if_update_{tag}"] = (est.update, est.init(g.astype(dt)), g.astype(dt))
            args[f"matmul_{tag}"] = (mm, s.astype(dt), s.astype(dt))
        ops = {k: (lambda f=args[k][0], a=args[k][1:]: f(*a)) for k in IF_TIMING_OPS}
        t = timing.interleaved(ops, repeats=repeats)
        out[i] = [t.seconds[k] for k in IF_TIMING_OPS]
    coords = {"size": sizes, "timing_op": list(IF_TIMING_OPS), "timing_round": np.arange(repeats)}
    return xr.DataArray(out, coords=coords, dims=list(coords))
