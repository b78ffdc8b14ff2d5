"""DyKAF (Yudin, Grishina, Veprikov, Beznosikov & Rakhuba 2025, arXiv 2511.06477): Kronecker
factors of the EMA second moment tracked by a projector-splitting (KSL, Lubich & Oseledets
2014) step of its rank-1 Kronecker approximation, in a SOAP optimiser.

**Where this comes from.** No official code was found (searched GitHub and the web for
the paper's title, ``DyKAF`` and ``Kron_proj_split``). From the paper's abstract and
third-party summaries (the PDF's algorithm box was not read): the empirical Fisher
``F_t`` is approximated by ``L_t ⊗ R_t`` tracked with a projector-splitting integrator,
initialised from the dominant gradient structure, and used in a SOAP-style optimiser
(Adam in the eigenbasis of ``L_t, R_t``, refreshed periodically). **From our reading**
(not verifiable here): the KSL step below is the textbook first-order projector-splitting
step of the rank-1 approximation of the Van Loan–Pitsianis rearrangement ``𝓡(F)``
(``𝓡(L ⊗ R) = vec L vec Rᵀ``) with the increment ``ΔF = (1−β)(E[ggᵀ] − sU ⊗ V)`` of the
EMA ``F ← βF + (1−β)E[ggᵀ]`` at the current approximation; the start ``U = I/√m``,
``V = I/√n``, ``s = 0``; and SOAP's arithmetic around it (the vendored SOAP code this
package's ``soap`` method follows). The paper's exact normalisation, step order,
initialisation and damping are not verifiable here.

**The KSL step.** The state holds ``s ≥ 0`` and unit-Frobenius ``U`` (``m×m``), ``V``
(``n×n``): ``F̂ = s U ⊗ V``. With ``𝓡(ggᵀ)vec V = vec(GVGᵀ)`` and
``𝓡(ggᵀ)ᵀvec U = vec(GᵀUG)``, the K-, S- and L-steps of ``Y = (vec U) s (vec V)ᵀ`` are

* K: ``K = βsU + (1−β)E[GVGᵀ]``, ``U' = K/‖K‖_F``;
* S: ``s̃ = s⟨U', U⟩``;
* L: ``L = βs̃V + (1−β)E[GᵀU'G]``, ``s' = ‖L‖_F``, ``V' = L/s'``.

The K-step is one power-iteration step of the rank-1 problem on the EMA (Shampoo's
separate EMAs of ``GGᵀ`` and ``GᵀG`` weight every gradient direction equally, the K-step
weights ``G``'s columns by ``V``), and the pair is exact when ``E[ggᵀ]`` stays Kronecker.
A leaf with one mode keeps ``s, U`` of the K-step alone (an EMA of ``E[ggᵀ]``).

**The optimiser** is SOAP's (``methods.soap_rule``) with these factors in place of
Shampoo's: the first call sets the factors and ``Q_j`` (``eigh``, descending), no update;
then ``G' = G ×_j Q_jᵀ``, ``m ← β₁m + (1−β₁)G'``, ``v ← β₂v + (1−β₂)G'²``,
``D = √(1−β₂^t)/(1−β₁^t)·(m/(√v + ε)) ×_j Q_j``; the KSL step; every ``frequency`` steps
``Q_j ← QR(U_jQ_j).Q`` (``U_j = U, V``) with ``m`` rotated into the new basis.

**The ``Σ`` the state stands for** is the tracked Kronecker factorisation, bias-corrected:
``(s/(1−β^t)) U ⊗ V`` (an estimate of ``E[ggᵀ]``; the optimiser applies Adam's diagonal
in its eigenbasis, not its root).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from ..structures import Kronecker, Structure
from ._core import MethodSpec, Rule, register, two_mode_aliases
from ._hp import hp
from ._ops import cast_like, eigh_desc, mode_gram
from .shampoo import _soap_direction, _soap_refresh

__all__ = ["DyKAFLeaf", "dykaf_rule", "ksl_step"]


class DyKAFLeaf(NamedTuple):
    """Per-leaf state of DyKAF.

    Attributes:
        bases: the eigenbases ``Q_j`` of the factors.
        bias: ``1 − β^t``, the factors' bias correction after ``t`` KSL steps (1 before).
        factors: ``U, V`` (unit Frobenius norm; one ``U`` for a one-mode leaf).
        mu: Adam's first moment in the eigenbasis.
        nu: Adam's second moment in the eigenbasis.
        scale: ``s``, the approximation is ``s·U ⊗ V``.
    """

    bases: tuple[jax.Array, ...]
    bias: jax.Array
    factors: tuple[jax.Array, ...]
    mu: jax.Array
    nu: jax.Array
    scale: jax.Array


two_mode_aliases(DyKAFLeaf)


def _unit(x: jax.Array, fallback: jax.Array) -> tuple[jax.Array, jax.Array]:
    norm = jnp.linalg.norm(x)
    return jnp.where(norm > 0, x / jnp.where(norm > 0, norm, 1.0), fallback), norm


def ksl_step(
    factors: tuple[jax.Array, ...], scale: jax.Array, gb: jax.Array, beta: Any
) -> tuple[tuple[jax.Array, ...], jax.Array]:
    """One projector-splitting (KSL) step of ``s·U ⊗ V`` towards ``βF + (1−β)E[ggᵀ]``.

    Args:
        factors: ``(U, V)``, unit Frobenius norm (or ``(U,)`` for a one-mode leaf).
        scale: ``s ≥ 0``.
        gb: the batch ``(N, m, n)`` (or ``(N, m)``).
        beta: the EMA's ``β`` in ``[0, 1)``.

    Returns:
        ``((U', V'), s')`` (module doc).
    """
    if len(factors) == 1:
        (u,) = factors
        k, norm = _unit(beta * scale * u + (1 - beta) * mode_gram(gb, 0), u)
        return (k,), norm
    u, v = factors
    n = gb.shape[0]
    k = beta * scale * u + (1 - beta) * jnp.einsum("kia,ab,kjb->ij", gb, v, gb) / n
    u1, _ = _unit(0.5 * (k + k.T), u)
    s_tilde = scale * jnp.sum(u1 * u)
    lm = beta * s_tilde * v + (1 - beta) * jnp.einsum("kia,ij,kjb->ab", gb, u1, gb) / n
    v1, s1 = _unit(0.5 * (lm + lm.T), v)
    return (u1, v1), s1


def dykaf_rule(
    *,
    b1: float = 0.95,
    b2: float = 0.95,
    shampoo_beta: float = 0.95,
    eps: float = 1e-8,
    frequency: int = 10,
    correct_bias: bool = True,
    state_dtype: Any = None,
) -> Rule:
    """DyKAF's rule (module doc): SOAP with KSL-tracked Kronecker factors.

    Order-3+ leaves are reshaped to matrices (``tensor_mode="matrix"``): the KSL step is
    the two-factor one.

    Args:
        b1: Adam's ``β₁`` in ``[0, 1)``.
        b2: Adam's ``β₂`` in ``[0, 1)``.
        shampoo_beta: the second-moment EMA's ``β`` in ``[0, 1)`` (the KSL increment's).
        eps: Adam's ``ε ≥ 0``.
        frequency: basis refresh period (0: never).
        correct_bias: Adam's bias correction (SOAP's step-size form).
        state_dtype: the state's dtype (None: the parameter's).

    Returns:
        The rule (leaf state ``DyKAFLeaf``).
    """
    b1 = hp(b1, "b1", low=0.0, high=1.0, high_open=True)
    b2 = hp(b2, "b2", low=0.0, high=1.0, high_open=True)
    beta = hp(shampoo_beta, "shampoo_beta", low=0.0, high=1.0, high_open=True)
    eps = hp(eps, "eps", low=0.0)
    frequency = hp(frequency, "frequency", low=0, integer=True)
    correct_bias = bool(correct_bias)

    def init(shape, dt):
        zeros = jnp.zeros(shape, dt)
        return DyKAFLeaf(
            bases=tuple(jnp.eye(d, dtype=dt) for d in shape),
            bias=jnp.ones([], dt),
            factors=tuple(jnp.eye(d, dtype=dt) / jnp.sqrt(d) for d in shape),
            mu=zeros,
            nu=jnp.zeros_like(zeros),
            scale=jnp.zeros([], dt),
        )

    def first(leaf, gb):
        factors, scale = ksl_step(leaf.factors, leaf.scale, gb, beta)
        bases = tuple(eigh_desc(f)[1] for f in factors)
        new = leaf._replace(bases=bases, bias=1 - beta, factors=factors, scale=scale)
        return jnp.zeros(gb.shape[1:], gb.dtype), new

    def regular(leaf, gb, t):  # SOAP's Adam step and refresh, on the KSL-tracked factors
        adam = dict(b1=b1, b2=b2, eps=eps, correct_bias=correct_bias)
        u, mu, nu = _soap_direction(leaf.bases, leaf.mu, leaf.nu, gb, t, **adam)
        factors, scale = ksl_step(leaf.factors, leaf.scale, gb, beta)
        leaf = DyKAFLeaf(leaf.bases, 1 - beta ** (t + 1), factors, mu, nu, scale)
        return u, _soap_refresh(leaf, t, frequency)

    def step(leaf, gb, count, param, per_example):
        del param, per_example
        if gb.ndim > 3:
            raise ValueError("DyKAF tracks two factors: use tensor_mode='matrix' leaves")
        return lax.cond(
            count == 0,
            lambda: cast_like(first(leaf, gb), (gb[0], leaf)),
            lambda: cast_like(regular(leaf, gb, count), (gb[0], leaf)),
        )

    return Rule(init, step, "matrix", state_dtype)


def _dykaf_approximation(leaf: DyKAFLeaf) -> Structure | None:
    """``(s/(1−β^t)) U ⊗ V``: the tracked Kronecker factorisation of ``E[ggᵀ]``."""
    if len(leaf.factors) != 2:
        return None
    u, v = (0.5 * (f + f.T) for f in leaf.factors)
    return Kronecker(u * (leaf.scale / leaf.bias), v)


register(
    MethodSpec(
        name="dykaf",
        label="DyKAF",
        rule=dykaf_rule,
        leaf_type=DyKAFLeaf,
        approximation=_dykaf_approximation,
        power=0.5,
        optimizer="dykaf",
        reference="dykaf",
        source="Yudin et al. 2025 (arXiv 2511.06477; no official code found): the KSL "
        "projector-splitting step of the rank-1 rearranged EMA transcribed from the method's "
        "description, in the SOAP code vendored in yorkerlin/KL-Methods",
    )
)
