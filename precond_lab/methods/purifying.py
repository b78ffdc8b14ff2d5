"""Purifying Shampoo (Eschenhagen, Defazio, Lee, Turner & Shi 2025, arXiv 2506.03595):
eigenvalue-corrected Shampoo with an adaptive eigenbasis refresh, no grafting (the
official ``facebookresearch/optimizers`` Distributed Shampoo's arithmetic with
``EigenvalueCorrectedShampooPreconditionerConfig`` and a ``QREigendecompositionConfig`` or
``EighEigendecompositionConfig`` with a ``tolerance``).

Step ``t`` (counted from 1), batch ``gb`` (mean ``G``), one factor per mode:

1. factors ``S_j ← β₂S_j + (1−β₂)E[G_(j)G_(j)ᵀ]`` from zero; ``c₂ = 1 − β₂^t`` (1 without
   bias correction);
2. every ``frequency`` steps (``t % frequency == 0``; the official
   ``start_preconditioning_step`` left at its default, ``frequency``), for every mode
   ``A = S_j/c₂ + εI`` and, warm-started from the basis ``Q_j`` held so far,
   ``B = Q_jᵀ A Q_j``; the criterion ``‖B − diag B‖_F ≤ τ‖B‖_F`` (``tolerance``) decides:

   * ``solver="qr"``: up to ``max_iterations`` QR steps ``B = Q'R, B ← RQ', Q_j ← Q_jQ'``
     while the criterion fails, then the columns sorted by ``diag B`` ascending (stable);
   * ``solver="eigh"``: keep ``Q_j`` when the criterion holds (``τ > 0``), else
     ``Q_j ← eigh(A)`` (ascending);

3. the corrected eigenvalues in the (new) basis, ``v ← β₂v + (1−β₂)E[(G ×_j Q_jᵀ)²]``
   (never rotated or re-sorted when the basis changes, as the official code);
4. the momentum ``M ← β₁M + (1−β₁)G``, ``M̂ = M/(1−β₁^t)``;
5. the direction ``D = (M̂ ×_j Q_jᵀ) / ((v/c₂)^{½} + ε) ×_j Q_j`` (2-D:
   ``Q_a[(Q_aᵀM̂Q_b)/(√v̂ + ε)]Q_bᵀ``).

The QR path re-sorts ``Q_j`` by ascending ``diag B`` after every refresh while the unshifted
QR iteration orders the eigenvalues descending: from a sorted basis a single QR step moves
away from the eigenbasis (``tests/optim/test_purifying_dykaf.py``), so the default solver
here is ``eigh`` behind the criterion (``EighEigendecompositionConfig(tolerance=τ)``).

Before the first refresh the bases are the identity (Adam on the raw coordinates). The
optional trace scaling (``use_trace_scaling``) and the grafting of the official code are
not used (the paper's point: corrected eigenvalues need no grafting).

**Checked against the official code** (``tests/optim/test_official.py``,
``PRECOND_LAB_DISTRIBUTED_SHAMPOO``): float64, 12 steps, frequency 1 and 3, ``τ`` 0 and
0.05, eigh and QR, agree to ≤ 2e-11 relative in the weights. The official side must be
configured to run these equations: ``max_preconditioner_dim = max(shape)`` (the default
1024 merges an ``m×n`` leaf with ``mn ≤ 1024`` into one ``mn``-vector with a single
``mn×mn`` factor: 1e-2..9e-2 apart after the first refresh on a 5×4 leaf), every state
dtype float64 (``corrected_eigenvalues_dtype`` defaults to float32), torch's default dtype
float64 (``bias_correction2`` is built from ``torch.tensor(1.0)``: 7e-7 relative in the
first direction otherwise) and a learning rate exact in float32 (the official code holds it
in a float32 tensor). Not reproduced: ``betas[1] = 1`` (the official default, a plain sum
of outer products with weight 1 and no bias correction; here ``β₂ < 1``), and a criterion
whose ``‖B‖² − ‖diag B‖²`` rounds below zero (NaN there, so the official code refreshes;
clamped to 0 here, so the basis is kept). The defaults differ: ``frequency=10`` here, 1
there.

**The ``Σ`` the state stands for** is ``(⊗_j Q_j) diag(v̂) (⊗_j Q_j)ᵀ``, ``v̂ = v/c₂``
(SOAP's reader): its ``−½`` power is the map the direction applies to ``M̂``, up to the
optimiser's ``ε`` on ``√v̂``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from ..structures import EigenKronecker, Structure
from ._core import MethodSpec, Rule, register, two_mode_aliases
from ._hp import hp
from ._ops import cast_like, eigh, linalg_dtype, mode_gram, project, project_back, qr_q

__all__ = ["SOLVERS", "PurifyingLeaf", "offdiagonal_ratio", "purifying_shampoo_rule"]

#: The eigenbasis solvers: warm-started QR iterations or ``eigh``.
SOLVERS = ("qr", "eigh")


class PurifyingLeaf(NamedTuple):
    """Per-leaf state of Purifying Shampoo.

    Attributes:
        bases: the eigenbases ``Q_j`` (identity until the first refresh).
        bias: ``c₂ = 1 − β₂^t``, the bias correction of ``S_j`` and ``v`` (1 without).
        factors: Shampoo's ``S_j`` (EMAs of ``G_(j)G_(j)ᵀ``).
        mu: the momentum ``M``.
        nu: the corrected eigenvalues ``v`` (EMA of the squared gradient in the basis).
    """

    bases: tuple[jax.Array, ...]
    bias: jax.Array
    factors: tuple[jax.Array, ...]
    mu: jax.Array
    nu: jax.Array


two_mode_aliases(PurifyingLeaf)


def offdiagonal_ratio(b: jax.Array) -> jax.Array:
    """``‖B − diag B‖_F / ‖B‖_F`` as the official criterion computes it
    (``√(‖B‖² − ‖diag B‖²)``; 0 for ``B = 0``)."""
    norm = jnp.linalg.norm(b)
    off = jnp.sqrt(jnp.maximum(norm**2 - jnp.sum(jnp.diagonal(b) ** 2), 0.0))
    return off / jnp.where(norm > 0, norm, 1.0)


def _refresh(s, q, bias, eps, tol, solver, iterations):
    """One factor's eigenbasis refresh, warm-started from ``q`` (module doc, step 2)."""
    dt = linalg_dtype(s.dtype)
    a = s.astype(dt) / bias + eps * jnp.eye(s.shape[0], dtype=dt)
    q = q.astype(dt)
    b = q.T @ a @ q
    if solver == "eigh":
        fresh = eigh(0.5 * (a + a.T))[1]
        keep = (tol > 0) & (offdiagonal_ratio(b) <= tol)
        return jnp.where(keep, q, fresh).astype(s.dtype)

    def qr_step(_, qb):
        q, b = qb
        run = offdiagonal_ratio(b) > tol  # once it holds, the official loop has stopped
        qq = qr_q(b)
        return jnp.where(run, q @ qq, q), jnp.where(run, qq.T @ b @ qq, b)  # RQ' = Q'ᵀBQ'

    q, b = lax.fori_loop(0, iterations, qr_step, (q, b))
    order = jnp.argsort(jnp.diagonal(b), stable=True)
    return q[:, order].astype(s.dtype)


def purifying_shampoo_rule(
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-12,
    frequency: int = 10,
    tolerance: float = 0.01,
    solver: str = "eigh",
    max_iterations: int = 1,
    correct_bias: bool = True,
    tensor_mode: str = "modewise",
    state_dtype: Any = None,
) -> Rule:
    """Purifying Shampoo's rule (module doc), Distributed Shampoo's arithmetic.

    Args:
        b1: the momentum's ``β₁`` in ``[0, 1)`` (the official ``betas[0]``).
        b2: the factors' and eigenvalues' ``β₂`` in ``[0, 1)`` (``betas[1]``).
        eps: ``ε ≥ 0``, added to ``S_j/c₂`` before the eigenbasis and to ``√v̂``.
        frequency: check the criterion (and refresh) every ``frequency ≥ 1`` steps.
        tolerance: ``τ`` in ``[0, 1]``, the relative off-diagonal mass of ``QᵀAQ`` up to
            which the basis is kept (0: always refresh).
        solver: ``"qr"`` (warm-started QR iterations) or ``"eigh"``.
        max_iterations: QR iterations per refresh, an integer ``≥ 1`` (``solver="qr"``).
        correct_bias: divide ``S_j``, ``v`` by ``1 − β₂^t`` and ``M`` by ``1 − β₁^t``.
        tensor_mode: ``"modewise"`` or ``"matrix"``.
        state_dtype: the state's dtype (None: the parameter's).

    Returns:
        The rule (leaf state ``PurifyingLeaf``).

    Raises:
        ValueError: a hyper-parameter out of its range, or an unknown ``solver``.
    """
    b1 = hp(b1, "b1", low=0.0, high=1.0, high_open=True)
    b2 = hp(b2, "b2", low=0.0, high=1.0, high_open=True)
    eps = hp(eps, "eps", low=0.0)
    frequency = hp(frequency, "frequency", low=1, integer=True)
    tol = hp(tolerance, "tolerance", low=0.0, high=1.0)
    iterations = hp(max_iterations, "max_iterations", low=1, integer=True)
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    correct_bias = bool(correct_bias)

    def init(shape, dt):
        zeros = jnp.zeros(shape, dt)
        return PurifyingLeaf(
            bases=tuple(jnp.eye(d, dtype=dt) for d in shape),
            bias=jnp.ones([], dt),
            factors=tuple(jnp.zeros((d, d), dt) for d in shape),
            mu=zeros,
            nu=jnp.zeros_like(zeros),
        )

    def step(leaf, gb, count, param, per_example):
        del param, per_example
        t = count + 1
        g = jnp.mean(gb, axis=0)
        factors = tuple(b2 * s + (1 - b2) * mode_gram(gb, j) for j, s in enumerate(leaf.factors))
        bias = (1 - b2**t) if correct_bias else jnp.ones([], g.dtype)
        bases = lax.cond(
            t % frequency == 0,
            lambda: cast_like(
                tuple(
                    _refresh(s, q, bias, eps, tol, solver, iterations)
                    for s, q in zip(factors, leaf.bases, strict=True)
                ),
                leaf.bases,
            ),
            lambda: leaf.bases,
        )
        nu = b2 * leaf.nu + (1 - b2) * jnp.mean(project(gb, bases, offset=1) ** 2, axis=0)
        mu = b1 * leaf.mu + (1 - b1) * g
        m_hat = mu / (1 - b1**t) if correct_bias else mu
        d = project_back(project(m_hat, bases) / (jnp.sqrt(nu / bias) + eps), bases)
        new = PurifyingLeaf(bases=bases, bias=bias, factors=factors, mu=mu, nu=nu)
        return cast_like((d, new), (g, leaf))

    return Rule(init, step, tensor_mode, state_dtype)


def _purifying_approximation(leaf: PurifyingLeaf) -> Structure | None:
    """``(Q_a ⊗ Q_b) diag(v/c₂) (Q_a ⊗ Q_b)ᵀ``: the corrected eigenvalues in Shampoo's
    eigenbasis (the direction applies its ``−½`` power, ``ε`` added to ``√v̂``)."""
    if len(leaf.bases) != 2:
        return None
    return EigenKronecker(*leaf.bases, leaf.nu / leaf.bias)


register(
    MethodSpec(
        name="purifying_shampoo",
        label="Purifying Shampoo",
        rule=purifying_shampoo_rule,
        leaf_type=PurifyingLeaf,
        approximation=_purifying_approximation,
        power=0.5,
        optimizer="purifying_shampoo",
        reference="purifying_shampoo",
        source="Eschenhagen et al. 2025 (arXiv 2506.03595); github.com/facebookresearch/"
        "optimizers distributed_shampoo (EigenvalueCorrectedShampooPreconditionerConfig, "
        "QREigendecompositionConfig / EighEigendecompositionConfig tolerance)",
    )
)
