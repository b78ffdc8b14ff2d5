"""Online Kronecker estimators: Shampoo, KL-Shampoo, SOAP and KL-SOAP (P1, SOAP).

Each factory returns an ``OnlineEstimator`` whose state is a
``NamedTuple`` (``ShampooState``, ``KLShampooState``, ``SOAPState``,
``KLSOAPState``). Hyper-parameter convention: ``beta`` is the weight of the *old*
statistic (the codes' ``shampoo_beta``), ``beta2`` the weight of the old Adam second
moment.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from .._validation import check_number
from ..linalg import qr_refresh_step
from ..structures import EigenKronecker, Kronecker
from ._state import OnlineEstimator, batch_left, batch_right, batch_square

__all__ = [
    "KLSOAPState",
    "KLShampooState",
    "SOAPState",
    "ShampooState",
    "kl_shampoo",
    "kl_soap",
    "shampoo",
    "soap",
]


def _old_weight(value, name: str) -> float:
    """An EMA weight of the old statistic: in ``[0, 1)`` (1 would never learn)."""
    return check_number(value, name, low=0.0, high=1.0, high_open=True)


def _period(value) -> int:
    """A refresh period: an integer ``≥ 0`` (0: never refresh)."""
    return check_number(value, "frequency", low=0, integer=True)


def _eigh_desc(s: jax.Array) -> jax.Array:
    """Eigenvectors of a symmetric matrix, eigenvalues descending (as the KL code does)."""
    _, q = jnp.linalg.eigh(0.5 * (s + s.T))
    return q[:, ::-1]


# ----------------------------------------------------------------------------- Shampoo
class ShampooState(NamedTuple):
    """Shampoo's EMA factors.

    Attributes:
        left: ``L`` (``m×m``), EMA of ``GGᵀ``.
        right: ``R`` (``n×n``), EMA of ``GᵀG``.
        step: number of updates applied (the first gradient counts as one).
    """

    left: jax.Array
    right: jax.Array
    step: jax.Array


@functools.cache
def shampoo(*, beta: float = 0.95) -> OnlineEstimator:
    """Shampoo's EMA ``L ← βL + (1−β)GGᵀ``, ``R ← βR + (1−β)GᵀG`` from zero, fed ``G0``.

    Args:
        beta: weight of the old statistic.

    Returns:
        The estimator; its approximation is Shampoo² with trace scaling ``L ⊗ R / tr L``
        (its power −1/2 is Shampoo's step).
    """
    beta = _old_weight(beta, "beta")

    @jax.jit
    def update(state: ShampooState, g: jax.Array) -> ShampooState:
        return ShampooState(
            left=beta * state.left + (1 - beta) * batch_left(g),
            right=beta * state.right + (1 - beta) * batch_right(g),
            step=state.step + 1,
        )

    def init(g0: jax.Array) -> ShampooState:
        g0 = jnp.asarray(g0)
        m, n = g0.shape[-2:]
        zero = ShampooState(
            jnp.zeros((m, m), g0.dtype), jnp.zeros((n, n), g0.dtype), jnp.asarray(0, jnp.int32)
        )
        return update(zero, g0)

    def approximation(state: ShampooState) -> Kronecker:
        left = 0.5 * (state.left + state.left.T)
        right = 0.5 * (state.right + state.right.T)
        return Kronecker(left, right, 1.0 / jnp.trace(left))

    return OnlineEstimator(init, update, approximation, 0.5)


# -------------------------------------------------------------------------- KL-Shampoo
class KLShampooState(NamedTuple):
    """KL-Shampoo's factors, their eigenbases and its own eigenvalue estimates.

    Attributes:
        left: ``S_a`` (``m×m``).
        right: ``S_b`` (``n×n``).
        left_basis: ``Q_a`` (columns: eigenvectors of ``S_a``, refreshed every T steps).
        right_basis: ``Q_b``.
        left_values: ``λ_a`` (``m``), the EMA eigenvalues in ``Q_a``.
        right_values: ``λ_b`` (``n``).
        step: number of updates applied after ``init``.
    """

    left: jax.Array
    right: jax.Array
    left_basis: jax.Array
    right_basis: jax.Array
    left_values: jax.Array
    right_values: jax.Array
    step: jax.Array


class KLSOAPState(NamedTuple):
    """KL-SOAP: ``KLShampooState``'s fields plus Adam's second moment in the basis.

    Attributes:
        left: as in ``KLShampooState``.
        right: as in ``KLShampooState``.
        left_basis: as in ``KLShampooState``.
        right_basis: as in ``KLShampooState``.
        left_values: as in ``KLShampooState``.
        right_values: as in ``KLShampooState``.
        nu: ``v`` (``m×n``), EMA of ``(Q_aᵀGQ_b)²``.
        step: number of updates applied after ``init``.
    """

    left: jax.Array
    right: jax.Array
    left_basis: jax.Array
    right_basis: jax.Array
    left_values: jax.Array
    right_values: jax.Array
    nu: jax.Array
    step: jax.Array


def _clamp(lam: jax.Array, dim: int, on: bool) -> jax.Array:
    if not on:
        return lam
    cap = max(10.0, min(float(dim), 4000.0))  # bound on λ^{-1/2}
    return jnp.maximum(lam, 1.0 / cap**2)


def _kl_first(g0, beta, init_factor):
    """A.6 step 1: factors from ``G0``, bases by ``eigh``, eigenvalues ``init_factor``."""
    g0 = jnp.asarray(g0)
    m, n = g0.shape[-2:]
    sa = (1 - beta) / n * batch_left(g0)
    sb = (1 - beta) / m * batch_right(g0)
    return dict(
        left=sa,
        right=sb,
        left_basis=_eigh_desc(sa),
        right_basis=_eigh_desc(sb),
        left_values=jnp.full((m,), init_factor, g0.dtype),
        right_values=jnp.full((n,), init_factor, g0.dtype),
        step=jnp.asarray(0, jnp.int32),
    )


def _kl_core(beta: float, frequency: int, damping: float, clamp: bool):
    """A.6 steps 4–6 for any state with ``KLShampooState``'s fields."""

    def core(state, g):
        b, kappa = beta, damping
        m, n = g.shape[-2:]
        qa, qb = state.left_basis, state.right_basis
        la, lb = state.left_values, state.right_values
        sb_inv = (qb / lb[None, :]) @ qb.T  # Ŝ_b^{-1} from the eigen-approximation
        sa_inv = (qa / la[None, :]) @ qa.T
        sa = b * state.left + (1 - b) / n * batch_left(g, sb_inv)
        sb = b * state.right + (1 - b) / m * batch_right(g, sa_inv)
        p2 = batch_square(qa.T @ g @ qb)  # mean_k (Q_aᵀ G_k Q_b)²
        ta = jnp.mean(p2 / lb[None, :], axis=1) + kappa * jnp.mean(1.0 / lb)
        tb = jnp.mean(p2 / la[:, None], axis=0) + kappa * jnp.mean(1.0 / la)
        la = _clamp(b * la + (1 - b) * ta, m, clamp)
        lb = _clamp(b * lb + (1 - b) * tb, n, clamp)
        step = state.step + 1
        if frequency > 0:
            refresh = step % frequency == 0
            qa = lax.cond(refresh, lambda: qr_refresh_step(sa, qa)[0], lambda: qa)
            qb = lax.cond(refresh, lambda: qr_refresh_step(sb, qb)[0], lambda: qb)
        return state._replace(
            left=sa,
            right=sb,
            left_values=la,
            right_values=lb,
            left_basis=qa,
            right_basis=qb,
            step=step,
        )

    return core


@functools.cache
def kl_shampoo(
    *,
    beta: float = 0.98,
    frequency: int = 10,
    init_factor: float = 0.1,
    damping: float = 0.0,
    clamp: bool = True,
) -> OnlineEstimator:
    """KL-Shampoo (Lin et al. 2025).

    ``init`` is the first call (step 1, no eigenvalue update): ``S_a = (1−β)/d_b·G0G0ᵀ``,
    ``S_b = (1−β)/d_a·G0ᵀG0``, bases from ``eigh`` (eigenvalues descending), eigenvalues
    ``λ = init_factor``. ``update`` (steps 4–6) updates the factors with the other
    factor's inverse from its eigen-approximation ``Q diag(λ)^{-1} Qᵀ``; the eigenvalues
    get their own EMA towards ``diag(Q_aᵀ G Ŝ_b^{-1} Gᵀ Q_a)/d_b`` (simultaneously, from
    the old ``λ``); every ``frequency`` steps the bases are refreshed by one power step
    + QR. The approximation is ``Q_a diag(λ_a) Q_aᵀ ⊗ Q_b diag(λ_b) Q_bᵀ`` (its power
    −1/2 is KL-Shampoo's step).

    Args:
        beta: weight of the old statistic (the code's ``shampoo_beta``).
        frequency: QR refresh every ``frequency`` updates (0: never; fixed basis).
        init_factor: initial eigenvalues.
        damping: ``κ`` added (as ``κ·mean(1/λ_other)``) to the eigenvalue targets only.
        clamp: clamp ``λ^{-1/2}`` at ``max(10, min(d, 4000))`` as the code does.

    Returns:
        The estimator (state ``KLShampooState``).
    """
    beta, frequency = _old_weight(beta, "beta"), _period(frequency)
    init_factor = float(init_factor)
    core = _kl_core(beta, frequency, check_number(damping, "damping", low=0.0), bool(clamp))
    update = jax.jit(core)

    def init(g0: jax.Array) -> KLShampooState:
        return KLShampooState(**_kl_first(g0, beta, init_factor))

    def approximation(state: KLShampooState) -> EigenKronecker:
        return EigenKronecker(
            state.left_basis, state.right_basis, jnp.outer(state.left_values, state.right_values)
        )

    return OnlineEstimator(init, update, approximation, 0.5)


# ------------------------------------------------------------------------------ KL-SOAP
@functools.cache
def kl_soap(
    *,
    beta2: float = 0.95,
    beta: float = 0.98,
    frequency: int = 10,
    init_factor: float = 0.1,
    damping: float = 0.0,
    clamp: bool = True,
) -> OnlineEstimator:
    """KL-SOAP: KL-Shampoo's factors/basis plus Adam's second moment ``v`` in the basis.

    ``init`` is KL-Shampoo's with ``v = 0``. ``update``: ``v ← β₂v + (1−β₂)(Q_aᵀGQ_b)²``
    in the current basis (no bias correction, as the code), then the KL-Shampoo
    factor/eigenvalue/basis step; ``v`` is kept as is when the basis is refreshed. The
    approximation is ``(Q_a ⊗ Q_b) diag(v) (Q_a ⊗ Q_b)ᵀ`` (Adam in the KL eigenbasis;
    power −1/2).

    Args:
        beta2: weight of the old second moment.
        beta: as in ``kl_shampoo``.
        frequency: as in ``kl_shampoo``.
        init_factor: as in ``kl_shampoo``.
        damping: as in ``kl_shampoo``.
        clamp: as in ``kl_shampoo``.

    Returns:
        The estimator (state ``KLSOAPState``).
    """
    beta, b2, init_factor = (
        _old_weight(beta, "beta"),
        _old_weight(beta2, "beta2"),
        float(init_factor),
    )
    core = _kl_core(
        beta, _period(frequency), check_number(damping, "damping", low=0.0), bool(clamp)
    )

    @jax.jit
    def update(state: KLSOAPState, g: jax.Array) -> KLSOAPState:
        v = b2 * state.nu + (1 - b2) * batch_square(state.left_basis.T @ g @ state.right_basis)
        return core(state._replace(nu=v), g)

    def init(g0: jax.Array) -> KLSOAPState:
        first = _kl_first(g0, beta, init_factor)
        nu = jnp.zeros(jnp.shape(g0)[-2:], first["left"].dtype)
        return KLSOAPState(**first, nu=nu)

    def approximation(state: KLSOAPState) -> EigenKronecker:
        return EigenKronecker(state.left_basis, state.right_basis, state.nu)

    return OnlineEstimator(init, update, approximation, 0.5)


# --------------------------------------------------------------------------------- SOAP
class SOAPState(NamedTuple):
    """SOAP's Shampoo factors, their eigenbases and Adam's second moment in the basis.

    Attributes:
        left: ``L`` (``m×m``).
        right: ``R`` (``n×n``).
        left_basis: ``Q_a``.
        right_basis: ``Q_b``.
        nu: ``v`` (``m×n``), EMA of ``(Q_aᵀGQ_b)²``.
        step: number of updates applied after ``init``.
    """

    left: jax.Array
    right: jax.Array
    left_basis: jax.Array
    right_basis: jax.Array
    nu: jax.Array
    step: jax.Array


def _sorted_refresh(s, q, v, axis):
    """SOAP's QR refresh: sort by ``diag(QᵀSQ)`` descending, permute ``v``, power step + QR."""
    est = jnp.sum(q * (s @ q), axis=0)
    idx = jnp.argsort(-est)
    q = q[:, idx]
    v = jnp.take(v, idx, axis=axis)
    return qr_refresh_step(s, q)[0], v


@functools.cache
def soap(*, beta: float = 0.95, beta2: float = 0.95, frequency: int = 10) -> OnlineEstimator:
    """SOAP: Adam in Shampoo's eigenbasis, refreshed by power step + QR every ``frequency``.

    ``init``: ``L, R`` from ``G0`` (EMA from zero), bases by ``eigh``, ``v = 0``.
    ``update``: Adam moment in the current basis, then the ``L, R`` EMA, refresh every T.
    The approximation is ``(Q_a ⊗ Q_b) diag(v̂) (Q_a ⊗ Q_b)ᵀ`` with bias-corrected
    ``v̂ = v/(1−β₂^t)``.

    Args:
        beta: weight of the old Shampoo factors.
        beta2: weight of the old second moment.
        frequency: refresh period (0: never).

    Returns:
        The estimator (state ``SOAPState``).
    """
    b, b2, freq = _old_weight(beta, "beta"), _old_weight(beta2, "beta2"), _period(frequency)

    def init(g0: jax.Array) -> SOAPState:
        g0 = jnp.asarray(g0)
        left = (1 - b) * batch_left(g0)
        right = (1 - b) * batch_right(g0)
        return SOAPState(
            left=left,
            right=right,
            left_basis=_eigh_desc(left),
            right_basis=_eigh_desc(right),
            nu=jnp.zeros(g0.shape[-2:], g0.dtype),
            step=jnp.asarray(0, jnp.int32),
        )

    @jax.jit
    def update(state: SOAPState, g: jax.Array) -> SOAPState:
        qa, qb = state.left_basis, state.right_basis
        v = b2 * state.nu + (1 - b2) * batch_square(qa.T @ g @ qb)
        left = b * state.left + (1 - b) * batch_left(g)
        right = b * state.right + (1 - b) * batch_right(g)
        step = state.step + 1
        if freq > 0:

            def refresh():
                qa2, v2 = _sorted_refresh(left, qa, v, 0)
                qb2, v3 = _sorted_refresh(right, qb, v2, 1)
                return qa2, qb2, v3

            qa, qb, v = lax.cond(step % freq == 0, refresh, lambda: (qa, qb, v))
        return SOAPState(left, right, qa, qb, v, step)

    def approximation(state: SOAPState) -> EigenKronecker:
        t = state.step
        corr = jnp.where(t > 0, 1.0 - b2**t, 1.0)
        return EigenKronecker(state.left_basis, state.right_basis, state.nu / corr)

    return OnlineEstimator(init, update, approximation, 0.5)
