"""Shampoo (``p = ½`` or ``¼``, with or without Adam grafting) and SOAP as optax transforms.

Shampoo, step ``t`` (counted from 1): ``M ← β₁M + (1−β₁)G``; factors
``S_j ← β S_j + (1−β) G_(j)G_(j)ᵀ`` from zero; every ``frequency`` steps (from step 1) the
roots ``(S_j + δI)^{-p}`` are recomputed by ``eigh`` (eigenvalues clipped at 0); direction
``D = M̂ ×_j (S_j + δI)^{-p}`` (2-D: ``L^{-p} M̂ R^{-p}``) with ``M̂ = M/(1−β₁^t)``. With
grafting (Adam's norm, as Distributed Shampoo): ``A = M̂/(√v̂ + ε)`` from ``v ← β₂'v +
(1−β₂')G²`` with bias correction, and ``D ← D·‖A‖_F/‖D‖_F``. For an order-k tensor the
original rule is ``p = 1/(2k)``; ``p`` is used as given.

SOAP (Vyas et al.; as the SOAP code vendored in the KL-Methods reference repository): the
first call sets ``S_j = (1−β)G_(j)G_(j)ᵀ`` and ``Q_j`` by ``eigh`` (no update); then, in the
current basis ``G' = QᵀGQ``: ``m ← β₁m + (1−β₁)G'``, ``v ← β₂v + (1−β₂)G'²``,
``U = √(1−β₂^t)/(1−β₁^t)·Q[m/(√v+ε)]Qᵀ``; then ``S_j ← βS_j + (1−β)G_(j)G_(j)ᵀ`` and every
``frequency`` steps ``Q_j ← QR(S_jQ_j).Q`` with ``m`` rotated into the new basis.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from ._common import (
    conform,
    eigh_desc,
    leafwise,
    linalg_dtype,
    mode_dot,
    mode_gram,
    project,
    project_back,
    qr_basis,
    resolve_dtype,
    step_with_adamw_fallback,
    work_shape,
)
from ._kl import KronState

__all__ = [
    "SOAPLeaf",
    "ShampooLeaf",
    "scale_by_shampoo",
    "scale_by_soap",
    "shampoo",
    "soap",
]


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
        factors: Shampoo's ``S_j``.
        mu: Adam's first moment in the eigenbasis.
        nu: Adam's second moment in the eigenbasis.
    """

    bases: tuple[jax.Array, ...]
    factors: tuple[jax.Array, ...]
    mu: jax.Array
    nu: jax.Array


def _inverse_root(s: jax.Array, p: float, damping: float) -> jax.Array:
    x = s.astype(linalg_dtype(s.dtype))
    w, q = jnp.linalg.eigh(0.5 * (x + x.T))
    w = jnp.maximum(w, 0.0) + damping
    return ((q * w[None, :] ** (-p)) @ q.T).astype(s.dtype)


def _leaf_arrays(p, tensor_mode, state_dtype):
    shape = work_shape(jnp.shape(p), tensor_mode)
    dt = resolve_dtype(state_dtype, p)
    factors = tuple(jnp.zeros((d, d), dt) for d in shape)
    eyes = tuple(jnp.eye(d, dtype=dt) for d in shape)
    return jnp.zeros(shape, dt), factors, eyes


def scale_by_shampoo(
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
) -> optax.GradientTransformation:
    """Shampoo's direction (module doc).

    Args:
        p: the per-factor power (``½``: recent variants, ``¼``: the original for matrices).
        b1: momentum ``β₁``.
        shampoo_beta: weight of the old factors.
        graft: graft Adam's norm onto the direction.
        graft_b2: Adam's ``β₂`` for grafting.
        eps: Adam's ``ε`` for grafting.
        damping: ``δ`` in ``(S + δI)^{-p}``.
        frequency: recompute the roots every ``frequency`` steps (≥ 1).
        tensor_mode: ``"modewise"`` or ``"matrix"``.
        state_dtype: the state's dtype (None: the parameter's).

    Returns:
        The transformation (state ``KronState`` of
        ``ShampooLeaf``).
    """
    p, b1, beta, b2g = float(p), float(b1), float(shampoo_beta), float(graft_b2)
    eps, damping, frequency = float(eps), float(damping), int(frequency)
    if frequency < 1:
        raise ValueError(f"frequency must be ≥ 1, got {frequency}")

    def init(params):
        def leaf(x):
            mu, factors, eyes = _leaf_arrays(x, tensor_mode, state_dtype)
            nu = jnp.zeros_like(mu) if graft else None
            return ShampooLeaf(factors=factors, mu=mu, nu=nu, roots=eyes)

        return KronState(jnp.zeros([], jnp.int32), jax.tree.map(leaf, params))

    def update(updates, state, params=None):
        del params
        t = optax.safe_increment(state.count)
        state = state._replace(leaves=conform(state.leaves, init, updates))

        def step(g, leaf):
            mu = b1 * leaf.mu + (1 - b1) * g
            factors = tuple(
                beta * s + (1 - beta) * mode_gram(g, j) for j, s in enumerate(leaf.factors)
            )
            roots = lax.cond(
                (t - 1) % frequency == 0,
                lambda: tuple(_inverse_root(s, p, damping) for s in factors),
                lambda: leaf.roots,
            )
            m_hat = mu / (1 - b1**t)
            d = m_hat
            for j, r in enumerate(roots):
                d = mode_dot(d, r, j)
            nu = leaf.nu
            if graft:
                nu = b2g * nu + (1 - b2g) * g**2
                adam = m_hat / (jnp.sqrt(nu / (1 - b2g**t)) + eps)
                norm = jnp.linalg.norm(d)
                d = d * jnp.where(
                    norm > 0, jnp.linalg.norm(adam) / jnp.where(norm > 0, norm, 1), 0.0
                )
            return d, ShampooLeaf(factors=factors, mu=mu, nu=nu, roots=roots)

        new_u, leaves = leafwise(step, updates, state.leaves)
        return new_u, KronState(t, leaves)

    return optax.GradientTransformation(init, update)


def scale_by_soap(
    *,
    b1: float = 0.95,
    b2: float = 0.95,
    shampoo_beta: float = 0.95,
    eps: float = 1e-8,
    frequency: int = 10,
    correct_bias: bool = True,
    tensor_mode: str = "modewise",
    state_dtype: Any = None,
) -> optax.GradientTransformation:
    """SOAP's direction (module doc).

    Args:
        b1: Adam's ``β₁``.
        b2: Adam's ``β₂``.
        shampoo_beta: weight of the old factors.
        eps: Adam's ``ε``.
        frequency: basis refresh period (0: never).
        correct_bias: Adam's bias correction (the step-size form of the SOAP code).
        tensor_mode: ``"modewise"`` or ``"matrix"``.
        state_dtype: the state's dtype (None: the parameter's).

    Returns:
        The transformation (state ``KronState`` of ``SOAPLeaf``).
    """
    b1, b2, beta, eps = float(b1), float(b2), float(shampoo_beta), float(eps)
    frequency = int(frequency)

    def init(params):
        def leaf(x):
            mu, factors, eyes = _leaf_arrays(x, tensor_mode, state_dtype)
            return SOAPLeaf(bases=eyes, factors=factors, mu=mu, nu=jnp.zeros_like(mu))

        return KronState(jnp.zeros([], jnp.int32), jax.tree.map(leaf, params))

    def first(g, leaf):
        factors = tuple((1 - beta) * mode_gram(g, j) for j in range(g.ndim))
        bases = tuple(eigh_desc(s) for s in factors)
        return jnp.zeros_like(g), leaf._replace(factors=factors, bases=bases)

    def regular(g, leaf, t):
        qs = leaf.bases
        gp = project(g, qs)
        mu = b1 * leaf.mu + (1 - b1) * gp
        nu = b2 * leaf.nu + (1 - b2) * gp**2
        corr = 1.0 if not correct_bias else jnp.sqrt(1 - b2**t) / (1 - b1**t)
        u = corr * project_back(mu / (jnp.sqrt(nu) + eps), qs)
        factors = tuple(beta * s + (1 - beta) * mode_gram(g, j) for j, s in enumerate(leaf.factors))
        leaf = SOAPLeaf(bases=qs, factors=factors, mu=mu, nu=nu)
        if frequency > 0:

            def refresh(leaf):
                new = tuple(qr_basis(s, qb) for s, qb in zip(leaf.factors, leaf.bases, strict=True))
                return leaf._replace(mu=project(project_back(leaf.mu, leaf.bases), new), bases=new)

            leaf = lax.cond(t % frequency == 0, refresh, lambda leaf: leaf, leaf)
        return u, leaf

    def update(updates, state, params=None):
        del params
        t = state.count
        state = state._replace(leaves=conform(state.leaves, init, updates))
        new_u, leaves = lax.cond(
            t == 0,
            lambda: leafwise(first, updates, state.leaves),
            lambda: leafwise(lambda g, leaf: regular(g, leaf, t), updates, state.leaves),
        )
        return new_u, KronState(optax.safe_increment(t), leaves)

    return optax.GradientTransformation(init, update)


def shampoo(
    learning_rate: Any = 1e-3,
    *,
    p: float = 0.5,
    b1: float = 0.9,
    b2: float = 0.95,
    graft: bool = True,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    labels: Any = None,
    max_dim: int = 10_000,
    fallback: optax.GradientTransformation | None = None,
    **kwargs: Any,
) -> optax.GradientTransformation:
    """Shampoo; ``b2`` is the factor EMA's and the grafting Adam's ``β₂``.

    Args:
        learning_rate: ``η`` (float or schedule).
        p: per-factor power (``0.5`` or ``0.25``).
        b1: momentum.
        b2: weight of the old factors and of grafting's second moment.
        graft: Adam grafting.
        eps: Adam's ``ε`` (grafting and fallback).
        weight_decay: decoupled weight decay (after the step).
        labels: leaf partition (see ``with_fallback``).
        max_dim: leaf partition (see ``with_fallback``).
        fallback: transformation for non-matrix leaves (default AdamW).
        **kwargs: ``scale_by_shampoo``'s ``damping``, ``frequency``, ``tensor_mode``,
            ``state_dtype``.

    Returns:
        The optimiser.
    """
    direction = scale_by_shampoo(
        p=p, b1=b1, shampoo_beta=b2, graft=graft, graft_b2=b2, eps=eps, **kwargs
    )
    return step_with_adamw_fallback(
        direction,
        learning_rate,
        b1=b1,
        b2=b2,
        eps=eps,
        weight_decay=weight_decay,
        labels=labels,
        max_dim=max_dim,
        fallback=fallback,
        skip_first=False,
    )


def soap(
    learning_rate: Any = 3e-3,
    *,
    b1: float = 0.95,
    b2: float = 0.95,
    shampoo_beta: float | None = None,
    eps: float = 1e-8,
    weight_decay: float = 0.01,
    labels: Any = None,
    max_dim: int = 10_000,
    fallback: optax.GradientTransformation | None = None,
    **kwargs: Any,
) -> optax.GradientTransformation:
    """SOAP with the SOAP code's defaults (``lr=3e-3, betas=(0.95, 0.95), eps=1e-8,
    weight_decay=0.01, frequency=10``; ``shampoo_beta`` defaults to ``b2``).

    Args:
        learning_rate: as in ``kl_soap``.
        b1: as in ``kl_soap``.
        b2: as in ``kl_soap``.
        shampoo_beta: as in ``kl_soap``.
        eps: as in ``kl_soap``.
        weight_decay: as in ``kl_soap``.
        labels: as in ``kl_soap``.
        max_dim: as in ``kl_soap``.
        fallback: as in ``kl_soap``.
        **kwargs: ``scale_by_soap``'s ``frequency``, ``correct_bias``, ``tensor_mode``,
            ``state_dtype``.

    Returns:
        The optimiser.
    """
    beta = b2 if shampoo_beta is None else shampoo_beta
    direction = scale_by_soap(b1=b1, b2=b2, shampoo_beta=beta, eps=eps, **kwargs)
    return step_with_adamw_fallback(
        direction,
        learning_rate,
        b1=b1,
        b2=b2,
        eps=eps,
        weight_decay=weight_decay,
        labels=labels,
        max_dim=max_dim,
        fallback=fallback,
        skip_first=True,
    )
