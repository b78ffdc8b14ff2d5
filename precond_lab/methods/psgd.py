"""PSGD-Kron: Xi-Lin Li's Kronecker-factored preconditioned SGD with the whitening criterion
(``psgd_torch``'s ``KronWhiten``, dense factors on every mode, ``dQ = Q^{0.5} E Q^{1.5}``).

State per leaf: one factor ``Q_j`` per mode and its Lipschitz estimate ``L_j``; the
preconditioner is ``P = ⊗_j P_j`` with ``P_j = Q_jᵀQ_j``. Step ``t`` (``count`` earlier
calls), batch ``gb`` (``N`` gradients, mean ``G``):

1. first call, ``init_scale=None``: ``Q_j = s^{1/k} I`` with ``s = (mean|G|⁴ + δ⁴)^{-1/8}``
   (the official code takes the largest ``mean|G|⁴`` over all parameters; per leaf here);
2. momentum (``momentum > 0``): ``M ← βM + (1−β)G``, ``β = min(t/(1+t), momentum)``;
3. the preconditioner update (before the step, the official default), for every mode ``j``
   from the old factors:

   * ``whitening="partial"`` (the official code): ``A_j = mean_b (P G_b)_(j) (P G_b)_(j)ᵀ +
     δ² Π_{i≠j} tr(P_i²) P_j²``, ``c_j = numel/d_j``;
   * ``whitening="criterion"``: ``A_j = P_j mean_b[G_b,(j) P_{−j} G_b,(j)ᵀ] P_j +
     δ² Π_{i≠j} tr(P_i) P_j²``, ``c_j = Π_{i≠j} tr(P_i^{-1})`` (``P_{−j} = ⊗_{i≠j} P_i``);

   then ``ℓ = ‖A_j‖₂ + c_j``, ``L_j ← max(β_L L_j + (1−β_L)ℓ, ℓ)``,
   ``Q_j ← Q_j − (η_P/L_j)(A_j Q_j − c_j Q_j)`` and one online Procrustes step
   (``Q ← Q + a(RQ + ½aRRQ)``, ``R = (Qᵀ − Q)/‖Qᵀ − Q‖₂``, ``a = min(−tr RQ/tr RRQ, ⅛)`` when
   ``tr RRQ < 0``, else ``⅛``) that keeps ``Q_j`` near symmetric;
4. the direction ``D = P G`` (or ``P M``), clipped as the official code: scaled to an RMS
   of at most ``clip_rms`` (2), then clamped to ``±clip_element`` (10).

The damping noise ``δV`` the official code adds to the whitened gradient is integrated out
(its expectation, the ``δ²`` terms above) and the two norm *lower bounds* it estimates by a
random subspace iteration are the exact spectral norms here, so the rule is deterministic;
the official code's random 1 % "balancing" of the factors' scales is left out (the update
is equivariant to it: it changes nothing but round-off).

**What the two updates fit.** The whitening criterion ``E[gᵀPg] + E[vᵀP⁻¹v]``
(``v ~ N(0, I)``) is ``tr(PC) + tr(P⁻¹)``; with ``Σ̂ = P^{-2}`` it is ``½ B_{½}(C, Σ̂)`` plus a
constant, the trace-power Bregman divergence at ``q = ½`` (``precond_lab.estimators``'s
``bregman_optimal``). ``whitening="criterion"`` is that criterion's natural gradient in
Kronecker factors: its stationary point is ``L = E[G R^{-½} Gᵀ]/tr R^{½}``, the SQ optimum.
The official update (``"partial"``) instead drives the *partial traces* of ``PCP`` to
those of ``I``: its stationary point ``P_j^{-2} ∝ E[G_(j) P_{−j}² G_(j)ᵀ]/d_{−j}`` is the KL
flip-flop fixed point (``q = 0``). The two coincide for an exactly Kronecker ``C``.
``tests/optim/test_psgd_splus.py`` runs both on a stationary non-Kronecker stream.

The ``Σ`` the state stands for is ``P^{-2} = ⊗_j (Q_jᵀQ_j)^{-2}`` (power ½: the optimiser
applies ``Σ^{-1/2} = P``), up to PSGD's free scale.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ..structures import Kronecker, Structure
from ._core import MethodSpec, Rule, register, two_mode_aliases
from ._hp import hp
from ._ops import batch_mode_dot, cast_like, eigh, linalg_dtype, mode_dot, mode_gram

__all__ = ["WHITENINGS", "PSGDLeaf", "procrustes_step", "psgd_kron_rule"]

#: The preconditioner updates: the official code's and the criterion's natural gradient.
WHITENINGS = ("partial", "criterion")


class PSGDLeaf(NamedTuple):
    """Per-leaf state of PSGD-Kron.

    Attributes:
        factors: ``Q_j``, one per mode (the preconditioner is ``⊗_j Q_jᵀQ_j``).
        lipschitz: ``L_j``, the factors' Lipschitz estimates (scalars, 0 before the first).
        mu: the momentum ``M`` (zeros when ``momentum = 0``).
    """

    factors: tuple[jax.Array, ...]
    lipschitz: tuple[jax.Array, ...]
    mu: jax.Array


two_mode_aliases(PSGDLeaf)


def _sym_max_eig(a: jax.Array) -> jax.Array:
    """The largest eigenvalue of a symmetric matrix (its spectral norm when PSD)."""
    x = a.astype(linalg_dtype(a.dtype))
    return eigh(0.5 * (x + x.T))[0][-1].astype(a.dtype)


def procrustes_step(q: jax.Array, max_step: float = 0.125) -> jax.Array:
    """One online orthogonal-Procrustes rotation of ``Q`` towards a symmetric matrix
    (``psgd_torch``'s ``procrustes_step2`` with the exact norm of ``R = Qᵀ − Q``)."""
    r = q.T - q
    norm = jnp.sqrt(jnp.maximum(_sym_max_eig(r.T @ r), 0.0))
    r = r / (norm + jnp.finfo(q.dtype).smallest_normal)
    rq = r @ q
    rrq = r @ rq
    tr_rq, tr_rrq = jnp.trace(rq), jnp.trace(rrq)
    neg = tr_rrq < 0
    a = jnp.where(neg, jnp.minimum(-tr_rq / jnp.where(neg, tr_rrq, -1.0), max_step), max_step)
    return q + a * (rq + 0.5 * a * rrq)


def _apply(x: jax.Array, mats, offset: int) -> jax.Array:
    for j, a in enumerate(mats):
        x = batch_mode_dot(x, a, j) if offset else mode_dot(x, a, j)
    return x


def psgd_kron_rule(
    *,
    lr_preconditioner: float = 0.1,
    beta_l: float = 0.9,
    damping: float = 1e-9,
    momentum: float = 0.0,
    init_scale: float | None = None,
    clip_rms: float | None = 2.0,
    clip_element: float | None = 10.0,
    whitening: str = "partial",
    tensor_mode: str = "modewise",
    state_dtype: Any = None,
) -> Rule:
    """PSGD-Kron's rule (module doc), ``psgd_torch``'s ``KronWhiten`` defaults.

    Args:
        lr_preconditioner: the preconditioner's step ``η_P`` in ``(0, 1]``.
        beta_l: the Lipschitz estimates' EMA weight ``β_L`` in ``[0, 1)``.
        damping: ``δ ≥ 0``, the whitened gradient's damping noise (integrated out).
        momentum: ``[0, 1)``; ``> 0`` preconditions the momentum (the gradient is whitened).
        init_scale: ``Q = init_scale^{1/k} I`` at the start (``> 0``), or None to set it
            from the first gradient, ``(mean|G|⁴ + δ⁴)^{-1/8}``.
        clip_rms: the largest RMS of the direction (``> 0``; None: no clipping).
        clip_element: the largest absolute entry of the direction (``> 0``; None: none).
        whitening: ``"partial"`` (the official update; KL fixed point) or
            ``"criterion"`` (the criterion's natural gradient; SQ fixed point).
        tensor_mode: ``"modewise"`` or ``"matrix"``.
        state_dtype: the state's dtype (None: the parameter's).

    Returns:
        The rule (leaf state ``PSGDLeaf``).

    Raises:
        ValueError: a hyper-parameter out of its range or an unknown ``whitening``.
    """
    lr_p = hp(lr_preconditioner, "lr_preconditioner", low=0.0, high=1.0, low_open=True)
    beta_l = hp(beta_l, "beta_l", low=0.0, high=1.0, high_open=True)
    damping = hp(damping, "damping", low=0.0)
    momentum = hp(momentum, "momentum", low=0.0, high=1.0, high_open=True)
    if init_scale is not None:
        init_scale = hp(init_scale, "init_scale", low=0.0, low_open=True)
    if clip_rms is not None:
        clip_rms = hp(clip_rms, "clip_rms", low=0.0, low_open=True)
    if clip_element is not None:
        clip_element = hp(clip_element, "clip_element", low=0.0, low_open=True)
    use_mu = not (isinstance(momentum, (int, float)) and momentum == 0)
    if whitening not in WHITENINGS:
        raise ValueError(f"whitening must be one of {WHITENINGS}, got {whitening!r}")

    def init(shape, dt):
        k = len(shape)
        s = 1.0 if init_scale is None else init_scale ** (1.0 / k)
        return PSGDLeaf(
            factors=tuple(s * jnp.eye(d, dtype=dt) for d in shape),
            lipschitz=tuple(jnp.zeros([], dt) for _ in shape),
            mu=jnp.zeros(shape, dt),
        )

    def terms(gb, qs):
        ps = [q.T @ q for q in qs]
        numel = math.prod(gb.shape[1:])
        out = []
        if whitening == "partial":
            pgb = _apply(gb, ps, 1)
            tr_sq = [jnp.sum(p * p) for p in ps]
            for j, p in enumerate(ps):
                noise = (
                    math.prod(tr_sq[i] for i in range(len(ps)) if i != j) if len(ps) > 1 else 1.0
                )
                out.append((mode_gram(pgb, j) + damping**2 * noise * (p @ p), numel / p.shape[0]))
            return out
        tr = [jnp.trace(p) for p in ps]
        tr_inv = [
            jnp.trace(jnp.linalg.inv(p.astype(linalg_dtype(p.dtype)))).astype(p.dtype) for p in ps
        ]
        for j, p in enumerate(ps):
            others = [i for i in range(len(ps)) if i != j]
            half = _apply(gb, [p if i == j else qs[i] for i in range(len(ps))], 1)
            noise = math.prod(tr[i] for i in others) if others else 1.0
            c = math.prod(tr_inv[i] for i in others) if others else jnp.ones([], p.dtype)
            out.append((mode_gram(half, j) + damping**2 * noise * (p @ p), c))
        return out

    def step(leaf, gb, count, param, per_example):
        del param, per_example
        g = jnp.mean(gb, axis=0)
        qs = leaf.factors
        if init_scale is None:
            k = len(qs)
            s = (jnp.mean(jnp.abs(g) ** 4) + damping**4) ** (-1.0 / (8 * k))
            qs = tuple(jnp.where(count == 0, s * jnp.eye(q.shape[0], dtype=q.dtype), q) for q in qs)
        mu = leaf.mu
        if use_mu:
            beta = jnp.minimum(count / (1.0 + count), momentum)
            mu = beta * mu + (1 - beta) * g
        new_q, new_l = [], []
        for q, ell_old, (a, c) in zip(qs, leaf.lipschitz, terms(gb, qs), strict=True):
            ell = _sym_max_eig(a) + c
            ell = jnp.maximum(beta_l * ell_old + (1 - beta_l) * ell, ell)
            q = q - (lr_p / ell) * (a @ q - c * q)
            new_q.append(procrustes_step(q))
            new_l.append(ell)
        ps = [q.T @ q for q in new_q]
        d = _apply(mu if use_mu else g, ps, 0)
        if clip_rms is not None:
            rms = jnp.sqrt(jnp.mean(d * d))
            d = d * jnp.where(rms > clip_rms, clip_rms / jnp.where(rms > 0, rms, 1.0), 1.0)
        if clip_element is not None:
            d = jnp.clip(d, -clip_element, clip_element)
        new = PSGDLeaf(tuple(new_q), tuple(new_l), mu)
        return cast_like((d, new), (g, leaf))

    return Rule(init, step, tensor_mode, state_dtype)


def _psgd_approximation(leaf: PSGDLeaf) -> Structure | None:
    """``(P_a ⊗ P_b)^{-2}``, ``P_j = Q_jᵀQ_j``: the ``Σ`` whose ``−½`` power is PSGD's ``P``."""
    if len(leaf.factors) != 2:
        return None
    ps = [q.T @ q for q in leaf.factors]
    return Kronecker(*(0.5 * (p + p.T) for p in ps)).power(-2.0)


register(
    MethodSpec(
        name="psgd_kron",
        label="PSGD-Kron",
        rule=psgd_kron_rule,
        leaf_type=PSGDLeaf,
        approximation=_psgd_approximation,
        power=0.5,
        optimizer="psgd_kron",
        reference="psgd_kron",
        source="Li 2018 (arXiv 1512.04202); github.com/lixilinx/psgd_torch psgd.py "
        "KronWhiten (dQ = Q0.5EQ1.5), deterministic (noise integrated out, exact norms)",
    )
)
