"""Online trace-power Shampoo: F-, VN-, SQ- and KL-Shampoo as one EMA estimator.

The factors follow an EMA of the trace-power statistic of the other factor's
eigen-approximation ``Ŝ = Q diag(λ) Qᵀ`` (``trace_power_statistic``,
the stationarity map of ``min B_q(Σ, L⊗R)``), with KL-Shampoo's recipe otherwise:
eigenvalues tracked by their own EMA in the current basis, bases refreshed every
``frequency`` steps by one power step + QR. ``q = 0`` is exactly
``kl_shampoo``; ``q = ½`` SQ-, ``q = 1`` VN-, ``q = 2`` F-Shampoo.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from .._validation import check_number
from ..estimators import trace_power_statistic
from ..linalg import qr_refresh_step
from ..structures import EigenKronecker
from ._kronecker import KLShampooState, _clamp, _kl_first, _old_weight, _period
from ._state import OnlineEstimator, batch_square

__all__ = ["bregman_shampoo", "f_shampoo", "vn_shampoo", "sq_shampoo"]


def _weights(lam, q):
    """``(λ^{q−1}, Σλ^q)`` of an eigen-approximation (positive eigenvalues)."""
    return lam ** (q - 1), jnp.sum(lam**q)


@functools.cache
def bregman_shampoo(
    q: float,
    *,
    beta: float = 0.98,
    frequency: int = 10,
    init_factor: float = 0.1,
    damping: float = 0.0,
    clamp: bool = True,
) -> OnlineEstimator:
    """Trace-power Shampoo with power ``q`` (state ``KLShampooState``).

    ``init`` (the first gradient, no eigenvalue update): ``S_a = (1−β) G0G0ᵀ/n``,
    ``S_b = (1−β) G0ᵀG0/m`` (the statistic with identity factors), bases from ``eigh``,
    eigenvalues ``init_factor``. ``update``:

    * ``S_a ← β S_a + (1−β) mean_k G_k Ŝ_b^{q−1} G_kᵀ / Σλ_b^q`` and the right twin
      (both from the old eigen-approximations);
    * ``λ_a ← β λ_a + (1−β) diag(Q_aᵀ [stat] Q_a)`` ``= mean-free Σ_j P_ij² λ_{b,j}^{q−1}
      / Σλ_b^q`` with ``P = Q_aᵀ G Q_b``, plus ``κ Σ_j λ_{b,j}^{q−1}/Σλ_b^q`` (damping);
    * every ``frequency`` steps ``Q ← QR(S Q)``.

    The approximation is ``Q_a diag(λ_a) Q_aᵀ ⊗ Q_b diag(λ_b) Q_bᵀ`` (power −1/2).

    Args:
        q: the trace power (0: KL, ½: SQ, 1: VN, 2: F).
        beta: as in ``kl_shampoo``.
        frequency: as in ``kl_shampoo``.
        init_factor: as in ``kl_shampoo``.
        damping: as in ``kl_shampoo``.
        clamp: as in ``kl_shampoo``.
    """
    q = check_number(q, "q")
    beta, frequency = _old_weight(beta, "beta"), _period(frequency)
    init_factor, clamp = float(init_factor), bool(clamp)
    kappa = check_number(damping, "damping", low=0.0)

    @jax.jit
    def update(state: KLShampooState, g: jax.Array) -> KLShampooState:
        m, n = g.shape[-2:]
        qa, qb = state.left_basis, state.right_basis
        la, lb = state.left_values, state.right_values
        sa = beta * state.left + (1 - beta) * trace_power_statistic(g, lb, qb, q, "left")
        sb = beta * state.right + (1 - beta) * trace_power_statistic(g, la, qa, q, "right")
        wa, ta_tot = _weights(la, q)
        wb, tb_tot = _weights(lb, q)
        p2 = batch_square(qa.T @ g @ qb)  # mean_k (Q_aᵀ G_k Q_b)²
        ta = (p2 @ wb + kappa * jnp.sum(wb)) / tb_tot
        tb = (wa @ p2 + kappa * jnp.sum(wa)) / ta_tot
        la = _clamp(beta * la + (1 - beta) * ta, m, clamp)
        lb = _clamp(beta * lb + (1 - beta) * tb, n, clamp)
        step = state.step + 1
        if frequency > 0:
            refresh = step % frequency == 0
            qa = lax.cond(refresh, lambda: qr_refresh_step(sa, qa)[0], lambda: qa)
            qb = lax.cond(refresh, lambda: qr_refresh_step(sb, qb)[0], lambda: qb)
        return KLShampooState(sa, sb, qa, qb, la, lb, step)

    def init(g0: jax.Array) -> KLShampooState:
        # the statistic with identity factors is G0G0ᵀ/n (and G0ᵀG0/m) for every q:
        # KL-Shampoo's own first step
        return KLShampooState(**_kl_first(g0, beta, init_factor))

    def approximation(state: KLShampooState) -> EigenKronecker:
        return EigenKronecker(
            state.left_basis, state.right_basis, jnp.outer(state.left_values, state.right_values)
        )

    return OnlineEstimator(init, update, approximation, 0.5)


def f_shampoo(**kwargs) -> OnlineEstimator:
    """F-Shampoo: ``bregman_shampoo`` at ``q = 2`` (Frobenius)."""
    return bregman_shampoo(2.0, **kwargs)


def vn_shampoo(**kwargs) -> OnlineEstimator:
    """VN-Shampoo: ``bregman_shampoo`` at ``q = 1`` (von Neumann)."""
    return bregman_shampoo(1.0, **kwargs)


def sq_shampoo(**kwargs) -> OnlineEstimator:
    """SQ-Shampoo: ``bregman_shampoo`` at ``q = ½`` (square root; PSGD-Kron's objective)."""
    return bregman_shampoo(0.5, **kwargs)
