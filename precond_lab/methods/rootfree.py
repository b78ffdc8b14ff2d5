"""IF-Shampoo and RF-RMSProp (root-free, inverse-free; Lin et al. 2024), and Adam.

Notation of the root-free paper (as the ``sirfshampoo`` code): ``beta2`` is the
preconditioner step, ``alpha1`` the parameter momentum, ``alpha2`` the Riemannian
momentum, ``damping`` ``λ``, ``weight_decay`` ``κ``, ``batch_size`` ``B``: the loss is a
mini-batch *mean*, so the outer products of a mini-batch gradient are scaled by ``B``; a
batch of per-example gradients (an online estimator's input) is not scaled, its mean outer
product already estimates ``E[ggᵀ]``.

IF-Shampoo, one factor ``K_j`` (``d_j×d_j``, ``K_j = init_scale·I`` at the start) per mode,
``S^{-1} ≈ ⊗_j K_jK_jᵀ``. Every ``frequency`` steps (from step 0), with
``H = √B·G ×_j K_jᵀ`` and ``D_{−j} = Π_{i≠j} d_i``, all modes from the old factors:

    m_j ← α₂ m_j + (1−α₂)·{ [E[H_(j)H_(j)ᵀ] + λ Π_{i≠j}Tr(K_iᵀK_i) K_jᵀK_j] / (2D_{−j}) − I/2 },
    K_j ← K_j (I − β₂ m_j / max(1, ‖m_j‖_F))      (first-order matrix exponential).

The braces are ``if_shampoo_stationarity`` (zero at the fixed point). Then
``d = G ×_j K_jK_jᵀ + κW``, ``μ ← α₁μ + d``; the optimiser steps ``W ← W − β₁μ``. Its ``Σ``
is ``(⊗_j K_jK_jᵀ)^{-1}`` (the damping inside).

RF-RMSProp: ``s ← (1−β₂)s + β₂·B·E[G⊙G]`` from ``s₀ = 1``, ``d = G/(s+λ) + κW``,
``μ ← α₁μ + d``; its ``Σ`` is ``diag(s)`` (step power 1).

Adam (the baseline, as ``optax.scale_by_adam``): ``m ← (1−β₁)G + β₁m``,
``v ← (1−β₂)E[G⊙G] + β₂v``, ``u = m̂/(√(v̂ + ε_root) + ε)``; its ``Σ`` is ``diag(v̂)``,
``v̂ = v/(1−β₂^t)``. The optimiser ``precond_lab.optim.adamw`` runs this rule and equals
``optax.adamw``; the rule is written here so that an online estimator fed per-example
gradients runs the same code.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from ..structures import Diagonal, Kronecker, Structure
from ._core import MethodSpec, Rule, register, two_mode_aliases
from ._hp import hp
from ._ops import cast_like, mode_dot, mode_gram, other_size, project

__all__ = [
    "AdamLeaf",
    "IFShampooLeaf",
    "RFRMSPropLeaf",
    "adam_rule",
    "if_shampoo_rule",
    "if_shampoo_stationarity",
    "rf_rmsprop_rule",
]


class IFShampooLeaf(NamedTuple):
    """Per-leaf state of IF-Shampoo.

    Attributes:
        ks: inverse-free factors ``K_j`` (2-D: ``(C, K)``, also ``c`` and ``k``).
        ms: their Riemannian momenta ``m_j`` (2-D: ``momentum_c``, ``momentum_k``).
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


class AdamLeaf(NamedTuple):
    """Per-leaf state of Adam (``optax.ScaleByAdamState``'s moments and counter).

    Attributes:
        bias: ``1 − β₂^t``, the second moment's bias correction (what a reader needs).
        count: Adam steps taken ``t``.
        mu: first moment ``m``.
        nu: second moment ``v``.
    """

    bias: jax.Array
    count: jax.Array
    mu: jax.Array
    nu: jax.Array


two_mode_aliases(IFShampooLeaf)


def _check_batch(batch_size: Any) -> Any:
    if batch_size is None:
        raise TypeError(
            "batch_size is required (B, the mini-batch size the loss averages over): the "
            "root-free methods scale the gradient outer products by B"
        )
    return hp(batch_size, "batch_size", low=1, integer=True)


def if_shampoo_stationarity(
    state: Any, g: Any, *, damping: float, batch_size: int = 1
) -> tuple[jax.Array, ...]:
    """IF-Shampoo's instantaneous momentum targets ``m_j`` (zero at the fixed point).

    ``m_j = [E[H_(j)H_(j)ᵀ] + λ Π_{i≠j}Tr(K_iᵀK_i) K_jᵀK_j] / (2D_{−j}) − I/2`` with
    ``H = √B·G ×_i K_iᵀ`` (module doc); the rule's own update computes them here.

    Args:
        state: an ``IFShampooLeaf`` or an online ``OnlineState`` of IF-Shampoo.
        g: a gradient (``B`` applies) or a per-example batch ``(N, *modes)`` (mean outer
            product, no ``B``).
        damping: ``λ``.
        batch_size: ``B`` for a mini-batch gradient.

    Returns:
        ``(m_1, …, m_k)`` (2-D: ``(m_C, m_K)``).
    """
    ks = state.ks
    g = jnp.asarray(g)
    per_example = g.ndim == len(ks) + 1
    gb = g if per_example else g[None]
    return _targets(ks, gb, damping=damping, scale=1.0 if per_example else batch_size)


def _targets(ks: tuple[jax.Array, ...], gb: jax.Array, *, damping: Any, scale: Any):
    k = gb.ndim - 1
    h = project(jnp.sqrt(scale) * gb, ks, offset=1)
    traces = [jnp.sum(kk * kk) for kk in ks]  # Tr(KᵀK)
    out = []
    for j in range(k):
        d_other = other_size(gb.shape[1:], j)
        tr = math.prod(traces[i] for i in range(k) if i != j)
        kj = ks[j]
        target = (mode_gram(h, j) + damping * tr * (kj.T @ kj)) / (2 * d_other)
        out.append(target - 0.5 * jnp.eye(kj.shape[0], dtype=kj.dtype))
    return tuple(out)


def _momentum(d, mu, param, alpha1, weight_decay):
    if param is not None:
        d = d + weight_decay * param
    return alpha1 * mu + d


def if_shampoo_rule(
    *,
    batch_size: int | None = None,
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
) -> Rule:
    """IF-Shampoo's rule (module doc); the direction is the momentum ``μ``.

    Args:
        batch_size: ``B ≥ 1`` (required).
        beta2: preconditioner step ``β₂`` in ``(0, 1]``.
        alpha1: parameter momentum ``α₁`` in ``[0, 1)``.
        alpha2: Riemannian momentum ``α₂`` in ``[0, 1)``.
        damping: ``λ ≥ 0``.
        weight_decay: ``κ ≥ 0`` (added to the direction before the momentum).
        frequency: update the factors every ``frequency ≥ 1`` steps.
        normalize: divide the factor step by ``max(1, ‖m‖_F)`` (the released code does).
        init_scale: ``K_j = init_scale·I`` at the start (``> 0``).
        tensor_mode: ``"modewise"`` or ``"matrix"``.
        state_dtype: the state's dtype (None: the parameter's); the update is matmul-only.

    Returns:
        The rule (leaf state ``IFShampooLeaf``).
    """
    bsz = _check_batch(batch_size)
    b2 = hp(beta2, "beta2", low=0.0, high=1.0, low_open=True)
    a1 = hp(alpha1, "alpha1", low=0.0, high=1.0, high_open=True)
    a2 = hp(alpha2, "alpha2", low=0.0, high=1.0, high_open=True)
    lam = hp(damping, "damping", low=0.0)
    wd = hp(weight_decay, "weight_decay", low=0.0)
    frequency = hp(frequency, "frequency", low=1, integer=True)
    init_scale = hp(init_scale, "init_scale", low=0.0, low_open=True)
    normalize = bool(normalize)
    decays = not (isinstance(wd, float) and wd == 0.0)

    def init(shape, dt):
        return IFShampooLeaf(
            ks=tuple(init_scale * jnp.eye(d, dtype=dt) for d in shape),
            ms=tuple(jnp.zeros((d, d), dt) for d in shape),
            mu=jnp.zeros(shape, dt),
        )

    def factor_step(leaf, gb, scale):
        targets = _targets(leaf.ks, gb, damping=lam, scale=scale)
        new_k, new_m = [], []
        for kj, mj, tj in zip(leaf.ks, leaf.ms, targets, strict=True):
            m = a2 * mj + (1 - a2) * tj
            lr = b2 / jnp.maximum(1.0, jnp.linalg.norm(m)) if normalize else b2
            new_k.append(kj - lr * (kj @ m))
            new_m.append(m)
        return cast_like((tuple(new_k), tuple(new_m)), (leaf.ks, leaf.ms))

    def step(leaf, gb, count, param, per_example):
        scale = 1.0 if per_example else bsz
        ks, ms = lax.cond(
            count % frequency == 0,
            lambda: factor_step(leaf, gb, scale),
            lambda: (leaf.ks, leaf.ms),
        )
        d = jnp.mean(gb, axis=0)
        for j, kj in enumerate(ks):
            d = mode_dot(d, kj @ kj.T, j)
        mu = _momentum(d, leaf.mu, param if decays else None, a1, wd)
        return cast_like((mu, IFShampooLeaf(ks, ms, mu)), (gb[0], leaf))

    return Rule(init, step, tensor_mode, state_dtype, needs_params=decays)


def rf_rmsprop_rule(
    *,
    batch_size: int | None = None,
    beta2: float = 0.01,
    alpha1: float = 0.9,
    damping: float = 1e-4,
    weight_decay: float = 0.0,
    s0: float = 1.0,
    scale_by_batch: bool = True,
    state_dtype: Any = None,
) -> Rule:
    """RF-RMSProp's rule (module doc); the direction is the momentum ``μ``.

    Args:
        batch_size: ``B ≥ 1`` (required unless ``scale_by_batch=False``).
        beta2: weight of the new term ``β₂`` in ``(0, 1]`` (the code's ``1 − alpha``).
        alpha1: momentum ``α₁`` in ``[0, 1)`` (0: none).
        damping: ``λ ≥ 0`` (the code's ``eps``).
        weight_decay: ``κ ≥ 0``.
        s0: initial ``s ≥ 0`` (1 as the paper; 0 is the ``dummy_init`` ablation).
        scale_by_batch: multiply by ``B`` (False: the ``dummy_scaling`` ablation).
        state_dtype: the state's dtype (None: the parameter's).

    Returns:
        The rule (leaf state ``RFRMSPropLeaf``).
    """
    scale_by_batch = bool(scale_by_batch)
    bsz = _check_batch(batch_size) if scale_by_batch else 1.0
    b2 = hp(beta2, "beta2", low=0.0, high=1.0, low_open=True)
    a1 = hp(alpha1, "alpha1", low=0.0, high=1.0, high_open=True)
    lam = hp(damping, "damping", low=0.0)
    wd = hp(weight_decay, "weight_decay", low=0.0)
    s0 = hp(s0, "s0", low=0.0)
    decays = not (isinstance(wd, float) and wd == 0.0)

    def init(shape, dt):
        return RFRMSPropLeaf(mu=jnp.zeros(shape, dt), s=jnp.full(shape, s0, dt))

    def step(leaf, gb, count, param, per_example):
        del count
        scale = 1.0 if per_example else bsz
        g = jnp.mean(gb, axis=0)
        s = (1 - b2) * leaf.s + b2 * scale * jnp.mean(gb * gb, axis=0)
        mu = _momentum(g / (s + lam), leaf.mu, param if decays else None, a1, wd)
        return cast_like((mu, RFRMSPropLeaf(mu=mu, s=s)), (g, leaf))

    return Rule(init, step, "leaf", state_dtype, needs_params=decays)


def adam_rule(
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    state_dtype: Any = None,
) -> Rule:
    """Adam's rule, ``optax.scale_by_adam``'s arithmetic (module doc).

    Args:
        b1: ``β₁`` in ``[0, 1)``.
        b2: ``β₂`` in ``[0, 1)``.
        eps: ``ε ≥ 0`` outside the root.
        eps_root: ``ε_root ≥ 0`` inside the root.
        state_dtype: the state's dtype (None: the parameter's).

    Returns:
        The rule (leaf state ``AdamLeaf``).
    """
    b1 = hp(b1, "b1", low=0.0, high=1.0, high_open=True)
    b2 = hp(b2, "b2", low=0.0, high=1.0, high_open=True)
    eps = hp(eps, "eps", low=0.0)
    eps_root = hp(eps_root, "eps_root", low=0.0)

    def init(shape, dt):
        # distinct buffers (a donated state may not hold one array twice)
        return AdamLeaf(
            jnp.ones([], dt), jnp.zeros([], jnp.int32), jnp.zeros(shape, dt), jnp.zeros(shape, dt)
        )

    def step(leaf, gb, count, param, per_example):
        del count, param, per_example
        g = jnp.mean(gb, axis=0)
        mu = (1 - b1) * g + b1 * leaf.mu
        nu = (1 - b2) * jnp.mean(gb * gb, axis=0) + b2 * leaf.nu
        t = leaf.count + 1
        m_hat = mu / (1 - b1**t).astype(mu.dtype)
        bias = (1 - b2**t).astype(nu.dtype)
        u = m_hat / (jnp.sqrt(nu / bias + eps_root) + eps)
        return cast_like((u, AdamLeaf(bias, t, mu, nu)), (g, leaf))

    return Rule(init, step, "leaf", state_dtype)


def _if_approximation(leaf: IFShampooLeaf) -> Structure | None:
    """``(CCᵀ ⊗ KKᵀ)^{-1}``: the ``Σ`` whose inverse the factors apply (damping inside)."""
    if len(leaf.ks) != 2:
        return None
    return Kronecker(*(k @ k.T for k in leaf.ks)).power(-1.0)


def _diagonal(x: jax.Array) -> Structure | None:
    if x.ndim == 0:
        return None
    return Diagonal(jnp.reshape(x, (x.shape[0], -1)))


def _rf_approximation(leaf: RFRMSPropLeaf) -> Structure | None:
    """``diag(s)`` (the step is ``g/(s+λ)``; matricised as ``(shape[0], −1)``)."""
    return _diagonal(leaf.s)


def _adam_approximation(leaf: AdamLeaf) -> Structure | None:
    """``diag(v/(1−β₂^t))``, recovered from the stored ``v``; see ``adam_rule``."""
    return None if leaf.nu.ndim == 0 else _diagonal(leaf.nu / leaf.bias)


_ROOTFREE_SOURCE = (
    "Lin et al. 2024, root-free methods (arXiv 2402.03496); reference code f-dangel/sirfshampoo"
)
register(
    MethodSpec(
        name="if_shampoo",
        label="IF-Shampoo",
        rule=if_shampoo_rule,
        leaf_type=IFShampooLeaf,
        approximation=_if_approximation,
        power=1.0,
        optimizer="if_shampoo",
        reference="if_shampoo",
        source=_ROOTFREE_SOURCE,
        needs_batch_size=True,
        internal_damping=True,
    )
)
register(
    MethodSpec(
        name="rf_rmsprop",
        label="RF-RMSProp",
        rule=rf_rmsprop_rule,
        leaf_type=RFRMSPropLeaf,
        approximation=_rf_approximation,
        power=1.0,
        optimizer="rf_rmsprop",
        reference="rf_rmsprop",
        source=_ROOTFREE_SOURCE,
        needs_batch_size=True,
    )
)
register(
    MethodSpec(
        name="adam",
        label="Adam",
        rule=adam_rule,
        leaf_type=AdamLeaf,
        approximation=_adam_approximation,
        power=0.5,
        optimizer="adamw",
        reference="adamw",
        source="Kingma & Ba 2015; Loshchilov & Hutter 2019 (AdamW); as optax.adamw",
    )
)
