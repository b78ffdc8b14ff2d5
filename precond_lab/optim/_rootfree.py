"""IF-Shampoo and RF-RMSProp (root-free, inverse-free) as optax transforms.

Notation of the root-free paper (as the ``sirfshampoo`` code): ``learning_rate`` is ``β₁``,
``beta2`` the preconditioner step, ``alpha1`` the parameter momentum, ``alpha2`` the
Riemannian momentum, ``damping`` ``λ``, ``weight_decay`` ``κ``, ``batch_size`` ``B`` (the
loss is a mini-batch *mean*, so the gradient outer products are scaled by ``B``; required).

IF-Shampoo, one factor ``K_j`` (``d_j×d_j``, ``K_j = init_scale·I`` at the start) per mode,
``S^{-1} ≈ ⊗_j K_jK_jᵀ``. Every ``frequency`` steps (from step 0), with ``H = √B·G ×_j K_jᵀ``
(2-D: ``√B·CᵀGK``) and ``D_{−j} = Π_{i≠j} d_i``, all modes from the old factors:

    m_j ← α₂ m_j + (1−α₂)·{ [H_(j)H_(j)ᵀ + λ Π_{i≠j}Tr(K_iᵀK_i) K_jᵀK_j] / (2D_{−j}) − I/2 },
    K_j ← K_j (I − β₂ m_j / max(1, ‖m_j‖_F))      (first-order matrix exponential).

Then ``d = G ×_j K_jK_jᵀ + κW``, ``μ ← α₁μ + d`` and ``W ← W − β₁μ``: the preconditioner
already includes the current gradient, the momentum has no ``(1−α₁)`` factor.

RF-RMSProp: ``s ← (1−β₂)s + β₂·B·G⊙G`` from ``s₀ = 1``, ``d = G/(s+λ) + κW``,
``μ ← α₁μ + d``, ``W ← W − β₁μ``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from ._common import (
    conform,
    map_leaves,
    mode_dot,
    mode_gram,
    other_size,
    project,
    resolve_dtype,
    scale_and_decay,
    with_fallback,
    work_shape,
)
from ._kl import KronState

__all__ = [
    "IFShampooLeaf",
    "RFRMSPropLeaf",
    "if_shampoo",
    "rf_rmsprop",
    "scale_by_if_shampoo",
    "scale_by_rf_rmsprop",
]


class IFShampooLeaf(NamedTuple):
    """Per-leaf state of IF-Shampoo.

    Attributes:
        ks: inverse-free factors ``K_j`` (2-D: ``(C, K)``).
        ms: their Riemannian momenta ``m_j``.
        mu: parameter momentum ``μ`` (the leaf's working shape).
    """

    ks: tuple[jax.Array, ...]
    ms: tuple[jax.Array, ...]
    mu: jax.Array


class RFRMSPropLeaf(NamedTuple):
    """Per-leaf state of RF-RMSProp.

    Attributes:
        mu: parameter momentum ``μ``.
        s: the diagonal ``s`` (step ``G/(s+λ)``).
    """

    mu: jax.Array
    s: jax.Array


def _check_batch(batch_size: int) -> float:
    if int(batch_size) != batch_size or int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive integer (B), got {batch_size!r}")
    return float(batch_size)


def _momentum_step(g, mu, p, alpha1, weight_decay):
    d = g if not weight_decay else g + weight_decay * p.reshape(g.shape).astype(g.dtype)
    return alpha1 * mu + d if alpha1 else d


def if_shampoo_factor_step(ks, ms, g, *, bsz, beta2, alpha2, damping, normalize):
    """One IF-Shampoo factor update (module doc) from gradient ``g``; returns ``(ks, ms)``."""
    k = g.ndim
    h = project(math.sqrt(bsz) * g, ks)
    traces = [jnp.sum(kk * kk) for kk in ks]  # Tr(KᵀK)
    new_k, new_m = [], []
    for j in range(k):
        d_other = other_size(g.shape, j)
        tr = math.prod(traces[i] for i in range(k) if i != j)
        kj = ks[j]
        step = (mode_gram(h, j) + damping * tr * (kj.T @ kj)) / (2 * d_other)
        step = step - 0.5 * jnp.eye(kj.shape[0], dtype=kj.dtype)
        m = alpha2 * ms[j] + (1 - alpha2) * step
        lr = beta2 / jnp.maximum(1.0, jnp.linalg.norm(m)) if normalize else beta2
        new_k.append(kj - lr * (kj @ m))
        new_m.append(m)
    return tuple(new_k), tuple(new_m)


def scale_by_if_shampoo(
    *,
    batch_size: int,
    beta2: float = 0.01,
    alpha1: float = 0.9,
    alpha2: float = 0.5,
    damping: float = 1e-3,
    weight_decay: float = 0.0,
    frequency: int = 1,
    normalize: bool = True,
    init_scale: float = 1.0,
    tensor_mode: str = "modewise",
    state_dtype: Any = None,
) -> optax.GradientTransformation:
    """IF-Shampoo's momentum ``μ`` (module doc); chain with a ``−β₁`` scaling.

    Args:
        batch_size: ``B``.
        beta2: preconditioner step ``β₂``.
        alpha1: parameter momentum ``α₁``.
        alpha2: Riemannian momentum ``α₂``.
        damping: ``λ``.
        weight_decay: ``κ`` (added to the direction before the momentum).
        frequency: update the factors every ``frequency`` steps (≥ 1).
        normalize: divide the factor step by ``max(1, ‖m‖_F)`` (the released code does).
        init_scale: ``K_j = init_scale·I`` at the start.
        tensor_mode: ``"modewise"`` or ``"matrix"``.
        state_dtype: the state's dtype (None: the parameter's); the update is matmul-only.

    Returns:
        The transformation (state ``KronState`` of
        ``IFShampooLeaf``).
    """
    bsz = _check_batch(batch_size)
    b2, a1, a2, lam = float(beta2), float(alpha1), float(alpha2), float(damping)
    wd, frequency, normalize = float(weight_decay), int(frequency), bool(normalize)
    if frequency < 1:
        raise ValueError(f"frequency must be ≥ 1, got {frequency}")

    def init(params):
        def leaf(p):
            shape = work_shape(jnp.shape(p), tensor_mode)
            dt = resolve_dtype(state_dtype, p)
            ks = tuple(float(init_scale) * jnp.eye(d, dtype=dt) for d in shape)
            ms = tuple(jnp.zeros((d, d), dt) for d in shape)
            return IFShampooLeaf(ks=ks, ms=ms, mu=jnp.zeros(shape, dt))

        return KronState(jnp.zeros([], jnp.int32), jax.tree.map(leaf, params))

    def update(updates, state, params=None):
        if wd and params is None:
            raise ValueError("weight decay needs the params: call update(g, state, params)")
        params = updates if params is None else params
        t = state.count
        state = state._replace(leaves=conform(state.leaves, init, updates))

        def one(u, leaf, p):
            g = u.reshape(leaf.mu.shape).astype(leaf.mu.dtype)
            ks, ms = lax.cond(
                t % frequency == 0,
                lambda: if_shampoo_factor_step(
                    leaf.ks,
                    leaf.ms,
                    g,
                    bsz=bsz,
                    beta2=b2,
                    alpha2=a2,
                    damping=lam,
                    normalize=normalize,
                ),
                lambda: (leaf.ks, leaf.ms),
            )
            d = g
            for j, kj in enumerate(ks):
                d = mode_dot(d, kj @ kj.T, j)
            mu = _momentum_step(d, leaf.mu, p, a1, wd)
            return mu.reshape(u.shape).astype(u.dtype), IFShampooLeaf(ks=ks, ms=ms, mu=mu)

        new_u, leaves = map_leaves(one, updates, state.leaves, params)
        return new_u, KronState(optax.safe_increment(t), leaves)

    return optax.GradientTransformation(init, update)


def scale_by_rf_rmsprop(
    *,
    batch_size: int,
    beta2: float = 0.01,
    alpha1: float = 0.9,
    damping: float = 1e-4,
    weight_decay: float = 0.0,
    s0: float = 1.0,
    scale_by_batch: bool = True,
    state_dtype: Any = None,
) -> optax.GradientTransformation:
    """RF-RMSProp's momentum ``μ`` (module doc); chain with a ``−β₁`` scaling.

    Args:
        batch_size: ``B``.
        beta2: weight of the new term ``β₂`` (the code's ``1 − alpha``).
        alpha1: momentum ``α₁`` (0: none).
        damping: ``λ`` (the code's ``eps``).
        weight_decay: ``κ``.
        s0: initial ``s`` (1 as the paper; 0 is the ``dummy_init`` ablation).
        scale_by_batch: multiply by ``B`` (False: the ``dummy_scaling`` ablation).
        state_dtype: the state's dtype (None: the parameter's).

    Returns:
        The transformation (state ``KronState`` of
        ``RFRMSPropLeaf``).
    """
    bsz = _check_batch(batch_size) if scale_by_batch else 1.0
    b2, a1, lam, wd, s0 = float(beta2), float(alpha1), float(damping), float(weight_decay), s0

    def init(params):
        def leaf(p):
            dt = resolve_dtype(state_dtype, p)
            return RFRMSPropLeaf(mu=jnp.zeros(jnp.shape(p), dt), s=jnp.full(jnp.shape(p), s0, dt))

        return KronState(jnp.zeros([], jnp.int32), jax.tree.map(leaf, params))

    def update(updates, state, params=None):
        if wd and params is None:
            raise ValueError("weight decay needs the params: call update(g, state, params)")
        params = updates if params is None else params
        state = state._replace(leaves=conform(state.leaves, init, updates))

        def one(u, leaf, p):
            g = u.astype(leaf.s.dtype)
            s = (1 - b2) * leaf.s + b2 * bsz * g * g
            mu = _momentum_step(g / (s + lam), leaf.mu, p, a1, wd)
            return mu.astype(u.dtype), RFRMSPropLeaf(mu=mu, s=s)

        new_u, leaves = map_leaves(one, updates, state.leaves, params)
        return new_u, KronState(optax.safe_increment(state.count), leaves)

    return optax.GradientTransformation(init, update)


def rf_rmsprop(
    learning_rate: Any = 1e-3, *, batch_size: int, **kwargs: Any
) -> optax.GradientTransformation:
    """RF-RMSProp on every leaf: ``W ← W − β₁μ``.

    Args:
        learning_rate: ``β₁`` (float or schedule).
        batch_size: ``B`` (required: the loss is a mini-batch mean).
        **kwargs: ``scale_by_rf_rmsprop``'s other arguments.

    Returns:
        The optimiser.
    """
    return optax.chain(
        scale_by_rf_rmsprop(batch_size=batch_size, **kwargs), scale_and_decay(learning_rate, 0.0)
    )


def if_shampoo(
    learning_rate: Any = 1e-3,
    *,
    batch_size: int,
    beta2: float = 0.01,
    alpha1: float = 0.9,
    alpha2: float = 0.5,
    damping: float = 1e-3,
    weight_decay: float = 0.0,
    labels: Any = None,
    max_dim: int = 10_000,
    fallback: optax.GradientTransformation | None = None,
    **kwargs: Any,
) -> optax.GradientTransformation:
    """IF-Shampoo on Kronecker leaves, RF-RMSProp (the diagonal variant) on the others.

    Args:
        learning_rate: ``β₁`` (float or schedule).
        batch_size: ``B`` (required).
        beta2: see ``scale_by_if_shampoo``; shared with the RF-RMSProp fallback.
        alpha1: see ``scale_by_if_shampoo``; shared with the RF-RMSProp fallback.
        alpha2: see ``scale_by_if_shampoo`` (IF-Shampoo only).
        damping: see ``scale_by_if_shampoo``; shared with the RF-RMSProp fallback.
        weight_decay: see ``scale_by_if_shampoo``; shared with the RF-RMSProp fallback.
        labels: leaf partition (see ``with_fallback``).
        max_dim: leaf partition (see ``with_fallback``).
        fallback: transformation for the other leaves.
        **kwargs: ``scale_by_if_shampoo``'s ``frequency``, ``normalize``,
            ``init_scale``, ``tensor_mode``, ``state_dtype``.

    Returns:
        The optimiser.
    """
    common = dict(
        batch_size=batch_size,
        beta2=beta2,
        alpha1=alpha1,
        damping=damping,
        weight_decay=weight_decay,
    )
    kron = optax.chain(
        scale_by_if_shampoo(alpha2=alpha2, **common, **kwargs), scale_and_decay(learning_rate, 0.0)
    )
    if fallback is None:
        dtype = {"state_dtype": kwargs["state_dtype"]} if "state_dtype" in kwargs else {}
        fallback = rf_rmsprop(learning_rate, **common, **dtype)
    return with_fallback(kron, fallback, labels=labels, max_dim=max_dim)
