"""Online IF-Shampoo, RF-RMSProp (root-free, theory.md A.9) and Adam's diagonal.

Hyper-parameters follow P2's notation as in the ``sirfshampoo`` docstring: ``beta2``
is the preconditioner learning rate (weight of the *new* term), ``alpha2`` the
Riemannian momentum, ``damping`` is ``λ``, ``batch_size`` is ``B``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..structures import Diagonal, EigenKronecker
from ._state import EstimatorState, batch_factor, batch_left, batch_right, batch_square

__all__ = [
    "adam_init",
    "adam_preconditioner",
    "adam_update",
    "if_shampoo_init",
    "if_shampoo_preconditioner",
    "if_shampoo_stationarity",
    "if_shampoo_update",
    "rf_rmsprop_init",
    "rf_rmsprop_preconditioner",
    "rf_rmsprop_update",
]


def _hp(**kw):
    return tuple(sorted(kw.items()))


# --------------------------------------------------------------------------- IF-Shampoo
def if_shampoo_init(
    g0: jax.Array,
    *,
    beta2: float = 0.01,
    alpha2: float = 0.5,
    damping: float = 1e-3,
    batch_size: int = 1,
    normalize: bool = True,
    init_scale: float = 1.0,
) -> EstimatorState:
    """``C = K = init_scale·I``, zero momenta ``m_C, m_K``, then one update with ``G0``.

    Args:
        g0: first gradient ``(m, n)`` (scaled by ``√B``) or per-example batch ``(N, m, n)``.
        beta2: preconditioner step ``β₂`` in ``C ← C(I − β₂ m_C)``.
        alpha2: Riemannian momentum ``α₂``.
        damping: ``λ``.
        batch_size: ``B`` for single mini-batch gradients.
        normalize: divide the step by ``max(1, ‖m‖_F)`` as the released code does.
        init_scale: ``C₀ = K₀ = init_scale·I``.
    """
    g0 = jnp.asarray(g0)
    m, n = g0.shape[-2:]
    arrays = {
        "c": init_scale * jnp.eye(m, dtype=g0.dtype),
        "k": init_scale * jnp.eye(n, dtype=g0.dtype),
        "mc": jnp.zeros((m, m), g0.dtype),
        "mk": jnp.zeros((n, n), g0.dtype),
        "step": jnp.asarray(0, jnp.int32),
    }
    hp = _hp(
        beta2=float(beta2),
        alpha2=float(alpha2),
        damping=float(damping),
        batch_size=int(batch_size),
        normalize=bool(normalize),
    )
    return if_shampoo_update(EstimatorState("if_shampoo", arrays, hp), g0)


def if_shampoo_stationarity(state: EstimatorState, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The instantaneous ``(m_C, m_K)`` targets of theory.md A.9 (zero at the fixed point).

    ``m_C = (1/2d_i)[Cᵀ B·E[G KKᵀ Gᵀ] C + λ tr(KᵀK) CᵀC − d_i I]`` and symmetrically.
    """
    hp = state.hp
    c, k, lam = state["c"], state["k"], hp["damping"]
    m, n = g.shape[-2:]
    bsz = batch_factor(g, hp["batch_size"])
    kk = k @ k.T
    cc = c @ c.T
    tc = c.T @ (bsz * batch_left(g, kk)) @ c + lam * jnp.trace(k.T @ k) * (c.T @ c)
    tk = k.T @ (bsz * batch_right(g, cc)) @ k + lam * jnp.trace(c.T @ c) * (k.T @ k)
    mc = (tc - n * jnp.eye(m, dtype=c.dtype)) / (2 * n)
    mk = (tk - m * jnp.eye(n, dtype=k.dtype)) / (2 * m)
    return mc, mk


@jax.jit
def if_shampoo_update(state: EstimatorState, g: jax.Array) -> EstimatorState:
    """Momentum ``m ← α₂m + (1−α₂)·target`` and the multiplicative ``C ← C(I − β₂ m_C)``."""
    hp = state.hp
    a2, b2 = hp["alpha2"], hp["beta2"]
    tc, tk = if_shampoo_stationarity(state, g)
    mc = a2 * state["mc"] + (1 - a2) * tc
    mk = a2 * state["mk"] + (1 - a2) * tk
    lc, lk = b2, b2
    if hp["normalize"]:
        lc = b2 / jnp.maximum(1.0, jnp.linalg.norm(mc))
        lk = b2 / jnp.maximum(1.0, jnp.linalg.norm(mk))
    c = state["c"] @ (jnp.eye(mc.shape[0], dtype=mc.dtype) - lc * mc)
    k = state["k"] @ (jnp.eye(mk.shape[0], dtype=mk.dtype) - lk * mk)
    return state.replace(c=c, k=k, mc=mc, mk=mk, step=state["step"] + 1)


def if_shampoo_preconditioner(state: EstimatorState) -> EigenKronecker:
    """``(CCᵀ)^{-1} ⊗ (KKᵀ)^{-1}`` in eigen form (damping built in; power −1 gives ``CCᵀ ⊗ KKᵀ``).

    Reading the structure needs ``eigh`` of ``CCᵀ`` and ``KKᵀ`` (float32/float64); the
    estimator's update itself is matmul-only.
    """
    wc, qc = jnp.linalg.eigh(state["c"] @ state["c"].T)
    wk, qk = jnp.linalg.eigh(state["k"] @ state["k"].T)
    return EigenKronecker(qc, qk, 1.0 / jnp.outer(wc, wk))


# -------------------------------------------------------------------------- RF-RMSProp
def rf_rmsprop_init(
    g0: jax.Array,
    *,
    beta2: float = 0.01,
    batch_size: int = 1,
    s0: float = 1.0,
    scale_by_batch: bool = True,
) -> EstimatorState:
    """``s = s₀`` (P2: ``s₀ = 1``), then one update with ``G0``.

    Args:
        beta2: weight of the new term in ``s ← (1−β₂)s + β₂·B·g⊙g``.
        batch_size: ``B``.
        s0: initial value (``0`` reproduces RMSProp's ``ŝ₀ = 0``, the ``dummy_init`` ablation).
        scale_by_batch: multiply by ``B`` (False: the ``dummy_scaling`` ablation).
    """
    g0 = jnp.asarray(g0)
    arrays = {"s": jnp.full(g0.shape[-2:], s0, g0.dtype), "step": jnp.asarray(0, jnp.int32)}
    hp = _hp(beta2=float(beta2), batch_size=int(batch_size), scale_by_batch=bool(scale_by_batch))
    return rf_rmsprop_update(EstimatorState("rf_rmsprop", arrays, hp), g0)


@jax.jit
def rf_rmsprop_update(state: EstimatorState, g: jax.Array) -> EstimatorState:
    """``s ← (1−β₂)s + β₂·B·g⊙g`` (``B = 1`` for per-example batches)."""
    hp = state.hp
    bsz = batch_factor(g, hp["batch_size"]) if hp["scale_by_batch"] else 1.0
    s = (1 - hp["beta2"]) * state["s"] + hp["beta2"] * bsz * batch_square(g)
    return state.replace(s=s, step=state["step"] + 1)


def rf_rmsprop_preconditioner(state: EstimatorState) -> Diagonal:
    """``diag(s)``; the RF-RMSProp step is ``g/(s + λ)`` (power −1)."""
    return Diagonal(state["s"])


# --------------------------------------------------------------------------------- Adam
def adam_init(g0: jax.Array, *, beta2: float = 0.999) -> EstimatorState:
    """Adam's second moment from zero, fed ``G0``."""
    g0 = jnp.asarray(g0)
    arrays = {"v": jnp.zeros(g0.shape[-2:], g0.dtype), "step": jnp.asarray(0, jnp.int32)}
    return adam_update(EstimatorState("adam", arrays, _hp(beta2=float(beta2))), g0)


@jax.jit
def adam_update(state: EstimatorState, g: jax.Array) -> EstimatorState:
    """``v ← β₂v + (1−β₂) g⊙g``."""
    b2 = state.hp["beta2"]
    return state.replace(v=b2 * state["v"] + (1 - b2) * batch_square(g), step=state["step"] + 1)


def adam_preconditioner(state: EstimatorState) -> Diagonal:
    """``diag(v̂)``, ``v̂ = v/(1−β₂^t)``; Adam's step is ``g/(√v̂ + ε)`` (power −1/2)."""
    corr = 1.0 - state.hp["beta2"] ** state["step"]
    return Diagonal(state["v"] / corr)
