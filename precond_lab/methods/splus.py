"""SPlus (Frans, Levine & Abbeel 2025, arXiv 2506.07254): a Shampoo eigenbasis, cached
for many steps, with the update normalised by the sign in that basis (the official
``kvfrans/splus`` optax code's arithmetic).

Step ``t`` (counted from 1), gradient ``G`` (the batch mean): ``M ← β₁M + (1−β₁)G``; for a
matrix leaf the direction is ``U = Q_a sign(Q_aᵀ M Q_b) Q_bᵀ`` in the bases ``Q_j`` held
so far (identity before the first refresh), any other leaf ``U = sign(M)``; then the
factors ``S_a ← β₂S_a + (1−β₂)E[GGᵀ]``, ``S_b ← β₂S_b + (1−β₂)E[GᵀG]`` (from zero) and, at
``t = 1`` and every ``inverse_every`` steps, ``Q_j ← eigh(S_j + εI)`` (the direction used
the bases from before). The direction is ``D = s·(U + wd·W)`` with the shape scale
``s = 2/(m + n)`` for an ``m×n`` leaf, ``s = nonstandard_constant`` for other leaves and
for leaves marked ``nonstandard`` (the official code marks embeddings and layer norms by
name); weight decay is inside the scale, as the official chain (decay, learning rate,
scale) has it. The official state's EMA of the parameters (for evaluation only) is not
kept: it does not enter the update.

Every entry of ``U`` in the basis is ``±1``, so ``‖U‖_F ≤ √(mn)`` whatever the statistics:
the update stays bounded however stale the basis, where Shampoo's cached inverse root
``(S + δI)^{-1/2}`` can amplify a gradient by ``δ^{-1/2}`` in a direction the stale
factors did not see.

**The ``Σ`` the state stands for.** ``sign(x) = x/√(x²)``: in the basis, SPlus is Adam with
an instantaneous second moment (``β₂ = 0``) of the momentum, so
``Σ = (Q_a ⊗ Q_b) diag(M'² + δ) (Q_a ⊗ Q_b)ᵀ`` with ``M' = Q_aᵀMQ_b`` and
``δ = 100·ε_dtype·‖M‖_F²`` (keeps ``Σ`` invertible; ``Σ^{-1/2}vec(M)`` then differs from
``vec(U)`` by a relative ``≈ δ/(2M'²)`` on each entry). As for Muon the map is not linear:
``Σ^{-1/2}`` reproduces SPlus's direction at the state's own momentum.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from ..structures import EigenKronecker, Structure
from ._core import MethodSpec, Rule, register, two_mode_aliases
from ._hp import hp
from ._ops import cast_like, eigh, linalg_dtype, mode_gram

__all__ = ["SPlusLeaf", "splus_rule"]


class SPlusLeaf(NamedTuple):
    """Per-leaf state of SPlus.

    Attributes:
        bases: the cached eigenbases ``Q_a, Q_b`` (empty for a leaf that is not a matrix).
        factors: the factors ``S_a, S_b`` (EMAs of ``GGᵀ`` and ``GᵀG``; empty likewise).
        mu: the momentum ``M``.
    """

    bases: tuple[jax.Array, ...]
    factors: tuple[jax.Array, ...]
    mu: jax.Array


two_mode_aliases(SPlusLeaf)


def _eigvecs(s: jax.Array, eps: Any) -> jax.Array:
    x = s.astype(linalg_dtype(s.dtype))
    return eigh(x + eps * jnp.eye(s.shape[0], dtype=x.dtype))[1].astype(s.dtype)


def splus_rule(
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-30,
    inverse_every: int = 100,
    nonstandard_constant: float = 0.001,
    nonstandard: bool = False,
    weight_decay: float = 1e-2,
    state_dtype: Any = None,
) -> Rule:
    """SPlus's rule (module doc), the official code's defaults.

    Leaves keep their shape (a matrix leaf is rotated, any other one is not).

    Args:
        b1: the momentum's ``β₁`` in ``[0, 1)``.
        b2: the factors' ``β₂`` in ``[0, 1)``.
        eps: ``ε ≥ 0`` added to the factors before ``eigh``.
        inverse_every: the bases' refresh period, an integer ``≥ 1`` (and at step 1).
        nonstandard_constant: the scale ``> 0`` of non-matrix and ``nonstandard`` leaves.
        nonstandard: scale every leaf by ``nonstandard_constant`` (the official code's
            embedding and layer-norm leaves; the fallback leaves).
        weight_decay: ``wd ≥ 0``, added to the direction before the shape scale.
        state_dtype: the state's dtype (None: the parameter's).

    Returns:
        The rule (leaf state ``SPlusLeaf``).
    """
    b1 = hp(b1, "b1", low=0.0, high=1.0, high_open=True)
    b2 = hp(b2, "b2", low=0.0, high=1.0, high_open=True)
    eps = hp(eps, "eps", low=0.0)
    every = hp(inverse_every, "inverse_every", low=1, integer=True)
    constant = hp(nonstandard_constant, "nonstandard_constant", low=0.0, low_open=True)
    wd = hp(weight_decay, "weight_decay", low=0.0)
    nonstandard = bool(nonstandard)

    def init(shape, dt):
        matrix = len(shape) == 2
        return SPlusLeaf(
            bases=tuple(jnp.eye(d, dtype=dt) for d in shape) if matrix else (),
            factors=tuple(jnp.zeros((d, d), dt) for d in shape) if matrix else (),
            mu=jnp.zeros(shape, dt),
        )

    def step(leaf, gb, count, param, per_example):
        del per_example
        t = count + 1
        g = jnp.mean(gb, axis=0)
        mu = b1 * leaf.mu + (1 - b1) * g
        bases, factors = leaf.bases, leaf.factors
        if g.ndim == 2:
            qa, qb = bases
            u = qa @ jnp.sign(qa.T @ mu @ qb) @ qb.T
            factors = tuple(b2 * s + (1 - b2) * mode_gram(gb, j) for j, s in enumerate(factors))
            due = (t == 1) | (t % every == 0)
            bases = lax.cond(
                due,
                lambda: cast_like(tuple(_eigvecs(s, eps) for s in factors), bases),
                lambda: bases,
            )
            scale = constant if nonstandard else 2.0 / (g.shape[0] + g.shape[1])
        else:
            u = jnp.sign(mu)
            scale = constant
        if param is not None:
            u = u + wd * param
        new = SPlusLeaf(bases=bases, factors=factors, mu=mu)
        return cast_like((scale * u, new), (g, leaf))

    return Rule(init, step, "leaf", state_dtype, needs_params=True)


def _splus_approximation(leaf: SPlusLeaf) -> Structure | None:
    """``(Q_a ⊗ Q_b) diag(M'² + δ) (Q_a ⊗ Q_b)ᵀ``, ``M' = Q_aᵀMQ_b``: the ``Σ`` whose ``−½``
    power is the sign in the basis (module doc)."""
    if leaf.mu.ndim != 2:
        return None
    qa, qb = leaf.bases
    mp = qa.T @ leaf.mu @ qb
    fin = jnp.finfo(mp.dtype)
    delta = 100 * fin.eps * jnp.sum(leaf.mu * leaf.mu) + fin.tiny
    return EigenKronecker(qa, qb, mp * mp + delta)


register(
    MethodSpec(
        name="splus",
        label="SPlus",
        rule=splus_rule,
        leaf_type=SPlusLeaf,
        approximation=_splus_approximation,
        power=0.5,
        optimizer="splus",
        reference="splus",
        source="Frans, Levine & Abbeel 2025 (arXiv 2506.07254); the official optax code "
        "github.com/kvfrans/splus optax/splus.py",
    )
)
