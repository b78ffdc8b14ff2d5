"""Online IF-Shampoo, RF-RMSProp (root-free, Lin et al. 2024) and Adam's diagonal.

Each factory returns an ``OnlineEstimator`` whose state is a
``NamedTuple`` (``IFShampooState``, ``RFRMSPropState``, ``AdamState``).
Hyper-parameters follow P2's notation as in the ``sirfshampoo`` docstring: ``beta2``
is the preconditioner learning rate (weight of the *new* term), ``alpha2`` the
Riemannian momentum, ``damping`` is ``λ``, ``batch_size`` is ``B``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .._validation import check_number
from ..structures import Diagonal, EigenKronecker
from ._state import OnlineEstimator, batch_factor, batch_left, batch_right, batch_square

__all__ = [
    "AdamState",
    "IFShampooState",
    "RFRMSPropState",
    "adam",
    "if_shampoo",
    "if_shampoo_stationarity",
    "rf_rmsprop",
]


# --------------------------------------------------------------------------- IF-Shampoo
class IFShampooState(NamedTuple):
    """IF-Shampoo's inverse-free factors and their Riemannian momenta.

    Attributes:
        c: ``C`` (``m×m``), with ``(CCᵀ)^{-1}`` the left factor of the approximation.
        k: ``K`` (``n×n``).
        momentum_c: ``m_C`` (``m×m``).
        momentum_k: ``m_K`` (``n×n``).
        step: number of updates applied (the first gradient counts as one).
    """

    c: jax.Array
    k: jax.Array
    momentum_c: jax.Array
    momentum_k: jax.Array
    step: jax.Array


def if_shampoo_stationarity(
    state: IFShampooState, g: jax.Array, *, damping: float, batch_size: int = 1
) -> tuple[jax.Array, jax.Array]:
    """The instantaneous ``(m_C, m_K)`` targets of IF-Shampoo (zero at the fixed point).

    ``m_C = (1/2d_i)[Cᵀ B·E[G KKᵀ Gᵀ] C + λ tr(KᵀK) CᵀC − d_i I]`` and symmetrically.

    Args:
        state: the IF-Shampoo state (only ``c`` and ``k`` are read).
        g: a gradient ``(m, n)`` or per-example batch ``(N, m, n)``.
        damping: ``λ``.
        batch_size: ``B`` for single mini-batch gradients.

    Returns:
        ``(m_C, m_K)``.
    """
    c, k, lam = state.c, state.k, damping
    m, n = g.shape[-2:]
    bsz = batch_factor(g, batch_size)
    kk = k @ k.T
    cc = c @ c.T
    tc = c.T @ (bsz * batch_left(g, kk)) @ c + lam * jnp.trace(k.T @ k) * (c.T @ c)
    tk = k.T @ (bsz * batch_right(g, cc)) @ k + lam * jnp.trace(c.T @ c) * (k.T @ k)
    mc = (tc - n * jnp.eye(m, dtype=c.dtype)) / (2 * n)
    mk = (tk - m * jnp.eye(n, dtype=k.dtype)) / (2 * m)
    return mc, mk


@functools.cache
def if_shampoo(
    *,
    beta2: float = 0.01,
    alpha2: float = 0.5,
    damping: float = 1e-3,
    batch_size: int = 1,
    normalize: bool = True,
    init_scale: float = 1.0,
) -> OnlineEstimator:
    """IF-Shampoo's multiplicative, inverse-free update (Lin et al. 2024).

    ``init``: ``C = K = init_scale·I``, zero momenta, then one update with ``G0``.
    ``update``: momentum ``m ← α₂m + (1−α₂)·target`` and ``C ← C(I − β₂ m_C)`` (and
    ``K``). The approximation is ``(CCᵀ)^{-1} ⊗ (KKᵀ)^{-1}`` in eigen form (damping built
    in; power −1 gives ``CCᵀ ⊗ KKᵀ``); reading it needs ``eigh`` of ``CCᵀ`` and ``KKᵀ``
    (float32/float64), while the update itself is matmul-only.

    Args:
        beta2: preconditioner step ``β₂`` in ``C ← C(I − β₂ m_C)``.
        alpha2: Riemannian momentum ``α₂``.
        damping: ``λ``.
        batch_size: ``B`` for single mini-batch gradients (scaled by ``√B``).
        normalize: divide the step by ``max(1, ‖m‖_F)`` as the released code does.
        init_scale: ``C₀ = K₀ = init_scale·I``.

    Returns:
        The estimator (state ``IFShampooState``; ``internal_damping=True``).
    """
    a2, lam = float(alpha2), check_number(damping, "damping", low=0.0)
    b2 = check_number(beta2, "beta2", low=0.0, high=1.0, low_open=True)  # weight of the new term
    bsz, normalize, init_scale = int(batch_size), bool(normalize), float(init_scale)

    @jax.jit
    def update(state: IFShampooState, g: jax.Array) -> IFShampooState:
        tc, tk = if_shampoo_stationarity(state, g, damping=lam, batch_size=bsz)
        mc = a2 * state.momentum_c + (1 - a2) * tc
        mk = a2 * state.momentum_k + (1 - a2) * tk
        lc, lk = b2, b2
        if normalize:
            lc = b2 / jnp.maximum(1.0, jnp.linalg.norm(mc))
            lk = b2 / jnp.maximum(1.0, jnp.linalg.norm(mk))
        c = state.c @ (jnp.eye(mc.shape[0], dtype=mc.dtype) - lc * mc)
        k = state.k @ (jnp.eye(mk.shape[0], dtype=mk.dtype) - lk * mk)
        return IFShampooState(c, k, mc, mk, state.step + 1)

    def init(g0: jax.Array) -> IFShampooState:
        g0 = jnp.asarray(g0)
        m, n = g0.shape[-2:]
        first = IFShampooState(
            c=init_scale * jnp.eye(m, dtype=g0.dtype),
            k=init_scale * jnp.eye(n, dtype=g0.dtype),
            momentum_c=jnp.zeros((m, m), g0.dtype),
            momentum_k=jnp.zeros((n, n), g0.dtype),
            step=jnp.asarray(0, jnp.int32),
        )
        return update(first, g0)

    def approximation(state: IFShampooState) -> EigenKronecker:
        wc, qc = jnp.linalg.eigh(state.c @ state.c.T)
        wk, qk = jnp.linalg.eigh(state.k @ state.k.T)
        return EigenKronecker(qc, qk, 1.0 / jnp.outer(wc, wk))

    return OnlineEstimator(init, update, approximation, 1.0, internal_damping=True)


# -------------------------------------------------------------------------- RF-RMSProp
class RFRMSPropState(NamedTuple):
    """RF-RMSProp's diagonal.

    Attributes:
        s: ``s`` (``m×n``); the step is ``g/(s + λ)``.
        step: number of updates applied (the first gradient counts as one).
    """

    s: jax.Array
    step: jax.Array


@functools.cache
def rf_rmsprop(
    *,
    beta2: float = 0.01,
    batch_size: int = 1,
    s0: float = 1.0,
    scale_by_batch: bool = True,
) -> OnlineEstimator:
    """RF-RMSProp: ``s ← (1−β₂)s + β₂·B·g⊙g`` from ``s = s₀``, then one update with ``G0``.

    The approximation is ``diag(s)``; the RF-RMSProp step is ``g/(s + λ)`` (power −1).

    Args:
        beta2: weight of the new term.
        batch_size: ``B`` (1 is used for per-example batches).
        s0: initial value (P2: ``s₀ = 1``; ``0`` reproduces RMSProp's ``ŝ₀ = 0``, the
            ``dummy_init`` ablation).
        scale_by_batch: multiply by ``B`` (False: the ``dummy_scaling`` ablation).

    Returns:
        The estimator (state ``RFRMSPropState``).
    """
    b2 = check_number(beta2, "beta2", low=0.0, high=1.0, low_open=True)  # weight of the new term
    bsz, s0, scale = int(batch_size), float(s0), bool(scale_by_batch)

    @jax.jit
    def update(state: RFRMSPropState, g: jax.Array) -> RFRMSPropState:
        factor = batch_factor(g, bsz) if scale else 1.0
        s = (1 - b2) * state.s + b2 * factor * batch_square(g)
        return RFRMSPropState(s, state.step + 1)

    def init(g0: jax.Array) -> RFRMSPropState:
        g0 = jnp.asarray(g0)
        first = RFRMSPropState(jnp.full(g0.shape[-2:], s0, g0.dtype), jnp.asarray(0, jnp.int32))
        return update(first, g0)

    def approximation(state: RFRMSPropState) -> Diagonal:
        return Diagonal(state.s)

    return OnlineEstimator(init, update, approximation, 1.0)


# --------------------------------------------------------------------------------- Adam
class AdamState(NamedTuple):
    """Adam's second moment (as optax's ``ScaleByAdamState.nu``).

    Attributes:
        nu: ``v`` (``m×n``), EMA of ``g⊙g`` from zero.
        step: number of updates applied (the first gradient counts as one).
    """

    nu: jax.Array
    step: jax.Array


@functools.cache
def adam(*, beta2: float = 0.999) -> OnlineEstimator:
    """Adam's second moment ``v ← β₂v + (1−β₂) g⊙g`` from zero, fed ``G0``.

    The approximation is ``diag(v̂)``, ``v̂ = v/(1−β₂^t)``; Adam's step is
    ``g/(√v̂ + ε)`` (power −1/2).

    Args:
        beta2: weight of the old second moment.

    Returns:
        The estimator (state ``AdamState``).
    """
    b2 = check_number(beta2, "beta2", low=0.0, high=1.0, high_open=True)

    @jax.jit
    def update(state: AdamState, g: jax.Array) -> AdamState:
        return AdamState(b2 * state.nu + (1 - b2) * batch_square(g), state.step + 1)

    def init(g0: jax.Array) -> AdamState:
        g0 = jnp.asarray(g0)
        return update(AdamState(jnp.zeros(g0.shape[-2:], g0.dtype), jnp.asarray(0, jnp.int32)), g0)

    def approximation(state: AdamState) -> Diagonal:
        corr = 1.0 - b2**state.step
        return Diagonal(state.nu / corr)

    return OnlineEstimator(init, update, approximation, 0.5)
