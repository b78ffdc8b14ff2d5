"""KL-Shampoo, the trace-power family (F-, VN-, SQ-Shampoo) and KL-SOAP: one rule.

For a power ``q`` the factor of mode ``j`` tracks

    S_j ← β S_j + (1−β) · E[G_(j) (⊗_{i≠j} Ŝ_i^{q−1}) G_(j)ᵀ] / Π_{i≠j} Tr Ŝ_i^q,

the stationarity condition of the trace-power Bregman fit of ``Σ`` by ``⊗_j S_j`` (``q = 0``
is KL-Shampoo's whitened update ``G Ŝ_b^{-1} Gᵀ/d_b``; ``q = ½`` SQ-, ``q = 1`` VN-,
``q = 2`` F-Shampoo). ``Ŝ_i = Q_i diag(λ_i) Q_iᵀ`` is the other factor's *eigen-approximation*
(not the accumulated matrix). The eigenvalues get their own EMA towards
``diag(Q_jᵀ stat Q_j)`` in the current basis (all modes simultaneously, from the old ``λ``),
plus ``κ·Π_{i≠j} Σλ_i^{q−1}/Σλ_i^q`` with damping ``κ`` (``κ·mean(1/λ)`` at ``q = 0``), are
clamped so that ``λ^{-1/2} ≤ max(10, min(d, max_clamp))``, and the bases are refreshed every
``frequency`` steps by one power step plus QR. The first call only initialises (no
parameter update): ``S_j = (1−β)/Π_{i≠j}d_i · E[G_(j)G_(j)ᵀ]``, ``Q_j`` from ``eigh``
(descending), ``λ = init_factor``.

Step ``t ≥ 1`` (as the KL-Methods reference code, ``optim/kl_opt.py``):

* KL-/trace-power Shampoo: ``M ← β₁M + (1−β₁)G``; ``U = Q[(QᵀMQ) ⊙ x/(1+ε x)]Qᵀ`` with
  ``x = ⊗_j λ_j^{-1/2}``; then the factor/eigenvalue/basis step.
* KL-SOAP: Adam in the KL eigenbasis, ``G' = QᵀGQ``, ``m ← β₁m + (1−β₁)G'``,
  ``v ← β₂v + (1−β₂)G'²``, ``U = Q[m/(√v+ε)]Qᵀ`` (no bias correction); ``m`` is rotated into
  the new basis when the basis is refreshed.

Deliberate differences from the reference code, each an option: for tensors its 3-D path
uses some already-updated eigenvalues within a step (mode 3 first); this rule updates all
modes from the old values, the rule its 2-D path follows. ``eigenvalues="instant"``
(``λ = diag(QᵀSQ)`` in the current basis) and ``"eigh"`` (basis and values by ``eigh`` every
step) are P1's ablations of the eigenvalue EMA; ``"ema"`` is the method.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from ..structures import EigenKronecker, Structure
from ._core import MethodSpec, Rule, register, two_mode_aliases
from ._hp import hp
from ._ops import (
    batch_mode_dot,
    cast_like,
    eigh_desc,
    mode_gram,
    other_size,
    project,
    project_back,
    qr_basis,
)

__all__ = [
    "EIGENVALUE_UPDATES",
    "KLSOAPLeaf",
    "KronLeaf",
    "kl_soap_rule",
    "trace_power_rule",
]

#: How the eigenvalues follow the factors: the method's EMA, or P1's two ablations.
EIGENVALUE_UPDATES = ("ema", "instant", "eigh")


class KronLeaf(NamedTuple):
    """Per-leaf state of KL-/trace-power Shampoo (fields in alphabetical order).

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
    """Per-leaf state of KL-SOAP: ``KronLeaf``'s fields with Adam's moments in the basis.

    Attributes:
        bases: as in ``KronLeaf``.
        factors: as in ``KronLeaf``.
        mu: Adam's first moment of ``QᵀGQ`` (in the current basis).
        nu: Adam's second moment of ``QᵀGQ``.
        values: as in ``KronLeaf``.
    """

    bases: tuple[jax.Array, ...]
    factors: tuple[jax.Array, ...]
    mu: jax.Array
    nu: jax.Array
    values: tuple[jax.Array, ...]


two_mode_aliases(KronLeaf, KLSOAPLeaf)


def _along(v: jax.Array, axis: int, ndim: int) -> jax.Array:
    shape = [1] * ndim
    shape[axis] = v.shape[0]
    return v.reshape(shape)


def _clamp(lam: jax.Array, dim: int, on: bool, max_clamp: Any) -> jax.Array:
    if not on:
        return lam
    cap = jnp.maximum(10.0, jnp.minimum(float(dim), max_clamp))  # bound on λ^{-1/2}
    return jnp.maximum(lam, (1.0 / cap**2).astype(lam.dtype))


def _damping_terms(values, q, damping) -> list[Any]:
    """``κ·Π_{i≠j} Σλ_i^{q−1}/Σλ_i^q`` per mode ``j``, from the given (old) values."""
    ratios = [jnp.sum(lam ** (q - 1)) / jnp.sum(lam**q) for lam in values]
    k = len(values)
    return [damping * math.prod(ratios[i] for i in range(k) if i != j) for j in range(k)]


def _kl_rule(
    *,
    soap: bool,
    q: Any,
    b1: Any,
    b2: Any,
    shampoo_beta: Any,
    eps: Any,
    frequency: Any,
    init_factor: Any,
    damping: Any,
    clamp: bool,
    max_clamp: Any,
    eigenvalues: str,
    tensor_mode: str,
    state_dtype: Any,
) -> Rule:
    q = hp(q, "q", low=0.0)
    b1 = hp(b1, "b1", low=0.0, high=1.0, high_open=True)
    b2 = hp(b2, "b2", low=0.0, high=1.0, high_open=True)
    beta = hp(shampoo_beta, "shampoo_beta", low=0.0, high=1.0, high_open=True)
    eps = hp(eps, "eps", low=0.0)
    frequency = hp(frequency, "frequency", low=0, integer=True)
    init_factor = hp(init_factor, "init_factor", low=0.0, low_open=True)
    damping = hp(damping, "damping", low=0.0)
    max_clamp = hp(max_clamp, "max_clamp", low=0.0, low_open=True)
    clamp = bool(clamp)
    if eigenvalues not in EIGENVALUE_UPDATES:
        raise ValueError(f"eigenvalues must be one of {EIGENVALUE_UPDATES}, got {eigenvalues!r}")

    def init(shape, dt):
        zeros = jnp.zeros(shape, dt)
        factors = tuple(jnp.zeros((d, d), dt) for d in shape)
        bases = tuple(jnp.eye(d, dtype=dt) for d in shape)
        values = tuple(jnp.full((d,), init_factor, dt) for d in shape)
        if soap:
            return KLSOAPLeaf(bases, factors, zeros, jnp.zeros_like(zeros), values)
        return KronLeaf(bases, factors, zeros, values)

    def instant(leaf, old_values, shape):
        """``λ_j = diag(Q_jᵀ S_j Q_j)`` plus the damping terms, clamped."""
        extra = _damping_terms(old_values, q, damping)
        return tuple(
            _clamp(jnp.sum(qj * (s @ qj), axis=0) + e, d, clamp, max_clamp)
            for qj, s, e, d in zip(leaf.bases, leaf.factors, extra, shape, strict=True)
        )

    def first(leaf, gb):
        shape = gb.shape[1:]
        factors = tuple(
            (1 - beta) / other_size(shape, j) * mode_gram(gb, j) for j in range(len(shape))
        )
        leaf = leaf._replace(factors=factors, bases=tuple(eigh_desc(s)[1] for s in factors))
        if eigenvalues != "ema":
            leaf = leaf._replace(values=instant(leaf, leaf.values, shape))
        return leaf

    def projections(gb, qs):
        """``G ×_{i≠j} Q_iᵀ`` per mode ``j`` and the full projection ``G ×_i Q_iᵀ`` (batched)."""
        k = gb.ndim - 1
        parts = []
        for j in range(k):
            part = gb
            for i in range(k):
                if i != j:
                    part = batch_mode_dot(part, qs[i].T, i)
            parts.append(part)
        return parts, batch_mode_dot(parts[0], qs[0].T, 0)

    def statistics(leaf, parts, gpb):
        """Factor and eigenvalue EMAs of every mode from the other modes' old ``(Q, λ)``."""
        shape = gpb.shape[1:]
        k = len(shape)
        lams = leaf.values
        traces = [jnp.sum(lam**q) for lam in lams]  # Tr Ŝ_i^q (q = 0: d_i)
        p2 = jnp.mean(gpb**2, axis=0)  # E[(QᵀGQ)²]
        extra = _damping_terms(lams, q, damping)
        factors, targets = [], []
        for j in range(k):
            others = [i for i in range(k) if i != j]
            denom = math.prod(traces[i] for i in others) if others else 1.0
            h, w = parts[j], p2
            for i in others:
                h = h * _along(lams[i] ** (0.5 * (q - 1)), i + 1, k + 1)
                w = w * _along(lams[i] ** (q - 1), i, k)
            factors.append(beta * leaf.factors[j] + (1 - beta) * mode_gram(h, j) / denom)
            targets.append(jnp.sum(w, axis=tuple(others)) / denom + extra[j])
        values = tuple(
            _clamp(beta * lam + (1 - beta) * tgt, d, clamp, max_clamp)
            for lam, tgt, d in zip(lams, targets, shape, strict=True)
        )
        return tuple(factors), values

    def regular(leaf, gb, t):
        qs = leaf.bases
        shape = gb.shape[1:]
        parts, gpb = projections(gb, qs)  # Q_jᵀ on the modes of every sample
        if soap:
            mu = b1 * leaf.mu + (1 - b1) * jnp.mean(gpb, axis=0)
            nu = b2 * leaf.nu + (1 - b2) * jnp.mean(gpb**2, axis=0)
            u = project_back(mu / (jnp.sqrt(nu) + eps), qs)
            leaf = leaf._replace(mu=mu, nu=nu)
        else:
            mu = b1 * leaf.mu + (1 - b1) * jnp.mean(gb, axis=0)
            x = math.prod(_along(lam**-0.5, j, len(shape)) for j, lam in enumerate(leaf.values))
            u = project_back(project(mu, qs) * (x / (1.0 + eps * x)), qs)
            leaf = leaf._replace(mu=mu)
        old_values = leaf.values
        factors, values = statistics(leaf, parts, gpb)
        leaf = leaf._replace(factors=factors, values=values)
        if eigenvalues == "eigh":
            pairs = [eigh_desc(s) for s in factors]
            extra = _damping_terms(old_values, q, damping)
            vals = tuple(
                _clamp(w + e, d, clamp, max_clamp)
                for (w, _), e, d in zip(pairs, extra, shape, strict=True)
            )
            return u, leaf._replace(bases=tuple(v for _, v in pairs), values=vals)

        def refresh(leaf):
            new = tuple(qr_basis(s, qb) for s, qb in zip(leaf.factors, leaf.bases, strict=True))
            if soap:
                leaf = leaf._replace(mu=project(project_back(leaf.mu, leaf.bases), new))
            return leaf._replace(bases=new)

        due = (frequency > 0) & (t % jnp.maximum(frequency, 1) == 0)
        leaf = lax.cond(due, refresh, lambda leaf: leaf, leaf)
        if eigenvalues == "instant":
            leaf = leaf._replace(values=instant(leaf, old_values, shape))
        return u, leaf

    def step(leaf, gb, count, param, per_example):
        del param, per_example
        return lax.cond(
            count == 0,
            lambda: (jnp.zeros(gb.shape[1:], gb.dtype), cast_like(first(leaf, gb), leaf)),
            lambda: cast_like(regular(leaf, gb, count), (gb[0], leaf)),
        )

    return Rule(init, step, tensor_mode, state_dtype)


def trace_power_rule(
    q: float = 0.0,
    *,
    b1: float = 0.9,
    shampoo_beta: float = 0.98,
    eps: float = 1e-8,
    frequency: int = 10,
    init_factor: float = 0.1,
    damping: float = 0.0,
    clamp: bool = True,
    max_clamp: float = 4000.0,
    eigenvalues: str = "ema",
    tensor_mode: str = "modewise",
    state_dtype: Any = None,
) -> Rule:
    """KL-Shampoo (``q = 0``) or a trace-power Shampoo (module doc), the reference defaults.

    Args:
        q: the power of the trace-power family (0 KL, ½ SQ, 1 VN, 2 F); ``≥ 0``.
        b1: momentum ``β₁`` in ``[0, 1)``.
        shampoo_beta: weight of the old factors and eigenvalues ``β`` in ``[0, 1)``.
        eps: ``ε ≥ 0`` in ``x/(1+εx)``.
        frequency: QR refresh period ``T`` (0: never).
        init_factor: initial eigenvalues (``> 0``).
        damping: ``κ ≥ 0`` added to the eigenvalue targets (module doc).
        clamp: clamp ``λ^{-1/2}`` at ``max(10, min(d, max_clamp))``.
        max_clamp: see ``clamp`` (``> 0``).
        eigenvalues: ``"ema"`` (the method), ``"instant"`` or ``"eigh"`` (P1's ablations).
        tensor_mode: ``"modewise"`` or ``"matrix"`` for order ≥ 3.
        state_dtype: dtype of the state (None: the parameter's); eigh/QR run in float32
            (float64 for float64 states).

    Returns:
        The rule (leaf state ``KronLeaf``).
    """
    return _kl_rule(
        soap=False,
        q=q,
        b1=b1,
        b2=0.0,
        shampoo_beta=shampoo_beta,
        eps=eps,
        frequency=frequency,
        init_factor=init_factor,
        damping=damping,
        clamp=clamp,
        max_clamp=max_clamp,
        eigenvalues=eigenvalues,
        tensor_mode=tensor_mode,
        state_dtype=state_dtype,
    )


def kl_soap_rule(
    *,
    b1: float = 0.9,
    b2: float = 0.98,
    shampoo_beta: float = 0.98,
    eps: float = 1e-8,
    frequency: int = 10,
    init_factor: float = 0.1,
    damping: float = 0.0,
    clamp: bool = True,
    max_clamp: float = 4000.0,
    tensor_mode: str = "modewise",
    state_dtype: Any = None,
) -> Rule:
    """KL-SOAP: Adam (``b1``, ``b2``, ``eps``) in KL-Shampoo's eigenbasis.

    The factors, eigenvalues and bases are ``trace_power_rule``'s at ``q = 0``,
    ``eigenvalues="ema"``.

    Args:
        b1: Adam's ``β₁`` in ``[0, 1)``.
        b2: Adam's ``β₂`` in ``[0, 1)`` (no bias correction, as the reference code).
        shampoo_beta: weight of the old factors and eigenvalues ``β`` in ``[0, 1)``.
        eps: Adam's ``ε ≥ 0``.
        frequency: QR refresh period ``T`` (0: never).
        init_factor: initial eigenvalues (``> 0``).
        damping: ``κ ≥ 0`` added to the eigenvalue targets.
        clamp: clamp ``λ^{-1/2}`` at ``max(10, min(d, max_clamp))``.
        max_clamp: see ``clamp`` (``> 0``).
        tensor_mode: ``"modewise"`` or ``"matrix"`` for order ≥ 3.
        state_dtype: dtype of the state (None: the parameter's).

    Returns:
        The rule (leaf state ``KLSOAPLeaf``).
    """
    return _kl_rule(
        soap=True,
        q=0.0,
        b1=b1,
        b2=b2,
        shampoo_beta=shampoo_beta,
        eps=eps,
        frequency=frequency,
        init_factor=init_factor,
        damping=damping,
        clamp=clamp,
        max_clamp=max_clamp,
        eigenvalues="ema",
        tensor_mode=tensor_mode,
        state_dtype=state_dtype,
    )


def _kron_approximation(leaf: KronLeaf) -> Structure | None:
    """``Q_a diag(λ_a) Q_aᵀ ⊗ Q_b diag(λ_b) Q_bᵀ`` (its power −½ is the method's step)."""
    if len(leaf.bases) != 2:
        return None
    return EigenKronecker(*leaf.bases, jnp.outer(*leaf.values))


def _kl_soap_approximation(leaf: KLSOAPLeaf) -> Structure | None:
    """``(Q_a ⊗ Q_b) diag(v) (Q_a ⊗ Q_b)ᵀ``: Adam in the KL eigenbasis (no bias correction)."""
    if len(leaf.bases) != 2:
        return None
    return EigenKronecker(*leaf.bases, leaf.nu)


_KL_SOURCE = (
    "Lin et al. 2025, KL-Shampoo (arXiv 2509.03378); reference code yorkerlin/KL-Methods "
    "optim/kl_opt.py"
)
for _name, _label, _q, _ref in (
    ("kl_shampoo", "KL-Shampoo", 0.0, "trace_power_shampoo"),
    ("sq_shampoo", "SQ-Shampoo", 0.5, "trace_power_shampoo"),
    ("vn_shampoo", "VN-Shampoo", 1.0, "trace_power_shampoo"),
    ("f_shampoo", "F-Shampoo", 2.0, "trace_power_shampoo"),
):
    register(
        MethodSpec(
            name=_name,
            label=_label,
            rule=trace_power_rule,
            leaf_type=KronLeaf,
            approximation=_kron_approximation,
            power=0.5,
            optimizer=_name,
            reference=_ref,
            source=_KL_SOURCE
            if _q == 0.0
            else "the trace-power Bregman family (arXiv 2610.08534) on KL-Shampoo's EMA scheme",
            fixed={"q": _q},
        )
    )
register(
    MethodSpec(
        name="kl_soap",
        label="KL-SOAP",
        rule=kl_soap_rule,
        leaf_type=KLSOAPLeaf,
        approximation=_kl_soap_approximation,
        power=0.5,
        optimizer="kl_soap",
        reference="kl_soap",
        source=_KL_SOURCE,
    )
)
