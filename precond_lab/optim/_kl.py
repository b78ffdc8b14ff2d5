"""KL-Shampoo, the trace-power family (F-, VN-, SQ-Shampoo) and KL-SOAP as optax transforms.

One factor update covers the family: for a power ``q`` the factor of mode ``j`` tracks

    S_j ← β S_j + (1−β) · G_(j) (⊗_{i≠j} Ŝ_i^{q−1}) G_(j)ᵀ / Π_{i≠j} Tr Ŝ_i^q,

the stationarity condition of the trace-power Bregman fit of ``Σ`` by ``⊗_j S_j`` (``q = 0``
is KL-Shampoo's whitened update ``G Ŝ_b^{-1} Gᵀ/d_b``; ``q = ½`` SQ-, ``q = 1`` VN-,
``q = 2`` F-Shampoo). ``Ŝ_i = Q_i diag(λ_i) Q_iᵀ`` is the other factor's *eigen-approximation*
(not the accumulated matrix). The eigenvalues get their own EMA towards ``diag(Q_jᵀ stat Q_j)``
in the current basis (all modes simultaneously, from the old ``λ``), are clamped so that
``λ^{-1/2} ≤ max(10, min(d, max_clamp))``, and the bases are refreshed every ``frequency``
steps by one power step plus QR. The first call only initialises (no parameter update):
``S_j = (1−β)/Π_{i≠j}d_i · G_(j)G_(j)ᵀ``, ``Q_j`` from ``eigh`` (descending), ``λ = init_factor``.

Step ``t ≥ 1`` (as the KL-Methods reference code, ``optim/kl_opt.py``):

* KL-/trace-power Shampoo: ``M ← β₁M + (1−β₁)G``; ``U = Q[(QᵀMQ) ⊙ x/(1+ε x)]Qᵀ`` with
  ``x = ⊗_j λ_j^{-1/2}`` (2-D: ``1/(√(λ_aλ_bᵀ)+ε)``); then the factor/eigenvalue/basis step.
* KL-SOAP: Adam in the KL eigenbasis, ``G' = QᵀGQ``, ``m ← β₁m + (1−β₁)G'``,
  ``v ← β₂v + (1−β₂)G'²``, ``U = Q[m/(√v+ε)]Qᵀ`` (no bias correction); ``m`` is rotated into
  the new basis when the basis is refreshed.

For tensors the reference code's 3-D path uses some already-updated eigenvalues within a step
(mode 3 first, then 2, then 1); this module updates all modes from the old values, the rule its
2-D path follows.
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
    eigh_desc,
    leafwise,
    mode_dot,
    mode_gram,
    other_size,
    project,
    project_back,
    qr_basis,
    resolve_dtype,
    step_with_adamw_fallback,
    work_shape,
)

__all__ = [
    "KLSOAPLeaf",
    "KronLeaf",
    "KronState",
    "f_shampoo",
    "kl_shampoo",
    "kl_soap",
    "scale_by_kl_soap",
    "scale_by_trace_power",
    "sq_shampoo",
    "trace_power_shampoo",
    "vn_shampoo",
]


class KronLeaf(NamedTuple):
    """Per-leaf state of KL-/trace-power Shampoo.

    Attributes:
        bases: ``Q_j``, the factors' eigenbases.
        factors: ``S_j`` (``d_j×d_j``), one per mode.
        mu: momentum ``M`` (the leaf's working shape).
        values: ``λ_j`` (``d_j``), the EMA eigenvalues (clamped).
    """

    bases: tuple[jax.Array, ...]
    factors: tuple[jax.Array, ...]
    mu: jax.Array
    values: tuple[jax.Array, ...]


class KLSOAPLeaf(NamedTuple):
    """Per-leaf state of KL-SOAP: ``KronLeaf``'s fields with ``mu`` in the eigenbasis.

    Attributes:
        bases: as in ``KronLeaf``.
        factors: as in ``KronLeaf``.
        values: as in ``KronLeaf``.
        mu: Adam's first moment of ``QᵀGQ`` (in the current basis).
        nu: Adam's second moment of ``QᵀGQ``.
    """

    bases: tuple[jax.Array, ...]
    factors: tuple[jax.Array, ...]
    mu: jax.Array
    nu: jax.Array
    values: tuple[jax.Array, ...]


class KronState(NamedTuple):
    """State of a Kronecker transformation: the step counter and one state per leaf.

    Attributes:
        count: calls so far (0 before the first, initialising call).
        leaves: per-leaf states (a pytree with the params' structure).
    """

    count: jax.Array
    leaves: Any


def _clamp(lam: jax.Array, dim: int, on: bool, max_clamp: float) -> jax.Array:
    if not on:
        return lam
    cap = max(10.0, min(float(dim), float(max_clamp)))  # bound on λ^{-1/2}
    return jnp.maximum(lam, 1.0 / cap**2)


def _along(v: jax.Array, axis: int, ndim: int) -> jax.Array:
    shape = [1] * ndim
    shape[axis] = v.shape[0]
    return v.reshape(shape)


def _init_leaf(p, *, tensor_mode, init_factor, state_dtype, soap):
    shape = work_shape(jnp.shape(p), tensor_mode)
    dt = resolve_dtype(state_dtype, p)
    zeros = jnp.zeros(shape, dt)
    factors = tuple(jnp.zeros((d, d), dt) for d in shape)
    bases = tuple(jnp.eye(d, dtype=dt) for d in shape)
    values = tuple(jnp.full((d,), init_factor, dt) for d in shape)
    if soap:
        return KLSOAPLeaf(
            bases=bases, factors=factors, mu=zeros, nu=jnp.zeros_like(zeros), values=values
        )
    return KronLeaf(bases=bases, factors=factors, mu=zeros, values=values)


def _first(g, leaf, beta):
    """Initialise the factors from the first gradient; no parameter update."""
    factors = tuple((1 - beta) / other_size(g.shape, j) * mode_gram(g, j) for j in range(g.ndim))
    return leaf._replace(factors=factors, bases=tuple(eigh_desc(s) for s in factors))


def _statistics(g, leaf, *, q, beta, damping, clamp, max_clamp):
    """Factor and eigenvalue EMAs of mode ``j`` from the other modes' old ``(Q, λ)``."""
    k = g.ndim
    qs, lams = leaf.bases, leaf.values
    traces = [jnp.sum(lam**q) for lam in lams]  # Tr Ŝ_i^q (q = 0: d_i)
    parts = []  # G ×_{i≠j} Q_iᵀ; the full projection QᵀGQ is one more product of parts[0]
    for j in range(k):
        part = g
        for i in range(k):
            if i != j:
                part = mode_dot(part, qs[i].T, i)
        parts.append(part)
    p2 = mode_dot(parts[0], qs[0].T, 0) ** 2
    factors, values = [], []
    for j in range(k):
        others = [i for i in range(k) if i != j]
        denom = math.prod(traces[i] for i in others) if others else 1.0
        h, w = parts[j], p2
        for i in others:
            h = h * _along(lams[i] ** (0.5 * (q - 1)), i, k)
            w = w * _along(lams[i] ** (q - 1), i, k)
        factors.append(beta * leaf.factors[j] + (1 - beta) * mode_gram(h, j) / denom)
        target = jnp.sum(w, axis=tuple(others)) / denom
        if damping:
            target = target + damping * math.prod(jnp.mean(1.0 / lams[i]) for i in others)
        values.append(_clamp(beta * lams[j] + (1 - beta) * target, g.shape[j], clamp, max_clamp))
    return tuple(factors), tuple(values)


def _scale_by_kron(
    *,
    soap,
    q,
    b1,
    b2,
    beta,
    eps,
    frequency,
    init_factor,
    damping,
    clamp,
    max_clamp,
    tensor_mode,
    state_dtype,
):
    q, b1, b2, beta, eps = float(q), float(b1), float(b2), float(beta), float(eps)
    frequency = int(frequency)
    stats = dict(
        q=q, beta=beta, damping=float(damping), clamp=bool(clamp), max_clamp=float(max_clamp)
    )

    def init(params):
        leaves = jax.tree.map(
            lambda p: _init_leaf(
                p,
                tensor_mode=tensor_mode,
                init_factor=float(init_factor),
                state_dtype=state_dtype,
                soap=soap,
            ),
            params,
        )
        return KronState(jnp.zeros([], jnp.int32), leaves)

    def regular(g, leaf, t):
        qs = leaf.bases
        if soap:
            gp = project(g, qs)
            mu = b1 * leaf.mu + (1 - b1) * gp
            nu = b2 * leaf.nu + (1 - b2) * gp**2
            u = project_back(mu / (jnp.sqrt(nu) + eps), qs)
            leaf = leaf._replace(mu=mu, nu=nu)
        else:
            mu = b1 * leaf.mu + (1 - b1) * g
            x = math.prod(_along(lam**-0.5, j, g.ndim) for j, lam in enumerate(leaf.values))
            u = project_back(project(mu, qs) * (x / (1.0 + eps * x)), qs)
            leaf = leaf._replace(mu=mu)
        factors, values = _statistics(g, leaf, **stats)
        leaf = leaf._replace(factors=factors, values=values)
        if frequency > 0:

            def refresh(leaf):
                new = tuple(qr_basis(s, qb) for s, qb in zip(leaf.factors, leaf.bases, strict=True))
                if soap:
                    leaf = leaf._replace(mu=project(project_back(leaf.mu, leaf.bases), new))
                return leaf._replace(bases=new)

            leaf = lax.cond(t % frequency == 0, refresh, lambda leaf: leaf, leaf)
        return u, leaf

    def update(updates, state, params=None):
        del params
        t = state.count
        state = state._replace(leaves=conform(state.leaves, init, updates))

        new_u, leaves = lax.cond(
            t == 0,
            lambda: leafwise(
                lambda g, leaf: (jnp.zeros_like(g), _first(g, leaf, beta)), updates, state.leaves
            ),
            lambda: leafwise(lambda g, leaf: regular(g, leaf, t), updates, state.leaves),
        )
        return new_u, KronState(optax.safe_increment(t), leaves)

    return optax.GradientTransformation(init, update)


def scale_by_trace_power(
    q: float = 0.0,
    *,
    b1: float = 0.9,
    shampoo_beta: float = 0.98,
    eps: float = 1e-8,
    frequency: int = 10,
    init_factor: float = 0.1,
    damping: float = 0.0,
    clamp: bool = True,
    max_clamp: float = 4000,
    tensor_mode: str = "modewise",
    state_dtype: Any = None,
) -> optax.GradientTransformation:
    """The direction ``U`` of KL-Shampoo (``q = 0``) or a trace-power Shampoo (module doc).

    Args:
        q: the power of the trace-power family (0 KL, ½ SQ, 1 VN, 2 F).
        b1: momentum ``β₁``.
        shampoo_beta: weight of the old factors and eigenvalues ``β``.
        eps: ``ε`` in ``1/(√(λ_aλ_b)+ε)``.
        frequency: QR refresh period ``T`` (0: never).
        init_factor: initial eigenvalues.
        damping: ``κ`` added as ``κ·Π_{i≠j} mean(1/λ_i)`` to the eigenvalue targets (KL only).
        clamp: clamp ``λ^{-1/2}`` at ``max(10, min(d, max_clamp))``.
        max_clamp: see ``clamp``.
        tensor_mode: ``"modewise"`` or ``"matrix"`` for order ≥ 3.
        state_dtype: dtype of the state (None: the parameter's); eigh/QR run in float32
            (float64 for float64 states).

    Returns:
        The transformation (state ``KronState`` of ``KronLeaf``).

    Raises:
        ValueError: damping with ``q ≠ 0``.
    """
    if damping and q != 0:
        raise ValueError("damping is defined for KL-Shampoo (q = 0) only")
    return _scale_by_kron(
        soap=False,
        q=q,
        b1=b1,
        b2=0.0,
        beta=shampoo_beta,
        eps=eps,
        frequency=frequency,
        init_factor=init_factor,
        damping=damping,
        clamp=clamp,
        max_clamp=max_clamp,
        tensor_mode=tensor_mode,
        state_dtype=state_dtype,
    )


def scale_by_kl_soap(
    *,
    b1: float = 0.9,
    b2: float = 0.98,
    shampoo_beta: float = 0.98,
    eps: float = 1e-8,
    frequency: int = 10,
    init_factor: float = 0.1,
    damping: float = 0.0,
    clamp: bool = True,
    max_clamp: float = 4000,
    tensor_mode: str = "modewise",
    state_dtype: Any = None,
) -> optax.GradientTransformation:
    """KL-SOAP's direction: Adam (``b1``, ``b2``, ``eps``) in KL-Shampoo's eigenbasis.

    The other arguments are ``scale_by_trace_power``'s (``q = 0``).
    """
    return _scale_by_kron(
        soap=True,
        q=0.0,
        b1=b1,
        b2=b2,
        beta=shampoo_beta,
        eps=eps,
        frequency=frequency,
        init_factor=init_factor,
        damping=damping,
        clamp=clamp,
        max_clamp=max_clamp,
        tensor_mode=tensor_mode,
        state_dtype=state_dtype,
    )


def trace_power_shampoo(
    q: float,
    learning_rate: Any = 1e-4,
    *,
    b1: float = 0.9,
    b2: float = 0.98,
    shampoo_beta: float | None = None,
    eps: float = 1e-8,
    weight_decay: float = 0.01,
    labels: Any = None,
    max_dim: int = 10_000,
    fallback: optax.GradientTransformation | None = None,
    **kwargs: Any,
) -> optax.GradientTransformation:
    """A trace-power Shampoo optimiser (KL-Shampoo's EMA scheme with power ``q``).

    ``W ← W − ηU`` then ``W ← W − η·wd·W`` on Kronecker leaves; other leaves (see
    ``default_labels``) get ``fallback`` (default AdamW with ``b1``,
    ``b2``, ``eps``, ``weight_decay``).

    Args:
        q: the power (0 KL, ½ SQ, 1 VN, 2 F).
        learning_rate: ``η`` (a float or an optax schedule).
        b1: momentum.
        b2: the reference code's second beta; ``shampoo_beta`` defaults to it.
        shampoo_beta: weight of the old factors (None: ``b2``).
        eps: ``ε``.
        weight_decay: decoupled weight decay (after the step).
        labels: per-leaf labels (``"kron"``/``"fallback"``) or a function of the params.
        max_dim: largest mode the default labels precondition.
        fallback: the transformation for ``"fallback"`` leaves.
        **kwargs: ``scale_by_trace_power``'s other arguments (``frequency``,
            ``init_factor``, ``damping``, ``clamp``, ``max_clamp``, ``tensor_mode``,
            ``state_dtype``).

    Returns:
        The optimiser.
    """
    beta = b2 if shampoo_beta is None else shampoo_beta
    direction = scale_by_trace_power(q, b1=b1, shampoo_beta=beta, eps=eps, **kwargs)
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


def kl_shampoo(learning_rate: Any = 1e-4, **kwargs: Any) -> optax.GradientTransformation:
    """KL-Shampoo with the reference code's defaults (``lr=1e-4, b1=0.9, b2=0.98, eps=1e-8,
    weight_decay=0.01, frequency=10, init_factor=0.1, max_clamp=4000``).

    Args:
        learning_rate: ``η``.
        **kwargs: ``trace_power_shampoo``'s keyword arguments.

    Returns:
        The optimiser.
    """
    return trace_power_shampoo(0.0, learning_rate, **kwargs)


def sq_shampoo(learning_rate: Any = 1e-4, **kwargs: Any) -> optax.GradientTransformation:
    """SQ-Shampoo: the trace-power optimiser with ``q = ½`` (arguments as ``kl_shampoo``)."""
    return trace_power_shampoo(0.5, learning_rate, **kwargs)


def vn_shampoo(learning_rate: Any = 1e-4, **kwargs: Any) -> optax.GradientTransformation:
    """VN-Shampoo: the trace-power optimiser with ``q = 1`` (arguments as ``kl_shampoo``)."""
    return trace_power_shampoo(1.0, learning_rate, **kwargs)


def f_shampoo(learning_rate: Any = 1e-4, **kwargs: Any) -> optax.GradientTransformation:
    """F-Shampoo: the trace-power optimiser with ``q = 2`` (arguments as ``kl_shampoo``)."""
    return trace_power_shampoo(2.0, learning_rate, **kwargs)


def kl_soap(
    learning_rate: Any = 1e-4,
    *,
    b1: float = 0.9,
    b2: float = 0.98,
    shampoo_beta: float | None = None,
    eps: float = 1e-8,
    weight_decay: float = 0.01,
    labels: Any = None,
    max_dim: int = 10_000,
    fallback: optax.GradientTransformation | None = None,
    **kwargs: Any,
) -> optax.GradientTransformation:
    """KL-SOAP with the reference code's defaults (as ``kl_shampoo``).

    Args:
        learning_rate: as in ``trace_power_shampoo``.
        b1: as in ``trace_power_shampoo``.
        b2: as in ``trace_power_shampoo``; also Adam's second-moment beta.
        shampoo_beta: as in ``trace_power_shampoo``.
        eps: as in ``trace_power_shampoo``.
        weight_decay: as in ``trace_power_shampoo``.
        labels: as in ``trace_power_shampoo``.
        max_dim: as in ``trace_power_shampoo``.
        fallback: as in ``trace_power_shampoo``.
        **kwargs: ``scale_by_kl_soap``'s other arguments.

    Returns:
        The optimiser.
    """
    beta = b2 if shampoo_beta is None else shampoo_beta
    direction = scale_by_kl_soap(b1=b1, b2=b2, shampoo_beta=beta, eps=eps, **kwargs)
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
