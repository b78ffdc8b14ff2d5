"""Shampoo (``p = ½`` or ``¼``, with or without Adam grafting) and SOAP: one rule each.

Shampoo, step ``t`` (counted from 1): ``M ← β₁M + (1−β₁)G``; factors
``S_j ← β S_j + (1−β) E[G_(j)G_(j)ᵀ]`` from zero; every ``frequency`` steps (from step 1) the
roots ``(S_j + δI)^{-p}`` are recomputed by ``eigh`` (eigenvalues clipped at 0); direction
``D = M̂ ×_j (S_j + δI)^{-p}`` (2-D: ``L^{-p} M̂ R^{-p}``) with ``M̂ = M/(1−β₁^t)``. With
grafting (Adam's norm, as Distributed Shampoo): ``A = M̂/(√v̂ + ε)`` from ``v ← β₂'v +
(1−β₂')G²`` with bias correction, and ``D ← D·‖A‖_F/‖D‖_F``. For an order-k tensor the
original rule is ``p = 1/(2k)``; ``p`` is used as given. The ``Σ`` the state stands for is
the one its stored roots apply, ``(⊗_j roots_j)^{-2}`` (``(L+δI) ⊗ (R+δI)`` at ``p = ½``).

SOAP (Vyas et al. 2024; as the SOAP code vendored in the KL-Methods reference repository):
the first call sets ``S_j = (1−β)E[G_(j)G_(j)ᵀ]`` and ``Q_j`` by ``eigh`` (no update); then,
in the current basis ``G' = QᵀGQ``: ``m ← β₁m + (1−β₁)G'``, ``v ← β₂v + (1−β₂)G'²``,
``U = √(1−β₂^t)/(1−β₁^t)·Q[m/(√v+ε)]Qᵀ``; then ``S_j ← βS_j + (1−β)E[G_(j)G_(j)ᵀ]`` and
every ``frequency`` steps ``Q_j ← QR(S_jQ_j).Q`` with ``m`` rotated into the new basis. The
vendored code comments out the original SOAP code's sort of the basis by estimated
eigenvalue before the QR step; this rule follows the vendored code (the official
cross-check's). Its ``Σ`` is ``(Q_a ⊗ Q_b) diag(v̂) (Q_a ⊗ Q_b)ᵀ``, ``v̂ = v/(1−β₂^t)``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from ..structures import EigenKronecker, Kronecker, Structure
from ._core import MethodSpec, Rule, register, two_mode_aliases
from ._hp import hp
from ._ops import (
    cast_like,
    eigh,
    eigh_desc,
    linalg_dtype,
    mode_dot,
    mode_gram,
    project,
    project_back,
    qr_basis,
)

__all__ = ["SOAPLeaf", "ShampooLeaf", "shampoo_rule", "soap_rule"]


class ShampooLeaf(NamedTuple):
    """Per-leaf state of Shampoo.

    Attributes:
        factors: ``S_j``, EMA of ``G_(j)G_(j)ᵀ``.
        mu: momentum ``M``.
        nu: Adam's second moment for grafting (None without grafting).
        roots: ``(S_j + δI)^{-p}``, recomputed every ``frequency`` steps.
    """

    factors: tuple[jax.Array, ...]
    mu: jax.Array
    nu: jax.Array | None
    roots: tuple[jax.Array, ...]


class SOAPLeaf(NamedTuple):
    """Per-leaf state of SOAP.

    Attributes:
        bases: the eigenbases ``Q_j`` of the factors.
        bias: ``1 − β₂^t``, the second moment's bias correction (1 without correction).
        factors: Shampoo's ``S_j``.
        mu: Adam's first moment in the eigenbasis.
        nu: Adam's second moment in the eigenbasis.
    """

    bases: tuple[jax.Array, ...]
    bias: jax.Array
    factors: tuple[jax.Array, ...]
    mu: jax.Array
    nu: jax.Array


two_mode_aliases(ShampooLeaf, SOAPLeaf)


def _inverse_root(s: jax.Array, p: Any, damping: Any) -> jax.Array:
    x = s.astype(linalg_dtype(s.dtype))
    w, q = eigh(0.5 * (x + x.T))
    w = jnp.maximum(w, 0.0) + damping
    return ((q * w[None, :] ** (-p)) @ q.T).astype(s.dtype)


def _factor_ema(factors, gb, beta):
    return tuple(beta * s + (1 - beta) * mode_gram(gb, j) for j, s in enumerate(factors))


def shampoo_rule(
    *,
    p: float = 0.5,
    b1: float = 0.9,
    shampoo_beta: float = 0.95,
    graft: bool = True,
    graft_b2: float = 0.95,
    eps: float = 1e-8,
    damping: float = 1e-12,
    frequency: int = 10,
    tensor_mode: str = "modewise",
    state_dtype: Any = None,
) -> Rule:
    """Shampoo's rule (module doc).

    Args:
        p: the per-factor power in ``(0, 1]`` (``½``: recent variants, ``¼``: the original).
        b1: momentum ``β₁`` in ``[0, 1)``.
        shampoo_beta: weight of the old factors in ``[0, 1)``.
        graft: graft Adam's norm onto the direction.
        graft_b2: Adam's ``β₂`` for grafting, in ``[0, 1)``.
        eps: Adam's ``ε ≥ 0`` for grafting.
        damping: ``δ > 0`` in ``(S + δI)^{-p}``.
        frequency: recompute the roots every ``frequency ≥ 1`` steps.
        tensor_mode: ``"modewise"`` or ``"matrix"``.
        state_dtype: the state's dtype (None: the parameter's).

    Returns:
        The rule (leaf state ``ShampooLeaf``).
    """
    p = hp(p, "p", low=0.0, high=1.0, low_open=True)
    b1 = hp(b1, "b1", low=0.0, high=1.0, high_open=True)
    beta = hp(shampoo_beta, "shampoo_beta", low=0.0, high=1.0, high_open=True)
    b2g = hp(graft_b2, "graft_b2", low=0.0, high=1.0, high_open=True)
    eps = hp(eps, "eps", low=0.0)
    damping = hp(damping, "damping", low=0.0, low_open=True)
    frequency = hp(frequency, "frequency", low=1, integer=True)
    graft = bool(graft)

    def init(shape, dt):
        zeros = jnp.zeros(shape, dt)
        return ShampooLeaf(
            factors=tuple(jnp.zeros((d, d), dt) for d in shape),
            mu=zeros,
            nu=jnp.zeros_like(zeros) if graft else None,
            roots=tuple(jnp.eye(d, dtype=dt) for d in shape),
        )

    def step(leaf, gb, count, param, per_example):
        del param, per_example
        t = count + 1
        g = jnp.mean(gb, axis=0)
        mu = b1 * leaf.mu + (1 - b1) * g
        factors = _factor_ema(leaf.factors, gb, beta)
        roots = lax.cond(
            (t - 1) % frequency == 0,
            lambda: cast_like(tuple(_inverse_root(s, p, damping) for s in factors), leaf.roots),
            lambda: leaf.roots,
        )
        m_hat = mu / (1 - b1**t)
        d = m_hat
        for j, r in enumerate(roots):
            d = mode_dot(d, r, j)
        nu = leaf.nu
        if graft:
            nu = b2g * nu + (1 - b2g) * jnp.mean(gb**2, axis=0)
            adam = m_hat / (jnp.sqrt(nu / (1 - b2g**t)) + eps)
            norm = jnp.linalg.norm(d)
            d = d * jnp.where(norm > 0, jnp.linalg.norm(adam) / jnp.where(norm > 0, norm, 1), 0.0)
        new = ShampooLeaf(factors=factors, mu=mu, nu=nu, roots=roots)
        return cast_like((d, new), (g, leaf))

    return Rule(init, step, tensor_mode, state_dtype)


def _soap_direction(qs, mu, nu, gb, t, *, b1, b2, eps, correct_bias):
    """SOAP's Adam step in the bases ``qs`` (shared by SOAP and DyKAF): the projected
    batch's moment EMAs and the direction ``corr·Q(m/(√v + ε))Qᵀ``; returns
    ``(direction, mu, nu)``."""
    gpb = project(gb, qs, offset=1)
    mu = b1 * mu + (1 - b1) * jnp.mean(gpb, axis=0)
    nu = b2 * nu + (1 - b2) * jnp.mean(gpb**2, axis=0)
    corr = jnp.sqrt(1 - b2**t) / (1 - b1**t) if correct_bias else 1.0
    return corr * project_back(mu / (jnp.sqrt(nu) + eps), qs), mu, nu


def _soap_refresh(leaf, t, frequency):
    """Every ``frequency`` steps (0: never): one power step + QR of each factor from its basis,
    the momentum rotated into the new bases (a leaf with ``factors``, ``bases``, ``mu``)."""

    def refresh(leaf):
        new = tuple(qr_basis(s, qb) for s, qb in zip(leaf.factors, leaf.bases, strict=True))
        return leaf._replace(mu=project(project_back(leaf.mu, leaf.bases), new), bases=new)

    due = (frequency > 0) & (t % jnp.maximum(frequency, 1) == 0)
    return lax.cond(due, refresh, lambda leaf: leaf, leaf)


def soap_rule(
    *,
    b1: float = 0.95,
    b2: float = 0.95,
    shampoo_beta: float = 0.95,
    eps: float = 1e-8,
    frequency: int = 10,
    correct_bias: bool = True,
    tensor_mode: str = "modewise",
    state_dtype: Any = None,
) -> Rule:
    """SOAP's rule (module doc), the SOAP code's defaults.

    Args:
        b1: Adam's ``β₁`` in ``[0, 1)``.
        b2: Adam's ``β₂`` in ``[0, 1)``.
        shampoo_beta: weight of the old factors in ``[0, 1)``.
        eps: Adam's ``ε ≥ 0``.
        frequency: basis refresh period (0: never).
        correct_bias: Adam's bias correction (the step-size form of the SOAP code).
        tensor_mode: ``"modewise"`` or ``"matrix"``.
        state_dtype: the state's dtype (None: the parameter's).

    Returns:
        The rule (leaf state ``SOAPLeaf``).
    """
    b1 = hp(b1, "b1", low=0.0, high=1.0, high_open=True)
    b2 = hp(b2, "b2", low=0.0, high=1.0, high_open=True)
    beta = hp(shampoo_beta, "shampoo_beta", low=0.0, high=1.0, high_open=True)
    eps = hp(eps, "eps", low=0.0)
    frequency = hp(frequency, "frequency", low=0, integer=True)
    correct_bias = bool(correct_bias)

    def init(shape, dt):
        zeros = jnp.zeros(shape, dt)
        return SOAPLeaf(
            bases=tuple(jnp.eye(d, dtype=dt) for d in shape),
            bias=jnp.ones([], dt),
            factors=tuple(jnp.zeros((d, d), dt) for d in shape),
            mu=zeros,
            nu=jnp.zeros_like(zeros),
        )

    def first(leaf, gb):
        factors = tuple((1 - beta) * mode_gram(gb, j) for j in range(gb.ndim - 1))
        bases = tuple(eigh_desc(s)[1] for s in factors)
        return jnp.zeros(gb.shape[1:], gb.dtype), leaf._replace(factors=factors, bases=bases)

    def regular(leaf, gb, t):
        qs = leaf.bases
        adam = dict(b1=b1, b2=b2, eps=eps, correct_bias=correct_bias)
        u, mu, nu = _soap_direction(qs, leaf.mu, leaf.nu, gb, t, **adam)
        bias = 1 - b2**t if correct_bias else jnp.ones([])
        leaf = SOAPLeaf(qs, bias, _factor_ema(leaf.factors, gb, beta), mu, nu)
        return u, _soap_refresh(leaf, t, frequency)

    def step(leaf, gb, count, param, per_example):
        del param, per_example
        return lax.cond(
            count == 0,
            lambda: cast_like(first(leaf, gb), (gb[0], leaf)),
            lambda: cast_like(regular(leaf, gb, count), (gb[0], leaf)),
        )

    return Rule(init, step, tensor_mode, state_dtype)


def _shampoo_approximation(leaf: ShampooLeaf) -> Structure | None:
    """``(⊗_j roots_j)^{-2}``: the ``Σ`` whose ``−½`` power the stored roots apply."""
    if len(leaf.roots) != 2:
        return None
    return Kronecker(*leaf.roots).power(-2.0)


def _soap_approximation(leaf: SOAPLeaf) -> Structure | None:
    """``(Q_a ⊗ Q_b) diag(v/(1−β₂^t)) (Q_a ⊗ Q_b)ᵀ``: Adam in Shampoo's eigenbasis."""
    if len(leaf.bases) != 2:
        return None
    return EigenKronecker(*leaf.bases, leaf.nu / leaf.bias)


register(
    MethodSpec(
        name="shampoo",
        label="Shampoo",
        rule=shampoo_rule,
        leaf_type=ShampooLeaf,
        approximation=_shampoo_approximation,
        power=0.5,
        optimizer="shampoo",
        reference="shampoo",
        source="Gupta et al. 2018; Adam grafting as Distributed Shampoo (Shi et al. 2023)",
    )
)
register(
    MethodSpec(
        name="soap",
        label="SOAP",
        rule=soap_rule,
        leaf_type=SOAPLeaf,
        approximation=_soap_approximation,
        power=0.5,
        optimizer="soap",
        reference="soap",
        source="Vyas et al. 2024 (arXiv 2409.11321); the SOAP code vendored in "
        "yorkerlin/KL-Methods optim/soap.py",
    )
)
